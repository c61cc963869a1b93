"""Writing light curves (and other row lists) as text, CSV, JSON, ECSV or VOTable.

ECSV and VOTable carry the units, column descriptions and the request's metadata, so a
file taken elsewhere says what it holds. CSV and JSON write floats with full precision
(``repr``): a BJD needs all of its 15 digits.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FORMATS", "UCDS", "format_for_path", "render_rows", "render_table", "table_rows"]

#: Output formats of :func:`render_table`.
FORMATS = ("table", "csv", "json", "ecsv", "votable")

#: IVOA UCDs of the light-curve columns, written into VOTable FIELDs.
UCDS = {
    "mjd": "time.epoch;obs.exposure", "bjd_tdb": "time.epoch", "filter": "instr.filter", "mag": "phot.mag",
    "mag_err": "stat.error;phot.mag", "upper_limit": "phot.mag;stat.max", "flux": "phot.count",
    "flux_err": "stat.error;phot.count", "snr": "stat.snr", "zero_point": "phot.calib;phot.mag",
    "airmass": "obs.airMass", "fwhm": "phys.angSize;instr.det.psf", "flags": "meta.code.qual",
    "frame_id": "meta.id;obs.image", "source_id": "meta.id;src", "file": "meta.ref.url", "phase": "time.phase",
    "ra": "pos.eq.ra;meta.main", "dec": "pos.eq.dec;meta.main",
}

_SUFFIXES = {".ecsv": "ecsv", ".vot": "votable", ".xml": "votable", ".votable": "votable", ".csv": "csv",
             ".json": "json", ".txt": "table"}


def format_for_path(path: str | None, default: str = "table") -> str:
    """The output format a file name implies (``.ecsv``, ``.vot``/``.xml``, ``.csv``, ``.json``)."""
    if not path:
        return default
    lower = str(path).lower()
    for suffix, fmt in _SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    return default


def _plain(value: Any) -> Any:
    """A JSON- and CSV-friendly Python value: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table_rows(table, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of an astropy table as dicts of plain Python values (units dropped)."""
    names = list(columns) if columns is not None else [c for c in table.colnames if c != "time"]
    arrays = {}
    for name in names:
        col = table[name]
        arrays[name] = np.asarray(getattr(col, "value", col))
    return [{name: _plain(arrays[name][i]) for name in names} for i in range(len(table))]


def _text_cell(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if name in ("mjd", "bjd_tdb", "phase", "ra", "dec", "period", "frequency"):
            return f"{value:.6f}"
        if abs(value) >= 1e5:
            return f"{value:.1f}"
        return f"{value:.4f}"
    return str(value)


def render_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """Rows as an aligned text table, CSV or JSON (full float precision in CSV/JSON)."""
    if fmt == "json":
        return json.dumps([{c: _plain(r.get(c)) for c in columns} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if (v := _plain(r.get(c))) is None else repr(v) if isinstance(v, float) else v
                             for c in columns])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"rows render as table, csv or json, not {fmt!r}")
    cells = [[_text_cell(_plain(r.get(c)), c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _votable_bytes(table) -> bytes:
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Info
    from astropy.table import Table

    plain = Table(table, copy=True)
    if "time" in plain.colnames:  # VOTable has no Time mixin; mjd (UTC) holds the same instant
        plain.remove_column("time")
    meta = dict(plain.meta)
    plain.meta.clear()
    for name in plain.colnames:
        if name in UCDS:
            plain[name].meta["ucd"] = UCDS[name]
    vot = from_table(plain)
    vt = vot.get_first_table()
    vt.name = str(meta.get("table_name", "lightcurve"))
    for key, value in meta.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        vt.infos.append(Info(name=str(key), value="" if value is None else str(value)))
    buf = io.BytesIO()
    vot.to_xml(buf)
    return buf.getvalue()


def render_table(table, fmt: str, columns: Sequence[str] | None = None) -> str | bytes:
    """An astropy table (e.g. a light curve) in one of :data:`FORMATS`.

    Parameters
    ----------
    table : astropy.table.Table or TimeSeries
    fmt : str
        ``table``, ``csv``, ``json`` (rows only), ``ecsv`` or ``votable`` (units,
        descriptions, UCDs and ``meta``; VOTable leaves out the ``time`` column, whose
        instant ``mjd`` holds).
    columns : sequence of str, optional
        Columns for table/csv/json (default: all but ``time``).

    Returns
    -------
    str, or bytes for VOTable (UTF-8 XML)

    Raises
    ------
    ValueError
        For an unknown format.
    """
    if fmt in ("table", "csv", "json"):
        names = list(columns) if columns is not None else [c for c in table.colnames if c != "time"]
        return render_rows(table_rows(table, names), names, fmt)
    if fmt == "ecsv":
        buf = io.StringIO()
        table.write(buf, format="ascii.ecsv")
        return buf.getvalue()
    if fmt == "votable":
        return _votable_bytes(table)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
