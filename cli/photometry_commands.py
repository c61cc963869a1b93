"""``obsdb targets`` and ``obsdb wcs attach``."""

from __future__ import annotations

import csv
from pathlib import Path

import click

from obsdb.cli.context import AppContext, pass_app
from obsdb.cli.output import format_option, render


@click.group("targets", invoke_without_command=True)
@format_option
@click.pass_context
def targets(ctx: click.Context, fmt: str) -> None:
    """List targets (or add them): positions measured on every frame that covers them."""
    if ctx.invoked_subcommand is not None:
        return
    from obsdb.catalog.targets import list_targets

    app = ctx.find_object(AppContext)
    with app.sessions()() as session:
        rows = [{"name": t.name, "ra": t.ra, "dec": t.dec, "source_id": t.source_id} for t in list_targets(session)]
    click.echo(render(rows, ("name", "ra", "dec", "source_id"), fmt))


@targets.command("add")
@click.argument("name", required=False)
@click.argument("ra", required=False)
@click.argument("dec", required=False)
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False),
              help="A CSV with columns name, ra, dec (degrees or sexagesimal) instead of one target.")
@pass_app
def add(app: AppContext, name: str | None, ra: str | None, dec: str | None, csv_file: str | None) -> None:
    """Add target NAME at RA DEC (degrees, or hh:mm:ss +dd:mm:ss), or every row of --csv."""
    from obsdb.catalog.positions import parse_position
    from obsdb.catalog.targets import add_target

    if csv_file:
        with Path(csv_file).open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        missing = {"name", "ra", "dec"} - set(rows[0] if rows else {})
        if missing:
            raise click.ClickException(f"{csv_file} needs columns name, ra, dec (missing {', '.join(sorted(missing))})")
        wanted = [(r["name"], r["ra"], r["dec"]) for r in rows]
    elif name and ra is not None and dec is not None:
        wanted = [(name, ra, dec)]
    else:
        raise click.UsageError("give NAME RA DEC, or --csv FILE")
    try:
        positions = [(n, *parse_position(r, d)) for n, r, d in wanted]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    from obsdb.photometry.catch_up import frames_missing_source
    from obsdb.pipeline.queue import enqueue_catch_up, make_app

    added = []
    with app.sessions()() as session, session.begin():
        for n, r, d in positions:
            try:
                added.append((add_target(session, n, r, d), r, d))
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
    # Frames measured before the target existed have no point of it: measure them again.
    with app.sessions()() as session:
        missing = {done.name: frames_missing_source(session, done.source_id) for done, _, _ in added}
    if any(missing.values()):
        with make_app(app.settings).open() as queue_app:
            for frame_id in sorted({f for frames in missing.values() for f in frames}):
                enqueue_catch_up(queue_app, frame_id)
    for done, r, d in added:
        what = "new source" if done.created_source else "known source"
        again = (f"; {len(missing[done.name])} frame(s) queued to be measured at it (`obsdb process` or the "
                 "daemon runs them)" if missing[done.name] else "")
        click.echo(f"target {done.name} at {r:.6f} {d:+.6f}: {what} {done.source_id}"
                   f"{' (moved)' if done.replaced else ''}{again}")


@click.group("wcs")
def wcs() -> None:
    """Astrometric solutions of frames."""


@wcs.command("attach")
@click.argument("frame_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("wcs_file", type=click.Path(exists=True, dir_okay=False))
@pass_app
def attach(app: AppContext, frame_file: str, wcs_file: str) -> None:
    """Attach the plate solution in WCS_FILE (e.g. astrometry.net's wcs.fits) to FRAME_FILE.

    The frame is measured again with it, and the frames of its field that wait for a WCS
    are then aligned to it.
    """
    from obsdb.photometry.attach import AttachError, attach_wcs
    from obsdb.pipeline.queue import enqueue_measure, make_app

    with app.sessions()() as session, session.begin():
        try:
            frame = attach_wcs(session, frame_file, wcs_file)
        except AttachError as exc:
            raise click.ClickException(str(exc)) from exc
        frame_id, state = frame.id, frame.state
    if state in ("reduced", "measured", "needs_wcs"):
        with make_app(app.settings).open() as queue_app:
            enqueue_measure(queue_app, frame_id)
        click.echo(f"WCS attached to frame {frame_id}; queued for measurement (run `obsdb process` or a worker)")
    else:
        click.echo(f"WCS attached to frame {frame_id} ({state}); it is used when the frame is measured")


COMMANDS = [targets, wcs]
