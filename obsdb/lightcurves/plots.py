"""Interactive plotly pages of light curves and periodograms, self-contained.

Every page embeds plotly.js (``include_plotlyjs=True``, about 4 MB): it opens from a
file, a mail attachment or a machine without network, and fetches nothing.

A light-curve figure has **one trace per filter** (one colour each), magnitudes growing
downwards, error bars, and the kind of each point in its marker:

- filled circle: a clean measurement;
- cross: a quality-flagged measurement (shown only when asked for);
- open downward triangle: an upper limit (forced photometry below S/N 3), at the limit.

Hovering shows the time (MJD and UTC), the frame's file, airmass, FWHM, the flags by
name, and the frame id. ``fold=PERIOD`` plots against phase instead of time.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from obsdb.photometry.flags import describe

__all__ = ["FILTER_COLOURS", "lightcurve_figure", "period_figure", "write_html"]

#: Colours of the usual filters; others take plotly's palette in order.
FILTER_COLOURS = {
    "U": "#6a3d9a", "B": "#1f4fd8", "V": "#2ca02c", "R": "#d62728", "I": "#8c2d04",
    "u": "#6a3d9a", "g": "#17becf", "r": "#e6550d", "i": "#843c39", "z": "#393b79",
    "L": "#555555", "C": "#555555", "CLEAR": "#555555",
}
_PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

_SYMBOL_CLEAN, _SYMBOL_FLAGGED, _SYMBOL_LIMIT = "circle", "x", "triangle-down-open"


def _values(col) -> np.ndarray:
    return np.asarray(getattr(col, "value", col))


def _colour(name: str, k: int) -> str:
    return FILTER_COLOURS.get(name, _PALETTE[k % len(_PALETTE)])


def _iso_times(mjd: np.ndarray) -> list[str]:
    from astropy.time import Time

    if mjd.size == 0:
        return []
    ok = np.isfinite(mjd)
    out = np.full(mjd.shape, "", dtype=object)
    if ok.any():
        out[ok] = Time(mjd[ok], format="mjd", scale="utc").isot
    return [s[:19] for s in out]


def lightcurve_figure(ts, *, title: str | None = None, fold: float | None = None):
    """A plotly figure of a light curve from :func:`obsdb.lightcurves.get`.

    Parameters
    ----------
    ts : astropy.timeseries.TimeSeries
    title : str, optional
        Default: the source (and target) with its position.
    fold : float, optional
        Period in days: plot against phase (``ts`` gets a ``phase`` column if it has
        none; see :func:`obsdb.lightcurves.add_phase`).

    Returns
    -------
    plotly.graph_objects.Figure
        One scatter trace per filter, in the order the filters first appear.
    """
    import plotly.graph_objects as go

    from obsdb.lightcurves.core import add_phase

    if fold is not None and ("phase" not in ts.colnames or ts.meta.get("fold", {}).get("period_days") != fold):
        add_phase(ts, fold)
    meta = ts.meta
    mjd = _values(ts["mjd"]).astype(float)
    x_all = _values(ts["phase"]).astype(float) if fold is not None else mjd
    mag = _values(ts["mag"]).astype(float)
    err = np.nan_to_num(_values(ts["mag_err"]).astype(float), nan=0.0)
    limit = _values(ts["is_upper_limit"]).astype(bool)
    flagged = _values(ts["flagged"]).astype(bool)
    flags = _values(ts["flags"]).astype(int)
    filters = _values(ts["filter"]).astype(str) if len(ts) else np.array([], dtype=str)
    files = _values(ts["file"]).astype(str) if len(ts) else np.array([], dtype=str)
    airmass = _values(ts["airmass"]).astype(float)
    fwhm = _values(ts["fwhm"]).astype(float)
    frame = _values(ts["frame_id"]).astype(int)
    iso = _iso_times(mjd)

    fig = go.Figure()
    seen: list[str] = []
    for f in filters:
        if f not in seen:
            seen.append(f)
    for k, name in enumerate(seen):
        sel = np.flatnonzero(filters == name)
        symbols = np.where(limit[sel], _SYMBOL_LIMIT, np.where(flagged[sel], _SYMBOL_FLAGGED, _SYMBOL_CLEAN))
        kinds = np.where(limit[sel], "upper limit", np.where(flagged[sel], "flagged", "measurement"))
        custom = [[iso[i], _esc(files[i]), _fmt(airmass[i], 3), _fmt(fwhm[i], 2), ", ".join(describe(flags[i])) or "none",
                   int(frame[i]), kinds[j], _fmt(mjd[i], 6)] for j, i in enumerate(sel)]
        fig.add_trace(go.Scatter(
            x=x_all[sel], y=mag[sel], mode="markers", name=_esc(name) if name else "(no filter)",
            marker=dict(color=_colour(name, k), symbol=list(symbols), size=7,
                        line=dict(width=1, color=_colour(name, k))),
            error_y=dict(type="data", array=np.where(limit[sel], 0.0, err[sel]), visible=True, thickness=1, width=0),
            customdata=custom,
            hovertemplate=("<b>%{customdata[6]}</b> " + _esc(name) + " %{y:.4f} mag<br>"
                           "MJD %{customdata[7]} (%{customdata[0]} UTC)" + ("<br>phase %{x:.4f}" if fold else "")
                           + "<br>%{customdata[1]}<br>airmass %{customdata[2]}, FWHM %{customdata[3]}\"<br>"
                           "flags: %{customdata[4]}<br>frame %{customdata[5]}<extra></extra>"),
        ))
    who = f"source {meta.get('source_id')}"
    if meta.get("target"):
        who = f"{meta['target']} ({who})"
    default_title = f"{who} at RA {meta.get('source_ra', float('nan')):.6f} Dec {meta.get('source_dec', float('nan')):+.6f}"
    if fold is not None:
        default_title += f", folded at P = {fold:.6g} d"
    fig.update_layout(
        title=dict(text=_esc(title or default_title)),
        xaxis_title=("phase" if fold is not None else "MJD (UTC, mid-exposure)"),
        yaxis=dict(title="magnitude", autorange="reversed"),
        legend_title_text="filter", template="plotly_white", hovermode="closest",
        annotations=[dict(text="● measurement   ✕ flagged   ▽ upper limit (forced, S/N < 3)", showarrow=False,
                          xref="paper", yref="paper", x=0, y=1.06, xanchor="left", font=dict(size=11))],
    )
    return fig


def _esc(text: str) -> str:
    """Text for plotly's HTML-like labels: <, > and & escaped (quotes are fine)."""
    return html.escape(str(text), quote=False)


