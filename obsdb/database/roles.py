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
obsdb database, after the migrations. The SQL is the file ``roles.sql`` beside this module;
``deploy/roles.sql``, for administrators who prefer ``psql -f``, is a link to it.
"""

from __future__ import annotations

from importlib import resources

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

#: The SQL, kept in the package's ``roles.sql``; ``deploy/roles.sql`` links to that file,
#: for administrators who prefer ``psql -f``.
ROLES_SQL = resources.files("obsdb.database").joinpath("roles.sql").read_text(encoding="utf-8")


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
