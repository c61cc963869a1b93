"""Database roles: a read-only researcher role and a pipeline role with DML rights only.

Two ``NOLOGIN`` group roles; people and services log in as their own roles and are made
members of one of them::

    CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE obsdb_researcher;   -- a person
    CREATE ROLE obsdb_worker LOGIN PASSWORD '...' IN ROLE obsdb_pipeline;  -- workers

- ``obsdb_researcher``: CONNECT and TEMPORARY on the database (temporary tables for a
  list of positions to cross-match are handy and touch nothing shared), USAGE on the
  schema, SELECT on the researcher views (``v_lightcurve``, ``v_sources``, ``v_frames``,
  ``v_zeropoints``) and on the science tables under them (:data:`RESEARCHER_TABLES`:
  measurements, sources, frames, ... so that columns the views leave out can be read
  too; and ``alembic_version``, which obsdb's commands check before they run, so
  ``obsdb lc`` works with a researcher's login), EXECUTE on obsdb's cone-search functions
  (``obsdb_source_cone``, ``obsdb_refcat_cone`` and the HEALPix helpers they call, all
  named ``obsdb_*``). No write or DDL right of any kind; no access to the job queue
  (``procrastinate_*``, whose job arguments name files and hosts) or ``rejected_files``. Every
  grant is an explicit list: a table added later is *not* readable until this SQL runs
  again (``obsdb init --create-roles`` after an upgrade does that).
- ``obsdb_pipeline``: CONNECT and TEMPORARY (the ensemble stage stages updates in a
  temporary table), SELECT/INSERT/UPDATE/DELETE on every table and view of the schema
  (the job queue included), USAGE on sequences, EXECUTE on every function (procrastinate
  defers and fetches jobs through its functions). ``alembic_version`` is read-only for
  it (``ensure_schema`` reads it). No CREATE on the schema, no TRUNCATE, no REFERENCES,
  no TRIGGER: **migrations run as the database owner** (``obsdb init`` with the owner's
  URL), never as the pipeline. Default privileges give the pipeline the same DML rights
  on tables the owner creates later.

Functions in PostgreSQL are executable by PUBLIC unless revoked; this SQL revokes
EXECUTE on the schema's functions from PUBLIC (and for functions created later), so that
the researcher can run the cone functions only. It also revokes CREATE on the schema
from PUBLIC, which PostgreSQL 15 already does by default.

Idempotent: running it twice gives the same rights (each run first revokes what the
two roles hold on the schema's tables and functions, then grants the lists again). It
must run as the owner of the obsdb tables with CREATEROLE (or as a superuser), on the
obsdb database, after the migrations. The same SQL is in ``deploy/roles.sql`` for
administrators who prefer ``psql -f``; ``tests/test_sql_access.py`` checks that both
are the same.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

__all__ = ["PIPELINE_ROLE", "RESEARCHER_ROLE", "RESEARCHER_TABLES", "RESEARCHER_VIEWS", "ROLES_SQL", "create_roles"]

RESEARCHER_ROLE = "obsdb_researcher"
PIPELINE_ROLE = "obsdb_pipeline"

RESEARCHER_VIEWS = ("v_lightcurve", "v_sources", "v_frames", "v_zeropoints")

#: Tables the researcher may read directly (those that exist are granted): the science
#: tables, and ``alembic_version`` so that obsdb's own commands (``obsdb lc`` ...), which
#: check the schema revision first, work with a researcher's login.
RESEARCHER_TABLES = (
    "instruments", "frames", "masters", "master_inputs", "reductions", "frame_solutions", "wcs_attachments",
    "sources", "measurements", "zeropoints", "ensembles", "targets", "refcats", "refcat_stars", "alembic_version",
)

ROLES_SQL = r"""-- obsdb database roles (obsdb.database.roles; `obsdb init --create-roles` runs the same SQL).
-- Run as the owner of the obsdb tables with CREATEROLE (or a superuser), connected to the
-- obsdb database, after `obsdb init`. Idempotent: run it again after every upgrade.
-- Logins: CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE obsdb_researcher;
--         CREATE ROLE obsdb_worker LOGIN PASSWORD '...' IN ROLE obsdb_pipeline;

