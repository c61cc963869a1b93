"""What every command shares: settings, the database, and turning errors into advice."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import click
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from obsdb.config import ConfigError, Settings, load_settings
from obsdb.database import SchemaOutOfDate, connect, ensure_schema


@dataclass
class AppContext:
    config_path: str | None = None
    _db: tuple[Engine, sessionmaker] | None = field(default=None, repr=False)

    @cached_property
    def settings(self) -> Settings:
        try:
            return load_settings(self.config_path)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc

    def database(self, *, check_schema: bool = True) -> tuple[Engine, sessionmaker]:
        """Connect; refuse an out-of-date server schema (the embedded one is upgraded)."""
        if self._db is None:
            try:
                engine, factory = connect(self.settings)
                if check_schema:
                    ensure_schema(engine, auto_upgrade=self.settings.embedded)
            except SchemaOutOfDate as exc:
                raise click.ClickException(str(exc)) from exc
            except OperationalError as exc:
                where = "the embedded database" if self.settings.embedded else "OBSDB_DATABASE_URL"
                raise click.ClickException(
                    f"cannot connect to {where}: {exc.orig}".strip()
                ) from exc
            self._db = (engine, factory)
        return self._db

    def sessions(self) -> sessionmaker:
        return self.database()[1]

    def ingestor(self, on_new_frame=None):
        """An Ingestor on this database; a bad instrument profile becomes advice."""
        # Imported here: ingest pulls in astropy, which every other command need not pay for.
        from obsdb.ingest import Ingestor
        from obsdb.instruments import ProfileError

        try:
            return Ingestor(self.sessions(), self.settings, on_new_frame=on_new_frame)
        except ProfileError as exc:
            where = self.settings.config_path or "the config file"
            raise click.ClickException(f"instrument profile in {where}: {exc}") from exc


pass_app = click.make_pass_decorator(AppContext, ensure=True)


def configure_logging(verbose: int, json_logs: bool = False) -> None:
    """Warnings and errors; -v adds progress (INFO), -vv debugging. One line per event,
    as text or (``json_logs``) as JSON objects: see obsdb.logs."""
    from obsdb.logs import configure_logging as configure

    configure(max(logging.WARNING - 10 * verbose, logging.DEBUG), "json" if json_logs else "text")
