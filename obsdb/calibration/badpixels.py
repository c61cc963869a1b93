"""Bad pixels found in the masters themselves: hot, dead (low response), unstable.

A master's ``mask`` is a uint8 of the flags below, ORed; any non-zero value is bad. The
thresholds are robust (median and normalised MAD over the image), so a few thousand bad
pixels do not move them.
"""

from __future__ import annotations

import numpy as np
from astropy.stats import mad_std

__all__ = ["HOT", "LOW_RESPONSE", "UNSTABLE", "NO_DATA", "describe_flags", "find_dead_pixels",
           "find_hot_pixels", "find_unstable_pixels", "robust_stats"]

#: Dark current far above the rest (from a master dark rate).
HOT = 1
#: Response far below the rest, dead pixels included (from a master flat).
LOW_RESPONSE = 2
#: Large scatter among the input frames of a master.
UNSTABLE = 4
#: No input value survived the combination.
NO_DATA = 8

_NAMES = {HOT: "hot", LOW_RESPONSE: "low response", UNSTABLE: "unstable", NO_DATA: "no data"}


def describe_flags(value: int) -> list[str]:
    """Names of the bad-pixel flags set in ``value``."""
    return [name for bit, name in _NAMES.items() if value & bit]


def robust_stats(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Median and normalised MAD of the finite, unmasked pixels of ``image``.

    Large images are subsampled on a regular grid (about 10^6 pixels): the statistics of a
    master do not need every pixel and this keeps a 4096x4096 master fast.
    """
    good = np.isfinite(image)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)
    step = max(1, int(np.sqrt(image.size / 1e6)))
    values = image[::step, ::step][good[::step, ::step]]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.median(values)), float(mad_std(values))


def find_hot_pixels(dark_rate: np.ndarray, *, nsigma: float = 5.0, min_rate: float | None = None,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels whose dark current is far above the rest.

    Parameters
    ----------
    dark_rate : ndarray
        Master dark current (ADU/s).
    nsigma : float, optional
        Threshold above the median, in units of the robust standard deviation.
    min_rate : float, optional
        Also require at least this rate (ADU/s): with a very clean master the robust
        deviation can be tiny and harmless pixels would pass ``nsigma``.
    mask : bool ndarray, optional
        Pixels left out of the statistics.

    Returns
    -------
    ndarray of bool
        True where hot.
    """
    median, sigma = robust_stats(dark_rate, mask)
    hot = dark_rate > median + nsigma * sigma
    if min_rate is not None:
        hot &= dark_rate > min_rate
    return hot


def find_dead_pixels(flat: np.ndarray, *, low: float = 0.5, high: float | None = None) -> np.ndarray:
    """Pixels of a normalised flat (median 1) whose response is below ``low`` (or above ``high``).

    Returns
    -------
    ndarray of bool
        True where the response is out of range or not finite.
    """
    if not 0 <= low < 1:
        raise ValueError(f"low must be in [0, 1) for a flat normalised to 1, got {low}")
    with np.errstate(invalid="ignore"):
        bad = ~(flat >= low)
        if high is not None:
            bad |= flat > high
    return bad


def find_unstable_pixels(scatter: np.ndarray, *, nsigma: float = 5.0,
                         mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels whose scatter among the input frames of a master is far above the rest.

    Parameters
    ----------
    scatter : ndarray
        Per-pixel standard deviation of the inputs (``CombineResult.std``).
    nsigma : float, optional
        Threshold above the median scatter, in units of the robust deviation of the
        scatter map. The scatter of N values itself scatters by about 1/sqrt(2(N-1)), so
        with 5 frames the threshold sits near 3x the typical scatter and a pixel
        that is merely noisy by chance does not reach it.
    mask : bool ndarray, optional
        Pixels left out of the statistics.

    Returns
    -------
    ndarray of bool
    """
    median, sigma = robust_stats(scatter, mask)
    with np.errstate(invalid="ignore"):
        return scatter > median + nsigma * sigma