-- The two group roles (NOLOGIN: nobody logs in as them directly).
DO $roles$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'obsdb_researcher') THEN
    BEGIN
      CREATE ROLE obsdb_researcher NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- created meanwhile
    END;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'obsdb_pipeline') THEN
    BEGIN
      CREATE ROLE obsdb_pipeline NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
  END IF;
END
$roles$;

-- Rights on this database and its schema.
DO $grants$
DECLARE
  schema_name text := current_schema();
  obj record;
  researcher_tables text[] := ARRAY['v_lightcurve', 'v_sources', 'v_frames', 'v_zeropoints',
    'instruments', 'frames', 'masters', 'master_inputs', 'reductions', 'frame_solutions',
    'wcs_attachments', 'sources', 'measurements', 'zeropoints', 'ensembles', 'targets',
    'refcats', 'refcat_stars', 'alembic_version'];
BEGIN
  EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO obsdb_researcher, obsdb_pipeline',
                 current_database());
  EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', schema_name);
  EXECUTE format('REVOKE ALL ON SCHEMA %I FROM obsdb_researcher, obsdb_pipeline', schema_name);
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO obsdb_researcher, obsdb_pipeline', schema_name);

  -- Start from nothing on every table, view, sequence and function of the schema.
  EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM obsdb_researcher, obsdb_pipeline', schema_name);
  EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM obsdb_researcher, obsdb_pipeline', schema_name);
  EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM PUBLIC, obsdb_researcher, obsdb_pipeline',
                 schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC', schema_name);

  -- Researcher: SELECT on the views and the science tables, EXECUTE on obsdb_* functions.
  FOR obj IN SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname = schema_name AND c.relkind IN ('r', 'v', 'p', 'm')
               AND c.relname = ANY (researcher_tables) LOOP
    EXECUTE format('GRANT SELECT ON %I.%I TO obsdb_researcher', schema_name, obj.relname);
  END LOOP;
  FOR obj IN SELECT p.oid::regprocedure AS sig FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
             WHERE n.nspname = schema_name AND p.proname LIKE 'obsdb\_%' AND p.prokind = 'f' LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO obsdb_researcher', obj.sig);
  END LOOP;

  -- Pipeline: DML everywhere (the job queue included), never DDL; alembic_version read-only.
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO obsdb_pipeline', schema_name);
  IF to_regclass(format('%I.alembic_version', schema_name)) IS NOT NULL THEN
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %I.alembic_version FROM obsdb_pipeline', schema_name);
  END IF;
  EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO obsdb_pipeline', schema_name);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO obsdb_pipeline', schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO obsdb_pipeline',
                 schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO obsdb_pipeline',
                 schema_name);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT EXECUTE ON FUNCTIONS TO obsdb_pipeline', schema_name);
END
$grants$;
"""


def create_roles(session: Session) -> None:
    """Create (or refresh) the ``obsdb_researcher`` and ``obsdb_pipeline`` roles and
    their grants on the session's database, in the caller's transaction.

    Runs :data:`ROLES_SQL` (the module docstring says what each role may do). The
    session's login must own the obsdb tables and have CREATEROLE (or be a superuser).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        A session on the obsdb database, at the current schema. Not committed here.

    Raises
    ------
    psycopg.errors.InsufficientPrivilege
        When the login may not create roles or does not own the tables (the SQL runs on
        the session's driver connection, so psycopg's error arrives unwrapped).
    """
    # Straight to the driver: the DO blocks hold '%' and ':' that bind-parameter parsing
    # would misread, and psycopg runs several statements in one call when given no
    # parameters. The session's transaction stays the one in use.
    session.connection().connection.driver_connection.execute(ROLES_SQL)
