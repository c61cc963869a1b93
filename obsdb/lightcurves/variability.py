"""Variability indices of every source, computed in the database in one query.

For each source and filter, over its clean measurements (a magnitude with a positive
error, not an upper limit, no quality flag of :data:`~obsdb.lightcurves.core.QUALITY_FLAGS`),
ordered by time (``m_i`` magnitudes, ``s_i`` errors, ``w_i = 1 / s_i^2``, ``n`` points):

- ``mean_mag``: weighted mean ``mbar = sum(w m) / sum(w)``.
- ``wstd``: weighted standard deviation ``sqrt(sum(w (m - mbar)^2) / sum(w))`` (mag).
- ``chi2_dof``: ``sum(w (m - mbar)^2) / (n - 1)``: about 1 for a constant star whose
  errors are right; large for a variable (or for underestimated errors).
- ``stetson_j``: Stetson's (1996) J over consecutive pairs in time,
  ``delta_i = sqrt(n / (n - 1)) (m_i - mbar) / s_i``, ``P_k = delta_k delta_{k+1}``,
  ``J = mean(sign(P_k) sqrt(|P_k|))``: near 0 for noise, large and positive when
  neighbours in time deviate together (a variable sampled faster than it changes),
  and insensitive to a single outlier.
- ``von_neumann``: the von Neumann ratio ``eta = (sum (m_{i+1} - m_i)^2 / (n - 1)) / var(m)``:
  about 2 for uncorrelated noise, small for a smooth variable.
- ``amplitude``: peak to peak, ``max(m) - min(m)`` (mag).

The whole computation is SQL (aggregates and window functions over ``v_lightcurve``):
one statement for all sources, whatever their number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from obsdb.lightcurves.core import QUALITY_FLAGS, checked_text

__all__ = ["SORT_KEYS", "VARIABILITY_COLUMNS", "variability"]

VARIABILITY_COLUMNS = ("rank", "source_id", "ra", "dec", "filter", "n", "mean_mag", "wstd", "chi2_dof", "stetson_j",
                       "von_neumann", "amplitude", "targets")

#: Sort key -> ORDER BY clause (a fixed list: nothing a user types reaches the SQL text).
SORT_KEYS = {
    "stetson_j": "stetson_j DESC NULLS LAST",
    "chi2_dof": "chi2_dof DESC NULLS LAST",
    "wstd": "wstd DESC NULLS LAST",
    "von_neumann": "von_neumann ASC NULLS LAST",
    "amplitude": "amplitude DESC NULLS LAST",
}

_SQL = """
WITH good AS (
  SELECT l.source_id, l.filter, l.mjd AS t, l.mag, l.mag_err, 1.0 / (l.mag_err * l.mag_err) AS w
  FROM v_lightcurve AS l
  WHERE l.mag IS NOT NULL AND l.mag_err > 0 AND NOT l.is_upper_limit AND (l.flags & :mask) = 0
    AND l.filter IS NOT NULL {filter_clause}
), agg AS (
  SELECT source_id, filter, count(*) AS n, sum(w * mag) / sum(w) AS wmean, var_samp(mag) AS var,
         max(mag) - min(mag) AS amplitude
  FROM good
  GROUP BY source_id, filter
  HAVING count(*) >= :min_points
), dev AS (
  SELECT g.source_id, g.filter, g.t, g.w, g.mag - a.wmean AS resid,
         sqrt(a.n::float8 / (a.n - 1)) * (g.mag - a.wmean) / g.mag_err AS delta,
         g.mag - lag(g.mag) OVER (PARTITION BY g.source_id, g.filter ORDER BY g.t) AS step
  FROM good AS g JOIN agg AS a USING (source_id, filter)
), pairs AS (
  SELECT d.*, d.delta * lag(d.delta) OVER (PARTITION BY d.source_id, d.filter ORDER BY d.t) AS p
  FROM dev AS d
), stats AS (
  SELECT p.source_id, p.filter,
         sqrt(sum(p.w * p.resid * p.resid) / sum(p.w)) AS wstd,
         sum(p.w * p.resid * p.resid) AS chi2,
         avg(sign(p.p) * sqrt(abs(p.p))) AS stetson_j,
         sum(p.step * p.step) AS sum_step2
  FROM pairs AS p
  GROUP BY p.source_id, p.filter
), final AS (
  SELECT a.source_id, s.ra, s.dec, a.filter, a.n, a.wmean AS mean_mag, st.wstd,
         st.chi2 / (a.n - 1) AS chi2_dof, st.stetson_j,
         CASE WHEN a.var > 0 THEN st.sum_step2 / (a.n - 1) / a.var END AS von_neumann,
         a.amplitude,
         (SELECT string_agg(t.name, ',' ORDER BY t.name) FROM targets AS t WHERE t.source_id = a.source_id) AS targets
  FROM agg AS a
  JOIN stats AS st USING (source_id, filter)
  JOIN sources AS s ON s.id = a.source_id
)
SELECT row_number() OVER (ORDER BY {order}, source_id, filter) AS rank, final.*
FROM final
ORDER BY {order}, source_id, filter
{limit_clause}
"""


def variability(session: Session, *, filters: Sequence[str] | str | None = None, min_points: int = 10,
                top: int | None = None, sort: str = "stetson_j") -> list[dict[str, Any]]:
    """Variability indices of every source (per filter), most variable first.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    filters : str or sequence of str, optional
        Only these filters.
    min_points : int
        Sources with fewer clean points in a filter are left out (>= 3).
    top : int, optional
        Only the first ``top`` rows (> 0).
    sort : str
        One of :data:`SORT_KEYS` (``von_neumann`` sorts ascending, the others descending).

    Returns
    -------
    list of dict
        Keys :data:`VARIABILITY_COLUMNS`; ``rank`` starts at 1.

    Raises
    ------
    ValueError
        For an unknown sort key, ``min_points < 3``, ``top < 1`` or a filter name with a
        NUL character.
    """
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}: choose one of {', '.join(SORT_KEYS)}")
    min_points = int(min_points)
    if min_points < 3:
        raise ValueError(f"min_points must be at least 3, got {min_points}")
    params: dict[str, Any] = {"mask": QUALITY_FLAGS, "min_points": min_points}
    if isinstance(filters, str):
        filters = [filters]
    filter_clause = ""
    if filters:
        filter_clause = "AND l.filter = ANY(CAST(:filters AS text[]))"
        params["filters"] = [checked_text(f, "filter name") for f in filters]
    limit_clause = ""
    if top is not None:
        top = int(top)
        if top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        limit_clause = "LIMIT :top"
        params["top"] = top
    sql = _SQL.format(filter_clause=filter_clause, order=SORT_KEYS[sort], limit_clause=limit_clause)
    rows = session.execute(text(sql), params).mappings().all()
    return [{k: (float(v) if k not in ("rank", "source_id", "n", "filter", "targets") and v is not None else v)
             for k, v in r.items()} for r in rows]
