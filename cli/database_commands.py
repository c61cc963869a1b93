"""``obsdb init``: create or upgrade the catalog schema."""

from __future__ import annotations

import click

from obsdb.cli.context import AppContext, pass_app
from obsdb.database.schema import current_revision, head_revision, upgrade_schema


@click.command("init")
@click.option("--create-roles", is_flag=True,
              help="Also create or refresh the obsdb_researcher (read-only) and obsdb_pipeline roles and their "
                   "grants; needs a login that owns the tables and has CREATEROLE (deploy/roles.sql: the same SQL).")
@click.option("--check", is_flag=True,
              help="Change nothing: exit 0 when the schema is this version's, else exit 1 and say so "
                   "(the services' start-up check, ExecStartPre= in deploy/obsdb-daemon.service).")
@pass_app
def init(app: AppContext, create_roles: bool, check: bool) -> None:
    """Create the obsdb schema, or upgrade it to this version's."""
    if check and create_roles:
        raise click.UsageError("--check changes nothing; run --create-roles without it")
    engine, _ = app.database(check_schema=False)
    before = current_revision(engine)
    if check:
        head = head_revision()
        if before != head:
            state = "empty" if before is None else f"at revision {before}"
            raise click.ClickException(
                f"the obsdb database schema is {state}, but this obsdb needs revision {head}: "
                "run `obsdb init` to create or upgrade it")
        click.echo(f"schema at revision {head}: current")
        return
    upgrade_schema(engine)
    head = head_revision()
    where = f"embedded database in {app.settings.pgdata}" if app.settings.embedded else "database"
    if before == head:
        click.echo(f"{where}: schema already at revision {head}")
    else:
        click.echo(f"{where}: schema upgraded from {before or 'empty'} to revision {head}")
    if create_roles:
        _create_roles(app)


def _create_roles(app: AppContext) -> None:
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from obsdb.database.roles import PIPELINE_ROLE, RESEARCHER_ROLE, create_roles

    try:
        with app.sessions()() as session, session.begin():
            create_roles(session)
    except (DBAPIError, psycopg.Error) as exc:
        raise click.ClickException(
            f"could not create the roles: {getattr(exc, 'orig', None) or exc}".strip()
            + "\n(run `obsdb init --create-roles` as the owner of the tables with CREATEROLE, or have an "
            "administrator run deploy/roles.sql)") from None
    click.echo(f"roles {RESEARCHER_ROLE} (read-only) and {PIPELINE_ROLE} (read and write, no DDL) are ready; "
               f"grant them to logins: CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE {RESEARCHER_ROLE};")


COMMANDS = [init]
