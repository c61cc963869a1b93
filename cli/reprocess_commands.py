"""``obsdb reprocess``: run a stage again for chosen frames with today's software and config."""

from __future__ import annotations

import json

import click

from obsdb.cli.context import AppContext, pass_app


@click.command("reprocess")
@click.option("--night", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Frames of this observing night (local date at dusk), YYYY-MM-DD.")
@click.option("--field", "field_name", help="Light frames of this field (OBJECT, as `obsdb frames` shows it).")
@click.option("--frame-id", "frame_ids", type=click.IntRange(min=1), multiple=True,
              help="This frame (repeat the option for more).")
@click.option("--all", "everything", is_flag=True, help="Every frame (when no other choice is given).")
@click.option("--stage", type=click.Choice(["masters", "reduce", "measure", "ensemble"]), default="reduce",
              show_default=True,
              help="The stage to run again; the stages after it follow as usual "
                   "(masters > reduce > measure > ensemble).")
@click.option("--dry-run", is_flag=True, help="Say what would be queued; change nothing.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_app
def reprocess(app: AppContext, night, field_name: str | None, frame_ids: tuple[int, ...], everything: bool,
              stage: str, dry_run: bool, fmt: str) -> None:
    """Queue STAGE again for the chosen frames; `obsdb process` (or the running workers)
    then run it with their software and configuration, replacing the old rows and
    products. Each product row records the obsdb version and config hash that made it.

    Examples: `obsdb reprocess --night 2025-10-14 --stage measure`, then `obsdb process`;
    after losing the products folder: `obsdb reprocess --all --stage masters`.
    """
    from obsdb.pipeline.reprocess import NothingToReprocess, Selection, enqueue, plan

    selection = Selection(night=night.date() if night else None, field=field_name, frame_ids=tuple(frame_ids))
    if selection.everything and not everything:
        raise click.UsageError("choose frames with --night, --field or --frame-id, or say --all")
    if everything and not selection.everything:
        raise click.UsageError("--all does not go with --night, --field or --frame-id")
    with app.sessions()() as session:
        try:
            chosen = plan(session, app.settings, stage, selection)
        except (NothingToReprocess, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        if not dry_run and chosen.jobs:
            from obsdb.pipeline.queue import make_app

            with make_app(app.settings).open() as queue_app:
                enqueue(session, queue_app, chosen)
    if fmt == "json":
        click.echo(json.dumps({**chosen.as_dict(), "dry_run": dry_run}, indent=2))
        return
    _print(chosen, dry_run)


def _print(chosen, dry_run: bool) -> None:
    what = "group(s)" if chosen.stage == "masters" else ("field/filter pair(s)" if chosen.stage == "ensemble"
                                                         else "frame(s)")
    frames = f" of {len(chosen.frame_ids)} frame(s)" if chosen.stage in ("masters", "ensemble") else ""
    if dry_run:
        click.echo(f"would queue {chosen.stage} for {len(chosen.jobs)} {what}{frames} ({chosen.selection.describe()})")
    else:
        extra = f", {chosen.already_queued} already waiting in the queue" if chosen.already_queued else ""
        click.echo(f"queued {chosen.stage} for {chosen.queued} {what}{frames} ({chosen.selection.describe()}){extra}")
    for reason, n in chosen.skipped.items():
        click.echo(f"  left out: {n} frame(s) {reason}")
    if chosen.made_with:
        made = ", ".join(f"{k}: {n}" for k, n in chosen.made_with.items())
        click.echo(f"  today's products made by (obsdb version/config hash): {made}; now: {chosen.current}")
    if not dry_run and chosen.queued:
        click.echo("run `obsdb process` to execute them now (running workers and the daemon pick them up by "
                   "themselves), with the configuration the result should have")


COMMANDS = [reprocess]
