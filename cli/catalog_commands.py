"""``obsdb frames`` and ``obsdb status``: what the catalog holds."""

from __future__ import annotations

import json
from datetime import date

import click

from obsdb.cli.context import AppContext, pass_app
from obsdb.cli.output import format_option, render
from obsdb.inventory import FRAME_COLUMNS, list_frames, status_summary
from obsdb.models import FRAME_STATES, IMAGE_TYPES


def _night(ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date like 2018-10-13") from exc


@click.command("frames")
@click.option("--type", "imagetyp", type=click.Choice(IMAGE_TYPES), help="Frame type.")
@click.option("--filter", "filter_", help="Filter name as the header writes it.")
@click.option("--night", callback=_night, help="Observing night (local date at dusk), YYYY-MM-DD.")
@click.option("--state", type=click.Choice(FRAME_STATES), help="Pipeline state.")
@format_option
@pass_app
def frames(app: AppContext, imagetyp, filter_, night, state, fmt: str) -> None:
    """List frames in observation order."""
    with app.sessions()() as session:
        rows = list_frames(session, imagetyp=imagetyp, filter=filter_, night=night, state=state)
    click.echo(render(rows, FRAME_COLUMNS, fmt))


@click.command("status")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_app
def status(app: AppContext, fmt: str) -> None:
    """Counts by frame type and state, the job queue, and every failure with its reason."""
    print_status(app, fmt)


def print_status(app: AppContext, fmt: str = "text") -> None:
    with app.sessions()() as session:
        summary = status_summary(session)
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    q = summary["queue"]
    click.echo(f"frames: {summary['frames']} ({summary['superseded']} superseded versions kept); "
               f"masters: {summary['masters']}")
    for imagetyp, states in sorted(summary["by_type_and_state"].items()):
        parts = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
        click.echo(f"  {imagetyp:<13} {sum(states.values()):>6}  ({parts})")
    oldest = q["oldest_pending_seconds"]
    click.echo(f"jobs: {q['todo']} queued, {q['doing']} running, {q['failed']} failed"
               + (f"; oldest waiting {oldest:.0f} s" if oldest is not None else ""))
    click.echo(f"rejected files: {summary['rejected_files']}")
    for r in summary["rejected"]:
        click.echo(f"  {r['path']}: {r['kind']}: {r['reason']}")
    if summary["failed_frames"]:
        click.echo(f"failed frames: {len(summary['failed_frames'])}")
    for f in summary["failed_frames"]:
        click.echo(f"  frame {f['id']} {f['path']}: {f['reason']}")


COMMANDS = [frames, status]
