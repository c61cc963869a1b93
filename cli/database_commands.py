"""``obsdb init``: create or upgrade the catalog schema."""

from __future__ import annotations

import click

from obsdb.cli.context import AppContext, pass_app
from obsdb.database.schema import current_revision, head_revision, upgrade_schema


@click.command("init")
@click.option("--create-roles", is_flag=True,
              help="Also create or refresh the obsdb_researcher (read-only) and obsdb_pipeline roles and their "
                   "grants; needs a login that owns the tables and has CREATEROLE (deploy/roles.sql: the same SQL).")
@pass_app
def init(app: AppContext, create_roles: bool) -> None:
    """Create the obsdb schema, or upgrade it to this version's."""
    engine, _ = app.database(check_schema=False)
    before = current_revision(engine)
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
