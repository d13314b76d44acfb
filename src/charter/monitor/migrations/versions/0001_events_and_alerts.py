"""events and alerts

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("conversation_id", sa.String(200)),
        sa.Column("user_id", sa.String(80), nullable=False),
        sa.Column("key_id", sa.String(80), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("endpoint", sa.String(64)),
        sa.Column("model", sa.String(200)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("escalated", sa.Boolean, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("category", sa.String(100)),
        sa.Column("stage", sa.String(20)),
        sa.Column("view", sa.String(60)),
        sa.Column("text_hash", sa.String(32)),
        sa.Column("categories", sa.JSON, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("verdicts", sa.JSON, nullable=False),
        sa.Column("latency_ms", sa.JSON, nullable=False),
        sa.Column("upstream_status", sa.Integer),
        sa.Column("error", sa.String(200)),
        sa.Column("content_policy", sa.String(10), nullable=False),
        sa.Column("content", sa.JSON),
    )
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_index("ix_events_user_ts", "events", ["user_id", "ts"])
    op.create_index("ix_events_conversation_ts", "events", ["conversation_id", "ts"])
    op.create_index("ix_events_decision_ts", "events", ["decision", "ts"])
    op.create_table(
        "alerts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
        sa.Column("rule", sa.String(80), nullable=False),
        sa.Column("subject_kind", sa.String(20), nullable=False),
        sa.Column("subject_id", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
    )
    op.create_index("ix_alerts_status_last", "alerts", ["status", "last_seen"])
    op.create_index("ix_alerts_subject", "alerts", ["subject_kind", "subject_id"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("events")
