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
    """Counts by frame type and state, the job queue (depth, oldest waiting job), the last
    errors, and every failure with its reason."""
    print_status(app, fmt)


def print_status(app: AppContext, fmt: str = "text") -> None:
    with app.sessions()() as session:
        summary = status_summary(session)
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(format_status(summary))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(summary: dict) -> str:
    """The status summary as lines for a person (the same figures as ``--format json``)."""
    q = summary["queue"]
    # Not the measurements estimate: it lags writes by a second, and two tables of the same
    # catalog must read the same (`obsdb process` ends with this table).
    lines = [f"frames: {summary['frames']} ({summary['superseded']} superseded versions kept); "
             f"masters: {summary['masters']}"]
    for imagetyp, states in sorted(summary["by_type_and_state"].items()):
        parts = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
        lines.append(f"  {imagetyp:<13} {sum(states.values()):>6}  ({parts})")
    if summary["by_state"]:
        lines.append("  by state: " + ", ".join(f"{s} {n}" for s, n in sorted(summary["by_state"].items())))
    lines.append(f"needs a WCS: {summary['needs_wcs']}; failed: {summary['failed']}")
    oldest = q["oldest_pending_seconds"]
    lines.append(
        f"jobs: depth {q['depth']} ({q['ready']} ready, {q['scheduled']} scheduled for later, "
        f"{q['doing']} running); {q['failed']} failed"
        + (f"; oldest waiting {_age(oldest)}" if oldest is not None else "")
    )
    others = {s: n for s, n in q["by_status"].items() if n and s not in ("todo", "doing", "failed")}
    if others:
        lines.append("  finished: " + ", ".join(f"{s} {n}" for s, n in sorted(others.items())))
    last = summary["last_error"]
    if last["frame"] is not None:
        f = last["frame"]
        lines.append(f"last failed frame: {f['id']} {f['path']} at {f['at']}: {f['reason']}")
    if last["job"] is not None:
        j = last["job"]
        args = ", ".join(f"{k}={v!r}" for k, v in (j["args"] or {}).items())
        lines.append(f"last failed job: {j['id']} {j['task']}({args}) after {j['attempts']} attempt(s)"
                     + (f" at {j['at']}" if j["at"] else "") + (f": {j['reason']}" if j["reason"] else ""))
    lines.append(f"rejected files: {summary['rejected_files']}")
    for r in summary["rejected"]:
        lines.append(f"  {r['path']}: {r['kind']}: {r['reason']}")
    if summary["failed_frames"]:
        lines.append(f"failed frames: {len(summary['failed_frames'])}")
    for f in summary["failed_frames"]:
        lines.append(f"  frame {f['id']} {f['path']}: {f['reason']}")
    return "\n".join(lines)


COMMANDS = [frames, status]
