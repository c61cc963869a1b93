"""``obsdb lc``, ``obsdb variables``, ``obsdb period``, ``obsdb sources cone`` and
``obsdb night-report``: what astronomers read out of the database.

Positions are degrees or sexagesimal (``10:00:29.6 +20:03:24``); a negative Dec may be
typed as is (``obsdb lc 150.12 -20.5``). Everything user-typed reaches SQL as bound
parameters only. The heavy modules (astropy, plotly) are imported inside the commands,
so ``obsdb --help`` stays quick.
"""

from __future__ import annotations

import sys

import click

from obsdb.cli.context import AppContext, pass_app

LC_FORMATS = ("table", "csv", "json", "ecsv", "votable")
ROW_FORMATS = ("table", "csv", "json")
SORT_KEYS = ("stetson_j", "chi2_dof", "wstd", "von_neumann", "amplitude")  # obsdb.lightcurves.SORT_KEYS

# Lets "-20.5" or "-05:30:00" through as a Dec instead of an unknown option.
_POSITIONAL = {"ignore_unknown_options": True}


def _position(ra: str | None, dec: str | None) -> tuple[float | None, float | None]:
    if ra is None and dec is None:
        return None, None
    if ra is None or dec is None:
        raise click.UsageError("a position needs both RA and DEC")
    from obsdb.catalog.positions import parse_position

    try:
        return parse_position(ra, dec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="RA DEC") from None


def _which(ra, dec, radius, source_id, target) -> dict:
    """The source arguments of obsdb.lightcurves.get: exactly one of position, id, target."""
    given = [ra is not None or dec is not None, source_id is not None, target is not None]
    if sum(given) != 1:
        raise click.UsageError("give a position RA DEC, or --source-id N, or --target NAME (exactly one)")
    ra_deg, dec_deg = _position(ra, dec)
    return dict(ra=ra_deg, dec=dec_deg, radius_arcsec=radius, source_id=source_id, target=target)


