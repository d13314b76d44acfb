"""hourly rollups of events, backfilled from the events already stored

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import json

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
    # flag-only signal categories (wellbeing:*) count apart, as EventStore.write counts them: stage
    # "signal", n = 0 (store.SIGNAL_STAGE / SIGNAL_PREFIX, not imported: a migration stays as written)
    signals: dict[tuple[int, str, str], int] = {}
    for ts, decision, cats in op.get_bind().execute(
            sa.text("SELECT ts, decision, categories FROM events WHERE CAST(categories AS TEXT) LIKE '%wellbeing:%'")):
        cats = json.loads(cats) if isinstance(cats, str) else cats
        for cat in cats or []:
            if isinstance(cat, str) and cat.startswith("wellbeing:"):
                key = (int(ts // 3600), decision, cat)
                signals[key] = signals.get(key, 0) + 1
    if signals:
        op.bulk_insert(sa.table("rollups", *(sa.column(c) for c in
                                             ("hour", "decision", "category", "stage", "n", "flagged", "escalated"))),
                       [{"hour": h, "decision": d, "category": c, "stage": "signal", "n": 0, "flagged": f, "escalated": 0}
                        for (h, d, c), f in sorted(signals.items())])


def downgrade() -> None:
    op.drop_table("rollups")
