"""Shared fixtures: a real PostgreSQL, a fresh migrated database per test, the CLI.

With ``OBSDB_TEST_DATABASE_URL`` set (CI: the machine's PostgreSQL), tests create their
databases on that server; without it, on an embedded pgserver started for the session.
Tests marked ``embedded`` always exercise obsdb's own embedded database as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from obsdb.config import Settings
from obsdb.database.schema import upgrade_schema

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NGC520 = SHARED_DATA / "ngc520-umd-g"


def _with_database(url: str, name: str, driver: str = "postgresql") -> str:
    return make_url(url).set(drivername=driver, database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """libpq URL of a server on which the tests may create and drop databases."""
    server_url = os.environ.get("OBSDB_TEST_DATABASE_URL")
    if server_url:
        yield _with_database(server_url, make_url(server_url).database or "postgres")
        return
    import pgserver

    # Not under pytest's basetemp: pytest prunes old basetemp folders when another session
    # starts, which would pull the data directory from under a running server.
    holder = tempfile.mkdtemp(prefix="obsdb-test-pg-")
    server = pgserver.get_server(Path(holder) / "pgdata", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(holder, ignore_errors=True)


def _create_database(admin_url: str, name: str, template: str | None = None) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        conn.execute(stmt)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> Iterator[str]:
    """A database migrated to head once per session, copied for each test."""
    name = f"obsdb_tpl_{uuid.uuid4().hex[:10]}"
    _create_database(pg_admin_url, name)
    engine = create_engine(_with_database(pg_admin_url, name, "postgresql+psycopg"))
    upgrade_schema(engine)
    engine.dispose()
    yield name
    _drop_database(pg_admin_url, name)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database (no schema)."""
    name = f"obsdb_e_{uuid.uuid4().hex[:10]}"
    _create_database(pg_admin_url, name)
    yield _with_database(pg_admin_url, name, "postgresql+psycopg")
    _drop_database(pg_admin_url, name)


@pytest.fixture
def db_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database at the current schema."""
    name = f"obsdb_t_{uuid.uuid4().hex[:10]}"
    _create_database(pg_admin_url, name, template=template_database)
    yield _with_database(pg_admin_url, name, "postgresql+psycopg")
    _drop_database(pg_admin_url, name)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def obsdb_home(tmp_path: Path) -> Path:
    home = tmp_path / "obsdb-home"
    home.mkdir()
    return home


@pytest.fixture
def settings(obsdb_home: Path, db_url: str) -> Settings:
    return Settings(home=obsdb_home, database_url=db_url)


@pytest.fixture
def cli_env(obsdb_home: Path, db_url: str) -> dict[str, str]:
    """Environment for an ``obsdb`` subprocess on this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSDB_")}
    env.update(OBSDB_HOME=str(obsdb_home), OBSDB_DATABASE_URL=db_url, PYTHONUNBUFFERED="1")
    return env


def obsdb_command() -> list[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sys.executable).with_name("obsdb")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "obsdb.cli.main"]


def run_obsdb(*args: str | os.PathLike[str], env: dict[str, str], timeout: float = 300,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``obsdb ARGS`` as a real subprocess and capture its output."""
    proc = subprocess.run(
        [*obsdb_command(), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"obsdb {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def ngc520_copy(tmp_path: Path) -> Path:
    """A writable copy of the real NGC 520 night (tests must never touch shared/)."""
    if not NGC520.is_dir():
        pytest.skip(f"real data not found at {NGC520}")
    target = tmp_path / "ngc520"
    shutil.copytree(NGC520, target)
    for f in target.iterdir():
        f.chmod(0o644)
    return target
