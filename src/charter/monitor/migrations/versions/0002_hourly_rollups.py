"""hourly rollups of events, backfilled from the events already stored

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("hour", sa.Integer, nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("category", sa.String(100), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Integer, nullable=False),
        sa.Column("escalated", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("hour", "decision", "category", "stage"),
    )
    op.execute(
        "INSERT INTO rollups (hour, decision, category, stage, n, flagged, escalated) "
        "SELECT CAST(FLOOR(ts / 3600) AS INTEGER), decision, "
        "CASE WHEN flagged THEN COALESCE(category, '') ELSE '' END, COALESCE(stage, ''), COUNT(*), "
        "SUM(CASE WHEN flagged THEN 1 ELSE 0 END), SUM(CASE WHEN escalated THEN 1 ELSE 0 END) "
        "FROM events GROUP BY 1, 2, 3, 4"
    )


def downgrade() -> None:
    op.drop_table("rollups")
