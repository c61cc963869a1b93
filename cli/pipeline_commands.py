"""``obsdb process``, ``obsdb worker``, ``obsdb daemon`` and ``obsdb masters``."""

from __future__ import annotations

import os

import click
from tqdm import tqdm

from obsdb.cli.context import AppContext, pass_app
from obsdb.cli.output import format_option, render

concurrency_option = click.option(
    "--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
    help="Jobs run at once by this worker (threads).",
)

metrics_port_option = click.option(
    "--metrics-port", type=click.IntRange(0, 65535), envvar="OBSDB_METRICS_PORT",
    help="Serve the status figures to Prometheus at http://HOST:PORT/metrics (default: $OBSDB_METRICS_PORT; "
         "none without it).",
)


def _port_advice(exc: Exception) -> click.ClickException:
    return click.ClickException(f"{exc}; choose another --metrics-port")


def _runtime(app: AppContext, batch: bool = False):
    # One OpenMP thread per job: workers run jobs side by side (--concurrency, more
    # workers), and astroscrappy's threads only spin against each other on a busy machine
    # (1.26 s wall instead of 0.43 s per 2048² frame). Set before astroscrappy loads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from obsdb.pipeline.runtime import Runtime

    engine, sessions = app.database()
    return Runtime(app.settings, engine, sessions, batch=batch)


@click.command("process")
@concurrency_option
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when on a terminal).")
@pass_app
def process(app: AppContext, concurrency: int, progress: bool | None) -> None:
    """Run every pending job to completion in the foreground, then exit.

    Batch mode for reducing a night already on disk: masters are built at once and
    light frames are reduced with what exists (no waiting for late calibrations).
    """
    from obsdb.pipeline.worker import run_worker

    disable = None if progress is None else not progress
    with tqdm(unit="job", desc="jobs left", disable=disable, file=click.get_text_stream("stderr")) as bar:
        def show(active: int) -> None:
            bar.set_postfix_str(f"{active} queued or running")
            bar.update()

        run_worker(_runtime(app, batch=True), concurrency=concurrency, until_empty=True, progress=show)
    from obsdb.cli.catalog_commands import print_status

    print_status(app)


@click.command("worker")
@concurrency_option
@metrics_port_option
@pass_app
def worker(app: AppContext, concurrency: int, metrics_port: int | None) -> None:
    """Run pipeline jobs until stopped (SIGTERM/SIGINT finish or release the current job)."""
    from obsdb.metrics import MetricsPortError, serve_metrics
    from obsdb.pipeline.worker import run_worker

    runtime = _runtime(app)
    try:
        with serve_metrics(runtime.sessions, metrics_port):
            run_worker(runtime, concurrency=concurrency)
    except MetricsPortError as exc:
        raise _port_advice(exc) from exc


@click.command("daemon")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@concurrency_option
@metrics_port_option
@pass_app
def daemon(app: AppContext, dirs: tuple[str, ...], concurrency: int, metrics_port: int | None) -> None:
    """Watch DIRS and run the pipeline: the whole observatory service in one process."""
    from obsdb.metrics import MetricsPortError
    from obsdb.services.daemon import run_daemon

    try:
        run_daemon(_runtime(app), list(dirs), concurrency=concurrency, metrics_port=metrics_port)
    except MetricsPortError as exc:
        raise _port_advice(exc) from exc


MASTER_COLUMNS = ("id", "kind", "filter", "exptime", "binning", "night", "n_inputs", "median", "version",
                  "is_bad", "path")


@click.group("masters", invoke_without_command=True)
@format_option
@click.pass_context
def masters(ctx: click.Context, fmt: str) -> None:
    """List master calibrations (or mark one bad)."""
    if ctx.invoked_subcommand is not None:
        return
    from obsdb.inventory import list_masters

    app = ctx.find_object(AppContext)
    with app.sessions()() as session:
        rows = list_masters(session)
    click.echo(render(rows, MASTER_COLUMNS, fmt))


@masters.command("mark-bad")
@click.argument("master_id", type=int)
@click.option("--reason", default="marked bad by hand", show_default=True)
@pass_app
def mark_bad(app: AppContext, master_id: int, reason: str) -> None:
    """Stop using master MASTER_ID; frames it calibrated are reduced again with the next best."""
    from obsdb.pipeline.queue import make_app
    from obsdb.pipeline.rework import mark_master_bad

    with make_app(app.settings).open() as queue_app:
        try:
            redo = mark_master_bad(app.sessions(), queue_app, app.settings, master_id, reason)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"master {master_id} marked bad; {redo} frame(s) queued for reduction again")


COMMANDS = [process, worker, daemon, masters]
