"""SQL access: the researcher views, the cone function, the roles, and docs/sql.md.

The roles are created on the test server (they are cluster-wide and idempotent); each test
run logs in as its own throwaway member of ``obsdb_researcher`` / ``obsdb_pipeline``
(created here, dropped afterwards) and proves what it can and cannot do.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from conftest import REPO
from lightcurve_data import lc_database  # noqa: F401  (session fixture: the filled database)
from obsdb.database.roles import PIPELINE_ROLE, RESEARCHER_ROLE, RESEARCHER_VIEWS, ROLES_SQL, create_roles

DOCS = REPO / "docs" / "sql.md"


def _libpq(url: str, user: str | None = None) -> str:
    u = make_url(url).set(drivername="postgresql")
    if user is not None:
        u = u.set(username=user, password=None)
    return u.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def rolesdb(pg_admin_url, lc_database):
    """The filled database with the roles granted, and one login for each role."""
    url, truth = lc_database
    engine = create_engine(url)
    with Session(engine) as session, session.begin():
        create_roles(session)
    engine.dispose()
    suffix = uuid.uuid4().hex[:8]
    logins = {RESEARCHER_ROLE: f"obsdb_test_r_{suffix}", PIPELINE_ROLE: f"obsdb_test_p_{suffix}"}
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for group, login in logins.items():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(login),
                                                                        sql.Identifier(group)))
    try:
        yield url, truth, logins
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            for login in logins.values():
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                             (login,))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))


@pytest.fixture
def researcher(rolesdb):
    url, _, logins = rolesdb
    with psycopg.connect(_libpq(url, logins[RESEARCHER_ROLE]), autocommit=True) as conn:
        yield conn


@pytest.fixture
def pipeline(rolesdb):
    url, _, logins = rolesdb
    with psycopg.connect(_libpq(url, logins[PIPELINE_ROLE]), autocommit=True) as conn:
        yield conn


def test_researcher_reads_the_views_and_calls_the_cone_functions(researcher, rolesdb):
    _, truth, _ = rolesdb
    for view in RESEARCHER_VIEWS:
        assert researcher.execute(f"SELECT count(*) FROM {view}").fetchone()[0] > 0
    ra, dec = truth.cluster_pos
    rows = researcher.execute("SELECT source_id, distance_arcsec FROM obsdb_source_cone(%s, %s, %s)",
                              (ra, dec, 5.0 / 3600)).fetchall()
    assert [r[0] for r in rows] == truth.cluster
    try:  # allowed to run (no catalog is loaded here: no rows, or the function says so)
        researcher.execute("SELECT count(*) FROM obsdb_refcat_cone('gaia', 150.0, 20.0, 0.1)").fetchall()
    except errors.RaiseException:
        pass
    assert researcher.execute("SELECT count(*) FROM measurements").fetchone()[0] == truth.n_measurements
    researcher.execute("CREATE TEMP TABLE my_positions (ra float8, dec float8)")  # scratch space is allowed
    researcher.execute("INSERT INTO my_positions VALUES (%s, %s)", (ra, dec))
    n = researcher.execute("SELECT count(*) FROM my_positions p, obsdb_source_cone(p.ra, p.dec, 0.002) c").fetchone()
    assert n[0] == len(truth.cluster)


@pytest.mark.parametrize("statement", [
    "INSERT INTO sources (ra, dec, healpix) VALUES (1, 2, 3)",
    "UPDATE measurements SET mag = 0 WHERE source_id = 1",
    "DELETE FROM frames",
    "INSERT INTO v_sources (source_id, ra, dec, healpix) VALUES (99999, 1, 2, 3)",
    "DELETE FROM v_sources",
    "UPDATE v_sources SET ra = 0",
    "TRUNCATE measurements",
    "CREATE TABLE mine (x int)",
    "CREATE TABLE public.mine (x int)",
    "CREATE SCHEMA mine",
    "CREATE VIEW mine AS SELECT 1",
    "CREATE FUNCTION mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DROP VIEW v_lightcurve",
    "ALTER TABLE sources ADD COLUMN x int",
    "CREATE INDEX ON sources (ra)",
    "SELECT * FROM procrastinate_jobs",
    "SELECT * FROM procrastinate_events",
    "SELECT * FROM procrastinate_periodic_defers",
    "UPDATE alembic_version SET version_num = 'x'",
    "SELECT * FROM rejected_files",
    "SELECT procrastinate_defer_job_v1('q', 'task', NULL, NULL, '{}', NULL, 0)",
    "INSERT INTO procrastinate_jobs (queue_name, task_name) VALUES ('q', 't')",
    "COPY measurements FROM STDIN",
])
def test_researcher_cannot_write_create_or_read_the_queue(researcher, statement):
    with pytest.raises((errors.InsufficientPrivilege, errors.UndefinedFunction), match="permission denied|must be owner|not exist"):
        researcher.execute(statement)


def test_database_intact_after_the_researcher_tried(rolesdb, researcher):
    url, truth, _ = rolesdb
    researcher.execute("GRANT INSERT ON sources TO PUBLIC")  # not the owner: a warning, and nothing granted
    with psycopg.connect(_libpq(url)) as conn:
        acl = conn.execute("SELECT relacl::text FROM pg_class WHERE relname = 'sources'").fetchone()[0]
        assert not re.search(r"(^|[{,])=", acl) and "obsdb_researcher=r/" in acl  # nothing for PUBLIC
        assert conn.execute("SELECT count(*) FROM measurements").fetchone()[0] == truth.n_measurements
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'mine'").fetchone() == (0,)


def test_pipeline_role_writes_rows_but_no_ddl(pipeline, rolesdb):
    pipeline.execute("BEGIN")
    pipeline.execute("INSERT INTO instruments (name, profile) VALUES ('pipeline-test', 'generic')")
    pipeline.execute("UPDATE frames SET tries = tries + 1 WHERE id = 1")
    pipeline.execute("DELETE FROM instruments WHERE name = 'pipeline-test'")
    pipeline.execute("SELECT count(*) FROM procrastinate_jobs")
    pipeline.execute("INSERT INTO procrastinate_jobs (queue_name, task_name, lock, queueing_lock, args) "
                     "VALUES ('q', 't', NULL, NULL, '{}')")
    pipeline.execute("CREATE TEMP TABLE ensemble_update (id bigint) ON COMMIT DROP")
    pipeline.execute("SELECT * FROM obsdb_source_cone(150.0, 20.0, 0.01)")
    pipeline.execute("SELECT version_num FROM alembic_version")
    pipeline.execute("ROLLBACK")
    for statement in ("CREATE TABLE mine (x int)", "ALTER TABLE frames ADD COLUMN x int", "DROP TABLE frames",
                      "TRUNCATE frames CASCADE", "UPDATE alembic_version SET version_num = 'x'"):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied|must be owner"):
            pipeline.execute(statement)


def _acls(url: str) -> list:
    with psycopg.connect(_libpq(url)) as conn:
        tables = conn.execute("SELECT relname, relacl::text FROM pg_class c JOIN pg_namespace n ON n.oid = "
                              "c.relnamespace WHERE n.nspname = 'public' ORDER BY relname").fetchall()
        funcs = conn.execute("SELECT p.oid::regprocedure::text, proacl::text FROM pg_proc p JOIN pg_namespace n "
                             "ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1").fetchall()
        return tables + funcs


def test_roles_sql_is_idempotent_and_the_same_as_deploy(rolesdb):
    url, _, _ = rolesdb
    deploy = (REPO / "deploy" / "roles.sql").read_text()
    assert deploy == ROLES_SQL
    before = _acls(url)
    with psycopg.connect(_libpq(url), autocommit=True) as conn:  # the deploy file, as psql -f would run it
        conn.execute(deploy)
    engine = create_engine(url)
    with Session(engine) as session, session.begin():
        create_roles(session)
    engine.dispose()
    assert _acls(url) == before
    with psycopg.connect(_libpq(url)) as conn:
        for role in (RESEARCHER_ROLE, PIPELINE_ROLE):
            assert conn.execute("SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                                "WHERE rolname = %s", (role,)).fetchone() == (False, False, False, False)


def test_obsdb_lc_works_with_a_researcher_login(rolesdb):
    from click.testing import CliRunner

    from obsdb.cli.main import cli

    url, truth, logins = rolesdb
    as_researcher = make_url(url).set(username=logins[RESEARCHER_ROLE]).render_as_string(hide_password=False)
    result = CliRunner().invoke(cli, ["lc", "--source-id", str(truth.variable), "--format", "csv"],
                                env={"OBSDB_DATABASE_URL": as_researcher})
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 + len(truth.frames)


def test_init_create_roles_command(rolesdb):
    from click.testing import CliRunner

    from obsdb.cli.main import cli

    url, _, logins = rolesdb
    ok = CliRunner().invoke(cli, ["init", "--create-roles"], env={"OBSDB_DATABASE_URL": url})
    assert ok.exit_code == 0, ok.output
    assert "schema already at revision" in ok.output and "obsdb_researcher (read-only)" in ok.output
    as_researcher = make_url(url).set(username=logins[RESEARCHER_ROLE]).render_as_string(hide_password=False)
    refused = CliRunner().invoke(cli, ["init", "--create-roles"], env={"OBSDB_DATABASE_URL": as_researcher})
    assert refused.exit_code == 1
    assert "could not create the roles" in refused.output and "deploy/roles.sql" in refused.output


def _sql_blocks(markdown: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sql\n(.*?)```", markdown, flags=re.S)]


def test_every_example_in_the_docs_runs_as_the_researcher(researcher):
    blocks = _sql_blocks(DOCS.read_text())
    assert len(blocks) >= 8
    for block in blocks:
        rows = researcher.execute(block).fetchall()
        assert rows, f"docs/sql.md example returned no rows:\n{block}"
