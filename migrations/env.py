"""Alembic environment for obsdb.

obsdb drives Alembic from code (``obsdb.database.schema``): the engine, and usually an open
connection, arrive in ``config.attributes``. Running the ``alembic`` command by hand also
works: it then connects to ``OBSDB_DATABASE_URL`` (or the embedded database).
"""

from alembic import context

from obsdb.migrations.env_filters import include_name
from obsdb.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=include_name,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    attrs = context.config.attributes
    connection = attrs.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = attrs.get("engine")
    if engine is None:
        from obsdb.config import load_settings
        from obsdb.database.engine import connect

        engine, _ = connect(load_settings())
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    raise SystemExit("obsdb migrations run online only (they need a PostgreSQL connection)")
run_migrations_online()
