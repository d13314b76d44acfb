"""a claim on an undelivered alert, so that replicas sharing the store deliver each one once

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alert_deliveries") as b:
        b.add_column(sa.Column("claimed_until", sa.Float, nullable=True))
    # rows of alerts that retention already deleted would attach to a new alert that reuses the id
    op.execute("DELETE FROM alert_deliveries WHERE alert_id NOT IN (SELECT id FROM alerts)")


def downgrade() -> None:
    with op.batch_alter_table("alert_deliveries") as b:
        b.drop_column("claimed_until")
