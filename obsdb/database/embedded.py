"""The embedded PostgreSQL that obsdb runs when no server is configured.

pgserver ships PostgreSQL binaries in a wheel and shares one server among every process
that asks for the same data directory (an inter-process lock guards start-up, and the
server stops when the last process using it exits), which is what makes two obsdb
commands started at once safe.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE_NAME = "obsdb"
_CREATE_LOCK = 0x0B5DB0

# The server object must live as long as the process: pgserver stops the server (when no
# other process uses it) from an atexit hook tied to this object.
_servers: dict[Path, object] = {}


def embedded_url(pgdata: Path) -> str:
    """Start (or join) the embedded server under ``pgdata``; return a SQLAlchemy URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (services, containers) and
        # falls back to /tmp, which is fine for pgserver's lock file.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # imported here: starting it is only needed without a server

    pgdata = pgdata.resolve()
    server = _servers.get(pgdata)
    if server is None:
        # pgserver checks and then creates the directory outside its lock, so two processes
        # starting on a fresh home can race there; creating it first, tolerantly, closes
        # that gap (initdb itself runs under pgserver's lock).
        pgdata.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        _servers[pgdata] = server
        log.debug("embedded PostgreSQL running in %s", pgdata)
    _ensure_database(server.get_uri())  # type: ignore[attr-defined]
    uri = server.get_uri(DATABASE_NAME)  # type: ignore[attr-defined]
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


def _ensure_database(admin_uri: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        # Two obsdb processes starting on a fresh home must not both create the database.
        conn.execute("SELECT pg_advisory_lock(%s)", (_CREATE_LOCK,))
        try:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_CREATE_LOCK,))
