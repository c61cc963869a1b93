"""``obsdb init``: create or upgrade the catalog schema."""

from __future__ import annotations

import click

from obsdb.cli.context import AppContext, pass_app
from obsdb.database.schema import current_revision, head_revision, upgrade_schema


@click.command("init")
@pass_app
def init(app: AppContext) -> None:
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


COMMANDS = [init]
