"""Alembic environment: runs on the connection `realtime.db.migrate` hands over.

Importing the model modules registers every table on `Base.metadata`, which autogenerate
compares against the database.
"""

from __future__ import annotations

from alembic import context

from realtime.db.models import Base
from realtime.guests import models as _guests  # noqa: F401 - registers the guest tables
from realtime.identity import models as _identity  # noqa: F401 - registers the identity tables
from realtime.mail import models as _mail  # noqa: F401 - registers the mail tables
from realtime.webhooks import models as _webhooks  # noqa: F401 - registers the webhook tables

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `realtime migrate` and the app call us
    raise RuntimeError("run migrations through realtime.db.migrate, which opens the connection")
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
