"""Alembic, driven from code: upgrade, downgrade and the "is the schema current" check."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

# One advisory lock key for schema changes, so that two processes starting together on
# a fresh embedded database do not both try to create the tables.
_SCHEMA_LOCK = 0x0B5DB


class SchemaOutOfDate(RuntimeError):
    """The database schema is not the one this obsdb expects."""


def migrations_dir() -> Path:
    return Path(str(resources.files("obsdb.migrations")))


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    script = ScriptDirectory(str(migrations_dir()))
    head = script.get_current_head()
    assert head is not None, "obsdb ships at least one migration"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema; safe when several processes do it at once."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK})
        try:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK})
            conn.commit()


def downgrade_schema(engine: Engine, revision: str = "base") -> None:
    with engine.connect() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        conn.commit()


def ensure_schema(engine: Engine, *, auto_upgrade: bool) -> None:
    """Refuse to run on a schema that is not current (or bring it current if allowed).

    The embedded database belongs to obsdb, so it is upgraded by itself; a server is
    shared with others, so obsdb only upgrades it when asked (``obsdb init``).
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if auto_upgrade:
        upgrade_schema(engine)
        return
    state = "empty" if current is None else f"at revision {current}"
    raise SchemaOutOfDate(
        f"the obsdb database schema is {state}, but this obsdb needs revision {head}: "
        "run `obsdb init` to create or upgrade it"
    )
