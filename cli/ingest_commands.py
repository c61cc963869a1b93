"""``obsdb ingest`` and ``obsdb watch``: getting raw frames into the catalog."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from obsdb.cli.context import AppContext, pass_app


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Summary format; json is for scripts.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@pass_app
def ingest(app: AppContext, paths: tuple[str, ...], fmt: str, progress: bool | None) -> None:
    """Register the FITS files in PATHS (files or directories, recursively).

    Re-ingesting is safe: known files are skipped, copies are recognised by content, and
    files that cannot be read are recorded and copied into the quarantine folder.
    Exits with status 1 when any file was rejected.
    """
    from obsdb.ingest import iter_candidate_files
    from obsdb.pipeline.queue import FrameEnqueuer, make_app

    files = list(iter_candidate_files(paths))
    disable = None if progress is None else not progress
    with make_app(app.settings).open() as queue_app:
        ingestor = app.ingestor(on_new_frame=FrameEnqueuer(queue_app, app.sessions()))
        with tqdm(total=len(files), unit="file", disable=disable, file=click.get_text_stream("stderr")) as bar:
            report = ingestor.ingest(files, progress=lambda _: bar.update())
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        counts = report.counts()
        click.echo(
            f"{len(report.outcomes)} files: {counts.get('new', 0)} new, "
            f"{counts.get('new_version', 0)} new versions, {counts.get('moved', 0)} moved, "
            f"{counts.get('unchanged', 0)} unchanged, "
            f"{counts.get('duplicate', 0)} duplicates, {len(report.failures)} failed"
        )
        by_type = report.by_type()
        if by_type:
            click.echo("new frames by type: " + ", ".join(f"{k} {v}" for k, v in sorted(by_type.items())))
        for failure in report.failures:
            click.echo(f"FAILED {failure.path}: {failure.reason}", err=True)
    if report.failures:
        raise SystemExit(1)


@click.command("watch")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--polling", is_flag=True, default=None, help="Poll the file system (for network file systems).")
@click.option("--settle", type=float, default=None, help="Seconds a file's size and mtime must stay unchanged.")
@click.option("--rescan", type=float, default=None, help="Seconds between full rescans (events get lost).")
@pass_app
def watch(app: AppContext, dirs: tuple[str, ...], polling: bool | None, settle: float | None,
          rescan: float | None) -> None:
    """Watch DIRS and ingest every new FITS file once it is complete. Stop with Ctrl-C/SIGTERM."""
    from obsdb.pipeline.queue import FrameEnqueuer, make_app
    from obsdb.services.watcher import Watcher

    watch_settings = app.settings.watch
    queue_app = make_app(app.settings).open()
    ingestor = app.ingestor(on_new_frame=FrameEnqueuer(queue_app, app.sessions()))
    Watcher(
        [*dirs],
        ingestor,
        settle_seconds=watch_settings.settle_seconds if settle is None else settle,
        rescan_seconds=watch_settings.rescan_seconds if rescan is None else rescan,
        polling=watch_settings.polling if polling is None else polling,
        poll_interval=watch_settings.poll_interval,
        give_up_seconds=watch_settings.give_up_seconds,
    ).run_forever()


COMMANDS = [ingest, watch]