def _emit(content: str | bytes, output: str | None, what: str) -> None:
    if output is None:
        if isinstance(content, bytes):
            sys.stdout.buffer.write(content)
            sys.stdout.flush()
        else:
            click.echo(content)
        return
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(output, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as fh:
        fh.write(content if isinstance(content, bytes) or content.endswith("\n") else content + "\n")
    click.echo(f"wrote {what} to {output}", err=True)


def _light_curve(app: AppContext, **kwargs):
    """obsdb.lightcurves.get with user errors turned into messages (exit code 1)."""
    from obsdb.lightcurves import NoSourceFound, get

    try:
        ts = get(app.sessions(), **kwargs)
    except (NoSourceFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if ts.meta.get("note"):
        click.echo(f"note: {ts.meta['note']}", err=True)
    if len(ts) == 0:
        have = ts.meta.get("available_filters")
        click.echo(f"note: no measurements of source {ts.meta['source_id']} match"
                   + (f" (its filters: {', '.join(have)})" if have else ""), err=True)
    return ts


@click.command("lc", context_settings=_POSITIONAL)
@click.argument("ra", required=False)
@click.argument("dec", required=False)
@click.option("--radius", type=float, default=2.0, show_default=True, help="Cone radius around RA DEC, arcsec.")
@click.option("--source-id", type=int, help="The source with this id instead of a position.")
@click.option("--target", help="The source of this target (`obsdb targets`) instead of a position.")
@click.option("--filter", "filters", multiple=True, help="Only this filter (repeat for several).")
@click.option("--since", help="From this time: ISO date/time (UTC) or MJD.")
@click.option("--until", help="Up to this time: ISO date/time (UTC) or MJD.")
@click.option("--aperture", type=float, help="Aperture radius (pixels): the nearest aperture of each frame "
              "(aperture magnitudes, no aperture correction, unless it is the reported one).")
@click.option("--include-flagged", is_flag=True, help="Keep measurements with quality flags (marked 'flagged').")
@click.option("--format", "fmt", type=click.Choice(LC_FORMATS),
              help="Output format (default: from --output's suffix, else table).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write to this file instead of standard output.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write an interactive HTML plot here.")
@click.option("--fold", type=float, help="Period in days: add a phase column and plot against phase.")
@pass_app
def lc(app: AppContext, ra, dec, radius, source_id, target, filters, since, until, aperture, include_flagged, fmt,
       output, plot, fold) -> None:
    """Light curve of the source nearest RA DEC (degrees or hh:mm:ss +dd:mm:ss).

    Times are mid-exposure MJD (UTC) and BJD_TDB; forced non-detections are upper
    limits (is_upper_limit). Exit code 1 when no source matches.
    """
    from obsdb.lightcurves import add_phase, format_for_path, lightcurve_figure, render_table, write_html

    ts = _light_curve(app, **_which(ra, dec, radius, source_id, target), filters=list(filters) or None,
                      since=since, until=until, aperture=aperture, include_flagged=include_flagged)
    if fold is not None:
        try:
            add_phase(ts, fold)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fold") from None
    fmt = fmt or format_for_path(output)
    _emit(render_table(ts, fmt), output, f"{len(ts)} points of source {ts.meta['source_id']}")
    if plot:
        write_html(lightcurve_figure(ts, fold=fold), plot)
        click.echo(f"wrote the plot to {plot}", err=True)


@click.command("variables")
@click.option("--filter", "filters", multiple=True, help="Only this filter (repeat for several).")
@click.option("--min-points", type=click.IntRange(min=3), default=10, show_default=True,
              help="Fewest clean points a source needs in a filter.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="How many to list.")
@click.option("--sort", type=click.Choice(SORT_KEYS), default="stetson_j", show_default=True,
              help="Ranking index (von_neumann ascending, the others descending).")
@click.option("--format", "fmt", type=click.Choice(ROW_FORMATS), default="table", show_default=True)
@pass_app
def variables(app: AppContext, filters, min_points, top, sort, fmt) -> None:
    """Rank sources by variability: weighted std, chi2/dof, Stetson J, von Neumann ratio, amplitude."""
    from obsdb.lightcurves import VARIABILITY_COLUMNS, render_rows, variability

    try:
        with app.sessions()() as session:
            rows = variability(session, filters=list(filters) or None, min_points=min_points, top=top, sort=sort)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render_rows(rows, VARIABILITY_COLUMNS, fmt))


@click.command("period", context_settings=_POSITIONAL)
@click.argument("ra", required=False)
@click.argument("dec", required=False)
@click.option("--radius", type=float, default=2.0, show_default=True, help="Cone radius around RA DEC, arcsec.")
@click.option("--source-id", type=int, help="The source with this id instead of a position.")
@click.option("--target", help="The source of this target instead of a position.")
@click.option("--filter", "filter_", help="Filter to search (default: the one with the most points).")
@click.option("--min-period", type=float, help="Shortest period, days (default: twice the median time step).")
@click.option("--max-period", type=float, help="Longest period, days (default: the time span).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the periodogram and folded curve here (HTML).")
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True)
@pass_app
def period(app: AppContext, ra, dec, radius, source_id, target, filter_, min_period, max_period, plot, fmt) -> None:
    """Lomb-Scargle period of a source, with its false-alarm probability."""
    import json

    from obsdb.lightcurves import find_period, period_figure, write_html

    ts = _light_curve(app, **_which(ra, dec, radius, source_id, target),
                      filters=[filter_] if filter_ is not None else None)
    try:
        result = find_period(ts, filter=filter_, min_period=min_period, max_period=max_period)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    out = {"source_id": ts.meta["source_id"], **result.as_dict(),
           "peaks": [{"period": p, "power": w} for p, w in result.peaks]}
    if fmt == "json":
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(f"source {out['source_id']}, filter {result.filter}: {result.n_points} points over "
                   f"{result.baseline:.3f} d ({result.time_column})")
        click.echo(f"best period {result.period:.7f} d  (frequency {result.frequency:.6f} /d, power "
                   f"{result.power:.3f}, false-alarm probability {result.false_alarm_probability:.3g}, "
                   f"semi-amplitude {result.amplitude:.4f} mag)")
        click.echo("other peaks: " + ", ".join(f"{p:.6f} d ({w:.3f})" for p, w in result.peaks[1:]))
    if plot:
        write_html(period_figure(result, ts), plot)
        click.echo(f"wrote the plot to {plot}", err=True)


@click.group("sources")
def sources() -> None:
    """Sources: the stars (and targets) measurements hang on."""


@sources.command("cone", context_settings=_POSITIONAL)
@click.argument("ra")
@click.argument("dec")
@click.argument("radius_arcsec", type=float)
@click.option("--format", "fmt", type=click.Choice(ROW_FORMATS), default="table", show_default=True)
@pass_app
def cone(app: AppContext, ra, dec, radius_arcsec, fmt) -> None:
    """Sources within RADIUS_ARCSEC of RA DEC, nearest first."""
    from obsdb.lightcurves import cone as cone_search
    from obsdb.lightcurves.core import CONE_COLUMNS
    from obsdb.lightcurves.export import render_rows

    ra_deg, dec_deg = _position(ra, dec)
    try:
        with app.sessions()() as session:
            rows = cone_search(session, ra_deg, dec_deg, radius_arcsec, with_counts=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="RADIUS_ARCSEC") from None
    click.echo(render_rows(rows, CONE_COLUMNS, fmt))


@click.command("night-report")
@click.argument("night")
@click.option("--output", type=click.Path(dir_okay=False), help="HTML file (default: night-report-NIGHT.html).")
@pass_app
def night_report(app: AppContext, night: str, output: str | None) -> None:
    """One HTML page for NIGHT (YYYY-MM-DD): frames, masters, conditions against time, failures."""
    from obsdb.lightcurves import write_night_report

    try:
        report = write_night_report(app.sessions(), night, output or f"night-report-{night}.html")
    except (ValueError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"night {report.night}: {len(report.frames)} frames, {len(report.failures)} failures, "
               f"{len(report.masters)} masters -> {output or f'night-report-{night}.html'}")


COMMANDS = [lc, variables, period, sources, night_report]
