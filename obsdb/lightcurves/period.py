"""Period search: a Lomb-Scargle periodogram (astropy) of one light curve.

The periodogram is the floating-mean, error-weighted generalized Lomb-Scargle of
astropy's :class:`~astropy.timeseries.LombScargle`, over a frequency grid from
``1 / max_period`` to ``1 / min_period`` with ``samples_per_peak`` points across each
peak (of width ``1 / baseline``). The best peak is then refined on a grid 50 times finer
around it, so the period is not limited by the grid step. The false-alarm probability
is astropy's Baluev (2008) approximation for the highest peak of the searched band:
the chance that noise alone, sampled like these data, gives a peak this high.

Only clean detections enter: no upper limits, no quality-flagged points. Times are
BJD_TDB when every point has one, else MJD (UTC); one filter at a time (by default the
one with the most points), since filters differ in mean and amplitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from obsdb.lightcurves.core import fold_time

__all__ = ["PeriodResult", "find_period"]

#: Fewest clean points a period search accepts.
MIN_POINTS = 10


@dataclass(frozen=True)
class PeriodResult:
    """The outcome of :func:`find_period`.

    Attributes
    ----------
    period : float
        Best period, days.
    frequency : float
        1 / period, cycles per day.
    power : float
        Normalized (``standard``) power of the best peak, 0 ... 1.
    false_alarm_probability : float
    filter : str
    n_points : int
    baseline : float
        Days between the first and last point.
    time_column : str
        ``bjd_tdb`` or ``mjd``.
    min_period, max_period : float
        The searched band, days.
    peaks : list of (period, power)
        The highest distinct peaks, best first (at most five).
    frequencies, powers : numpy.ndarray
        The periodogram.
    amplitude : float
        Semi-amplitude (mag) of the best-fitting sinusoid at ``period``.
    """

    period: float
    frequency: float
    power: float
    false_alarm_probability: float
    filter: str
    n_points: int
    baseline: float
    time_column: str
    min_period: float
    max_period: float
    amplitude: float
    peaks: list[tuple[float, float]] = field(default_factory=list)
    frequencies: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    powers: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    def as_dict(self) -> dict:
        """The scalar results as plain Python values."""
        return {
            "filter": self.filter, "n_points": self.n_points, "period": self.period, "frequency": self.frequency,
            "power": self.power, "false_alarm_probability": self.false_alarm_probability,
            "amplitude": self.amplitude, "baseline": self.baseline, "time_column": self.time_column,
            "min_period": self.min_period, "max_period": self.max_period,
        }


def _clean(ts, filter_name: str | None):
    flt = np.asarray(ts["filter"]).astype(str) if len(ts) else np.array([], dtype=str)
    mag = np.asarray(getattr(ts["mag"], "value", ts["mag"]), dtype=float)
    err = np.asarray(getattr(ts["mag_err"], "value", ts["mag_err"]), dtype=float)
    good = (~np.asarray(ts["is_upper_limit"], dtype=bool) & ~np.asarray(ts["flagged"], dtype=bool)
            & np.isfinite(mag) & np.isfinite(err) & (err > 0))
    if filter_name is None:
        names, counts = np.unique(flt[good], return_counts=True)
        if names.size == 0:
            raise ValueError("the light curve has no clean detections to search for a period")
        filter_name = str(names[np.argmax(counts)])
    good &= flt == filter_name
    return good, filter_name, mag, err


def find_period(ts, *, filter: str | None = None, min_period: float | None = None,
                max_period: float | None = None, samples_per_peak: int = 10) -> PeriodResult:
    """Lomb-Scargle period of one filter of a light curve.

    Parameters
    ----------
    ts : astropy.timeseries.TimeSeries
        From :func:`obsdb.lightcurves.get`.
    filter : str, optional
        The filter to use (default: the one with the most clean points).
    min_period : float, optional
        Shortest period searched, days (default: twice the median time step, at least
        5 minutes).
    max_period : float, optional
        Longest period searched, days (default: the baseline).
    samples_per_peak : int
        Grid density (frequency points per peak width ``1 / baseline``).

    Returns
    -------
    PeriodResult

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_POINTS` clean points, or an empty or inverted band.
    """
    from astropy.timeseries import LombScargle

    good, filter_name, mag, err = _clean(ts, filter)
    n = int(good.sum())
    if n < MIN_POINTS:
        raise ValueError(f"{n} clean points in filter {filter_name!r}; a period search needs at least {MIN_POINTS}")
    t_all, time_column = fold_time(ts)
    t, y, dy = t_all[good], mag[good], err[good]
    order = np.argsort(t)
    t, y, dy = t[order], y[order], dy[order]
    baseline = float(t[-1] - t[0])
    if baseline <= 0:
        raise ValueError("all points are at the same time; no period can be searched")
    if min_period is None:
        steps = np.diff(t)
        steps = steps[steps > 0]
        min_period = max(2.0 * float(np.median(steps)) if steps.size else baseline / 10, 5.0 / 1440.0)
    if max_period is None:
        max_period = baseline
    min_period, max_period = float(min_period), float(max_period)
    if not (math.isfinite(min_period) and math.isfinite(max_period) and 0 < min_period < max_period):
        raise ValueError(f"the period band must satisfy 0 < min_period < max_period, got {min_period} .. {max_period}")
    ls = LombScargle(t, y, dy)
    f_lo, f_hi = 1.0 / max_period, 1.0 / min_period
    df = 1.0 / (baseline * max(int(samples_per_peak), 1))
    n_freq = int(math.ceil((f_hi - f_lo) / df)) + 1
    if n_freq > 5_000_000:
        raise ValueError(f"the band {min_period} .. {max_period} d needs {n_freq} frequencies at this baseline; "
                         "narrow it with min_period / max_period")
    freq = np.linspace(f_lo, f_hi, n_freq)
    power = ls.power(freq)
    best = int(np.nanargmax(power))
    # Refine: 50 times finer around the best grid point.
    fine = np.linspace(max(freq[best] - df, f_lo), min(freq[best] + df, f_hi), 101)
    fine_power = ls.power(fine)
    k = int(np.nanargmax(fine_power))
    f_best, p_best = float(fine[k]), float(fine_power[k])
    fap = float(ls.false_alarm_probability(p_best, minimum_frequency=f_lo, maximum_frequency=f_hi,
                                           samples_per_peak=samples_per_peak))
    model = ls.model(np.linspace(0, 1.0 / f_best, 200, endpoint=False) + t[0], f_best)
    amplitude = float((model.max() - model.min()) / 2.0)
    return PeriodResult(
        period=1.0 / f_best, frequency=f_best, power=p_best, false_alarm_probability=fap, filter=filter_name,
        n_points=n, baseline=baseline, time_column=time_column, min_period=min_period, max_period=max_period,
        amplitude=amplitude, peaks=_peaks(freq, power, 1.0 / baseline), frequencies=freq, powers=power,
    )


def _peaks(freq: np.ndarray, power: np.ndarray, width: float, count: int = 5) -> list[tuple[float, float]]:
    """The highest local maxima at least ``width`` (a peak width, 1 / baseline) apart, best first."""
    if power.size < 3:
        return []
    interior = np.flatnonzero((power[1:-1] >= power[:-2]) & (power[1:-1] >= power[2:])) + 1
    chosen: list[int] = []
    for i in interior[np.argsort(power[interior])[::-1]]:
        if all(abs(freq[i] - freq[j]) > width for j in chosen):
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return [(1.0 / float(freq[i]), float(power[i])) for i in chosen]
