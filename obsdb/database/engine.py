"""Engines and sessions: one engine per process, sessions owned by the caller."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import sessionmaker

from obsdb.config import Settings


def normalise_url(url: str) -> str:
    """Make a libpq-style URL use the psycopg 3 driver in SQLAlchemy."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(
        f"OBSDB_DATABASE_URL must be a PostgreSQL URL (postgresql://...), got {url.split(':')[0]}://..."
    )


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the catalog: the configured server, or the embedded one."""
    if settings.database_url:
        return normalise_url(settings.database_url)
    from obsdb.database.embedded import embedded_url

    return embedded_url(settings.pgdata)


def connect(settings: Settings, *, pool_size: int = 5) -> tuple[Engine, sessionmaker]:
    """Create the process's engine and a session factory bound to it."""
    engine = create_engine(
        database_url(settings),
        pool_size=pool_size,
        pool_pre_ping=True,  # a daemon outlives database restarts
    )
    return engine, sessionmaker(engine, expire_on_commit=False)
