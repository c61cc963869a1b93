"""Light curves for astronomers: tables, exports, statistics, periods and plots.

>>> import obsdb.lightcurves as lc
>>> ts = lc.get(sessions, ra=150.1234, dec=20.0567, filters=["V"])   # doctest: +SKIP
>>> ts["mag"], ts.meta["source_id"]                                   # doctest: +SKIP

- :func:`get`: one source's light curve as an astropy ``TimeSeries`` (by position, source
  id or target name), with units and metadata (:mod:`obsdb.lightcurves.core`).
- :func:`cone`: sources around a position (SQL function ``obsdb_source_cone``).
- :func:`render_table`: table, CSV, JSON, ECSV or VOTable (:mod:`obsdb.lightcurves.export`).
- :func:`variability`: variability indices of every source in one SQL statement.
- :func:`find_period`: Lomb-Scargle period with false-alarm probability.
- :func:`lightcurve_figure`, :func:`period_figure`, :func:`write_html`: plotly pages.
- :func:`write_night_report`: one HTML page per observing night.

Heavy imports (astropy tables, plotly) happen inside the functions that need them.
"""

from obsdb.lightcurves.core import (
    LC_COLUMNS,
    QUALITY_FLAGS,
    NoSourceFound,
    SourceMatch,
    add_phase,
    cone,
    get,
    parse_time,
    resolve_source,
)
from obsdb.lightcurves.export import FORMATS, format_for_path, render_rows, render_table, table_rows
from obsdb.lightcurves.night_report import NightReport, night_report, night_report_html, write_night_report
from obsdb.lightcurves.period import PeriodResult, find_period
from obsdb.lightcurves.plots import lightcurve_figure, period_figure, write_html
from obsdb.lightcurves.variability import SORT_KEYS, VARIABILITY_COLUMNS, variability

__all__ = [
    "FORMATS", "LC_COLUMNS", "QUALITY_FLAGS", "SORT_KEYS", "VARIABILITY_COLUMNS", "NightReport", "NoSourceFound",
    "PeriodResult", "SourceMatch", "add_phase", "cone", "find_period", "format_for_path", "get",
    "lightcurve_figure", "night_report", "night_report_html", "parse_time", "period_figure", "render_rows",
    "render_table", "resolve_source", "table_rows", "variability", "write_html", "write_night_report",
]
