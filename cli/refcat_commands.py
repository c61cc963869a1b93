"""``obsdb refcat``: load, list, search and drop reference catalogs."""

from __future__ import annotations

import math

import click

from obsdb.cli.context import AppContext, pass_app
from obsdb.cli.output import format_option, render


def _angle(kind: str):
    def convert(ctx: click.Context, param: click.Parameter, value: str) -> float:
        from obsdb.catalog.refcat import parse_angle

        try:
            return parse_angle(value, hours=(kind == "ra"))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc

    return convert


@click.group("refcat")
def refcat() -> None:
    """Reference catalogs (HEALPix-indexed) for astrometry and photometric calibration."""


@refcat.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Catalog name (unique).")
@click.option("--ra-col", required=True, help="Column of RA (degrees, or sexagesimal hours).")
@click.option("--dec-col", required=True, help="Column of Dec (degrees, or sexagesimal).")
@click.option("--mag", "mags", multiple=True, metavar="BAND=MAGCOL[:ERRCOL]",
              help="A band's magnitude (and error) column; repeat for each band.")
@click.option("--id-col", help="Column of the catalog's own star identifier.")
@click.option("--pm-ra-col", help="Column of the proper motion in RA, mas/yr, including cos(dec).")
@click.option("--pm-dec-col", help="Column of the proper motion in Dec, mas/yr.")
@click.option("--epoch", type=float, help="Julian year of the positions (needed with proper motions), e.g. 2016.0.")
@click.option("--format", "fmt", type=click.Choice(["csv", "ecsv", "fits", "votable"]),
              help="File format [default: from the file name].")
@click.option("--replace", is_flag=True, help="Replace a catalog of the same name (atomically).")
@pass_app
def load(app: AppContext, path: str, name: str, ra_col: str, dec_col: str, mags: tuple[str, ...],
         id_col: str | None, pm_ra_col: str | None, pm_dec_col: str | None, epoch: float | None,
         fmt: str | None, replace: bool) -> None:
    """Load the catalog in PATH (CSV, ECSV, FITS table or VOTable) with COPY.

    NaN or empty magnitudes mean "not measured"; bad positions stop the load and are
    listed. Example: obsdb refcat load gaia.fits --name gaia --ra-col ra --dec-col dec
    --mag G=phot_g_mean_mag --pm-ra-col pmra --pm-dec-col pmdec --epoch 2016.0
    """
    from obsdb.catalog.refcat import BandColumns, ColumnMap, RefcatError, load_refcat

    try:
        columns = ColumnMap(
            ra=ra_col, dec=dec_col, bands=tuple(BandColumns.parse(m) for m in mags), id=id_col,
            pm_ra=pm_ra_col, pm_dec=pm_dec_col, epoch=epoch,
        )
        with app.sessions()() as session, session.begin():
            result = load_refcat(session, path, name, columns, fmt=fmt, replace=replace)
    except RefcatError as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "replaced" if result.replaced else "loaded"
    bands = ", ".join(result.bands) or "no bands"
    click.echo(
        f"{verb} reference catalog {result.name!r}: {result.n_stars} stars ({bands}) from {result.path} "
        f"in {result.seconds:.1f} s ({result.stars_per_second:,.0f} stars/s)"
    )


@refcat.command("list")
@format_option
@pass_app
def list_(app: AppContext, fmt: str) -> None:
    """The loaded catalogs: name, stars, bands, epoch, when loaded, source file."""
    from obsdb.catalog.refcat import REFCAT_COLUMNS, list_refcats

    with app.sessions()() as session:
        rows = list_refcats(session)
    for r in rows:
        r["loaded_at"] = r["loaded_at"].strftime("%Y-%m-%d %H:%M:%S")
    click.echo(render(rows, REFCAT_COLUMNS, fmt))


@refcat.command("cone")
@click.argument("name")
@click.argument("ra", callback=_angle("ra"))
@click.argument("dec", callback=_angle("dec"))
@click.argument("radius_arcsec", type=float)
@click.option("--epoch", type=float, help="Julian year to move stars to with their proper motions.")
@format_option
@pass_app
def cone(app: AppContext, name: str, ra: float, dec: float, radius_arcsec: float, epoch: float | None,
         fmt: str) -> None:
    """Stars of catalog NAME within RADIUS_ARCSEC of RA DEC (degrees or sexagesimal), nearest first."""
    from obsdb.catalog.cone import cone_search
    from obsdb.catalog.refcat import RefcatError

    if not (math.isfinite(radius_arcsec) and radius_arcsec >= 0):
        raise click.BadParameter("the radius must be a number of arcseconds >= 0", param_hint="RADIUS_ARCSEC")
    try:
        with app.sessions()() as session:
            table = cone_search(session, name, ra, dec, radius_arcsec / 3600.0, epoch=epoch)
    except RefcatError as exc:
        raise click.ClickException(str(exc)) from exc
    columns = ["id", "catalog_id", "ra", "dec", "sep"]
    for band in table.meta["bands"]:
        columns += [band, f"{band}_err"]
    if any(math.isfinite(v) for v in table["pm_ra"]):
        columns += ["pm_ra", "pm_dec"]
    rows = []
    for row in table:
        out = {}
        for c in columns:
            v = row[c]
            v = v.item() if hasattr(v, "item") else v
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            out[c] = v if v != "" else None
        out["sep"] = round(out["sep"], 4)
        rows.append(out)
    click.echo(render(rows, columns, fmt))


@refcat.command("drop")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def drop(app: AppContext, name: str, yes: bool) -> None:
    """Delete reference catalog NAME and its stars."""
    from obsdb.catalog.refcat import RefcatError, drop_refcat

    if not yes:
        click.confirm(f"delete reference catalog {name!r} and all its stars?", abort=True)
    try:
        with app.sessions()() as session, session.begin():
            n = drop_refcat(session, name)
    except RefcatError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"deleted reference catalog {name!r} ({n} stars)")


COMMANDS = [refcat]