def _fmt(value: float, digits: int) -> str:
    return "" if not np.isfinite(value) else f"{value:.{digits}f}"


def period_figure(result, ts):
    """Periodogram and the light curve folded at the best period, one page.

    Parameters
    ----------
    result : obsdb.lightcurves.period.PeriodResult
    ts : astropy.timeseries.TimeSeries
        The light curve the period was found in.

    Returns
    -------
    plotly.graph_objects.Figure
        Periodogram (one trace) above the folded light curve (one trace per filter).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.14, subplot_titles=(
        f"Lomb-Scargle periodogram, filter {_esc(result.filter)} ({result.n_points} points)",
        f"folded at P = {result.period:.7g} d (FAP {result.false_alarm_probability:.2g})"))
    fig.add_trace(go.Scatter(x=1.0 / result.frequencies, y=result.powers, mode="lines", name="power",
                             line=dict(color="#444", width=1),
                             hovertemplate="P %{x:.6f} d<br>power %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.update_xaxes(type="log", title_text="period (d)", row=1, col=1)
    fig.update_yaxes(title_text="power", row=1, col=1)
    folded = lightcurve_figure(ts, fold=result.period)
    for trace in folded.data:
        fig.add_trace(trace, row=2, col=1)
    fig.update_xaxes(title_text="phase", row=2, col=1)
    fig.update_yaxes(title_text="magnitude", autorange="reversed", row=2, col=1)
    fig.update_layout(template="plotly_white", height=900, title=dict(text=_esc(
        f"source {ts.meta.get('source_id')}: best period {result.period:.7g} d")))
    return fig


def write_html(fig, path: str | Path) -> Path:
    """Write a self-contained HTML page (plotly.js embedded, no network needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True, config={"responsive": True})
    return path
