"""One self-contained HTML page per observing night.

What the night gave and how it went: every frame (type, filter, exposure, state and the
reason when it did not end well), the master calibrations the light frames were reduced
with (and those built that night), FWHM, sky, zero point and limiting magnitude against
time (plotly, one colour per filter), and the failures with their reasons. Everything
comes from ``v_frames`` and ``masters``; the page embeds plotly.js and needs no network.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from obsdb import __version__
from obsdb.lightcurves.core import _session

__all__ = ["FAILED_STATES", "NightReport", "night_report", "night_report_html", "write_night_report"]

#: Frame states that count as failures on the page (with their reasons).
FAILED_STATES = ("failed", "needs_wcs", "unused")

FRAME_COLUMNS = ("frame_id", "date_obs", "imagetyp", "object", "filter", "exptime", "airmass", "state", "fwhm_arcsec",
                 "sky", "zero_point", "lim_mag_5", "n_detections", "wcs_method", "bias_id", "dark_id", "flat_id",
                 "file", "state_reason")
MASTER_COLUMNS = ("id", "kind", "filter", "exptime", "night", "n_inputs", "version", "is_bad", "bad_reason",
                  "n_frames_reduced", "path")


@dataclass
class NightReport:
    """The facts of one night (see :func:`night_report`)."""

    night: date
    frames: list[dict[str, Any]] = field(default_factory=list)
    masters: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Frames by type and state."""
        out: dict[str, Counter] = {}
        for f in self.frames:
            out.setdefault(f["imagetyp"], Counter())[f["state"]] += 1
        return {k: dict(v) for k, v in sorted(out.items())}


def _night(value) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a night: give its date as YYYY-MM-DD (the local date at dusk)") from None


def night_report(session: Session, night) -> NightReport:
    """Collect the frames, masters and failures of one observing night.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    night : datetime.date or str
        The night (``frames.night``: local date at the start of the night), or
        ``YYYY-MM-DD``.

    Returns
    -------
    NightReport
        Frames in time order; ``frames`` is empty when the night has none.

    Raises
    ------
    ValueError
        If ``night`` is not a date.
    """
    night = _night(night)
    frames = [dict(r) for r in session.execute(text(
        f"SELECT {', '.join(FRAME_COLUMNS)}, mjd_mid FROM v_frames WHERE night = :night "
        "ORDER BY date_obs NULLS LAST, frame_id"), {"night": night}).mappings()]
    masters = [dict(r) for r in session.execute(text(
        "WITH used AS ("
        "  SELECT x.id, count(*) AS n FROM v_frames AS f "
        "  CROSS JOIN LATERAL (VALUES (f.bias_id), (f.dark_id), (f.flat_id)) AS x(id) "
        "  WHERE f.night = :night AND x.id IS NOT NULL GROUP BY x.id) "
        "SELECT m.id, m.kind, m.filter, m.exptime, m.night, m.n_inputs, m.version, m.is_bad, m.bad_reason, "
        "       coalesce(u.n, 0) AS n_frames_reduced, m.path "
        "FROM masters AS m LEFT JOIN used AS u ON u.id = m.id "
        "WHERE u.id IS NOT NULL OR m.night = :night ORDER BY m.kind, m.filter NULLS FIRST, m.exptime, m.id"),
        {"night": night}).mappings()]
    failures = [
        {"frame_id": f["frame_id"], "file": f["file"], "imagetyp": f["imagetyp"], "state": f["state"],
         "reason": f["state_reason"] or "(no reason recorded)"}
        for f in frames if f["state"] in FAILED_STATES
    ]
    return NightReport(night, frames, masters, failures)


def _figure(report: NightReport):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from obsdb.lightcurves.plots import _colour, _esc

    panels = (("fwhm_arcsec", "FWHM (arcsec)", False), ("sky", "sky (ADU/pixel)", False),
              ("zero_point", "zero point (mag)", True), ("lim_mag_5", "limiting mag (S/N 5)", True))
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[p[1] for p in panels])
    light = [f for f in report.frames if f["imagetyp"] == "light" and f["date_obs"] is not None]
    filters: list[str] = []
    for f in light:
        if (f["filter"] or "") not in filters:
            filters.append(f["filter"] or "")
    for k, name in enumerate(filters):
        sel = [f for f in light if (f["filter"] or "") == name]
        x = [f["date_obs"].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for f in sel]
        custom = [[_esc(f["file"]), f["frame_id"], f["state"]] for f in sel]
        for row, (column, label, _) in enumerate(panels, start=1):
            y = [np.nan if f[column] is None else float(f[column]) for f in sel]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="markers", name=_esc(name) or "(no filter)", legendgroup=name,
                showlegend=row == 1, marker=dict(color=_colour(name, k), size=6), customdata=custom,
                hovertemplate=(f"{_esc(label)}: %{{y:.3f}}<br>%{{x}} UTC<br>%{{customdata[0]}}<br>"
                               "frame %{customdata[1]} (%{customdata[2]})<extra></extra>")), row=row, col=1)
    for row, (_, _, reverse) in enumerate(panels, start=1):
        if reverse:
            fig.update_yaxes(autorange="reversed", row=row, col=1)
    fig.update_xaxes(title_text="UTC", row=len(panels), col=1)
    fig.update_layout(template="plotly_white", height=1000, legend_title_text="filter", hovermode="closest",
                      margin=dict(t=40))
    return fig


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.3f}"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _table(rows: list[dict[str, Any]], columns, css: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        f"<tr class=\"{html.escape(str(r.get('state', '')))}\">"
        + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table class=\"{css}\"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def night_report_html(report: NightReport) -> str:
    """The report as one HTML document (plotly.js embedded)."""
    title = f"obsdb night report {report.night.isoformat()}"
    counts = "".join(
        f"<li>{html.escape(t)}: {sum(s.values())} ({html.escape(', '.join(f'{k} {v}' for k, v in sorted(s.items())))})</li>"
        for t, s in report.counts.items())
    if report.frames:
        plot = _figure(report).to_html(full_html=False, include_plotlyjs=True, config={"responsive": True})
    else:
        plot = "<p>No frames on this night.</p>"
    failures = (_table(report.failures, ("frame_id", "imagetyp", "state", "reason", "file"), "failures")
                if report.failures else "<p>None.</p>")
    masters = _table(report.masters, MASTER_COLUMNS) if report.masters else "<p>None.</p>"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; white-space: nowrap; }}
th {{ background: #f0f0f0; position: sticky; top: 0; }}
tr.failed td, tr.needs_wcs td, tr.unused td {{ background: #fde8e8; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(report.frames)} frames; generated {generated} by obsdb {html.escape(__version__)}.</p>
<ul>{counts}</ul>
<h2>Conditions</h2>
{plot}
<h2>Failures and their reasons ({len(report.failures)})</h2>
{failures}
<h2>Master calibrations used or built ({len(report.masters)})</h2>
{masters}
<h2>Frames ({len(report.frames)})</h2>
{_table(report.frames, FRAME_COLUMNS, "frames")}
</body></html>
"""


def write_night_report(sessions_or_session, night, path: str | Path) -> NightReport:
    """Collect one night (:func:`night_report`) and write its page to ``path``.

    Raises
    ------
    ValueError
        If ``night`` is not a date.
    LookupError
        If the night has no frames (nothing is written).
    """
    with _session(sessions_or_session) as session:
        report = night_report(session, night)
    if not report.frames:
        raise LookupError(f"no frames on the night of {report.night.isoformat()} (`obsdb frames --night` lists them)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(night_report_html(report), encoding="utf-8")
    return report
