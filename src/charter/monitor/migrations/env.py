"""Alembic environment for the monitoring store. Charter runs it from ``store.migrate`` with an
open connection; ``alembic -x url=sqlite:///charter.db upgrade head`` works too."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from charter.monitor.store import metadata

config = context.config
conn = config.attributes.get("connection")
if conn is None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = sa.create_engine(url)
    with engine.begin() as c:
        context.configure(connection=c, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
