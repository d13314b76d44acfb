"""per-user hourly rollups and per-user conversations, backfilled from the events already stored

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_rollups",
        sa.Column("user_id", sa.String(80), nullable=False),
        sa.Column("hour", sa.Integer, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Integer, nullable=False),
        sa.Column("blocked", sa.Integer, nullable=False),
        sa.Column("max_score", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "hour"),
    )
    op.create_index("ix_user_rollups_hour", "user_rollups", ["hour"])
    op.execute(
        "INSERT INTO user_rollups (user_id, hour, n, flagged, blocked, max_score) "
        "SELECT user_id, CAST(FLOOR(ts / 3600) AS INTEGER), COUNT(*), SUM(CASE WHEN flagged THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN decision IN ('blocked_input', 'blocked_output') THEN 1 ELSE 0 END), COALESCE(MAX(score), 0) "
        "FROM events GROUP BY 1, 2"
    )
    op.create_table(
        "user_conversations",
        sa.Column("user_id", sa.String(80), nullable=False),
        sa.Column("conversation_id", sa.String(200), nullable=False),
        sa.Column("last_ts", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "conversation_id"),
    )
    op.execute(
        "INSERT INTO user_conversations (user_id, conversation_id, last_ts) "
        "SELECT user_id, COALESCE(conversation_id, ''), MAX(ts) FROM events GROUP BY 1, 2"
    )


def downgrade() -> None:
    op.drop_table("user_conversations")
    op.drop_table("user_rollups")
