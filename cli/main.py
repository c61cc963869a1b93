"""``obsdb``: the command group; each sub-group lives in a module of its own."""

from __future__ import annotations

import click

from obsdb import __version__
from obsdb.cli import (
    catalog_commands,
    database_commands,
    ingest_commands,
    lightcurve_commands,
    photometry_commands,
    pipeline_commands,
    refcat_commands,
    reprocess_commands,
    simulate_command,
)
from obsdb.cli.context import AppContext, configure_logging
from obsdb.logs import LOG_FORMATS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="obsdb")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="OBSDB_CONFIG",
              help="TOML configuration file (default: $OBSDB_CONFIG).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False), default="text",
              envvar="OBSDB_LOG_FORMAT", show_default=True,
              help="Log lines on stderr as text or as JSON objects (default: $OBSDB_LOG_FORMAT).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, log_format: str) -> None:
    """obsdb: an observatory data system on PostgreSQL.

    Without OBSDB_DATABASE_URL, obsdb runs an embedded PostgreSQL under OBSDB_HOME
    (default ~/.local/share/obsdb), which also holds products and the quarantine.
    """
    configure_logging(verbose, json_logs=log_format.lower() == "json")
    ctx.obj = AppContext(config_path=config_path)


for module in (database_commands, simulate_command, ingest_commands, pipeline_commands, catalog_commands,
               photometry_commands, refcat_commands, lightcurve_commands, reprocess_commands):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="obsdb")


if __name__ == "__main__":
    main()
