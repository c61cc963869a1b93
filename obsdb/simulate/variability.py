"""Light-curve models of the simulated variable stars.

Every model returns the magnitude change ``delta`` to add to the star's catalog
(reference) magnitude in a band. What the reference magnitude means depends on the type:

* ``constant``: the magnitude itself (delta = 0).
* ``pulsator``: the phase-averaged magnitude; delta runs from -A/2 (maximum light) to
  +A/2 with A = ``amplitude`` (peak to peak, g band; r gets ``amp_ratio_r`` times it).
* ``eclipsing``: the out-of-eclipse magnitude; delta >= 0.
* ``transit``: the out-of-transit magnitude; delta >= 0.
* ``trend``: the magnitude at ``epoch``; delta = slope * (mjd - epoch).

Parameters per star (the columns of ``truth/stars.csv``): ``period`` (days),
``epoch`` (MJD of maximum light, primary eclipse centre, mid-transit or trend zero
point), ``amplitude`` (mag, peak to peak), ``shape`` (``"rrab"`` or ``"sine"``),
``rise_fraction`` (rrab), ``depth`` (fractional flux loss at the centre of the primary
eclipse or transit), ``secondary_depth`` (fractional loss at phase 0.5), ``duration``
(days, first to last contact), ``slope`` (mag/day), ``amp_ratio_r`` (r-band change
relative to g).
"""

from __future__ import annotations

import numpy as np

VARIABLE_KINDS = ("constant", "pulsator", "eclipsing", "transit", "trend")


def _phase(mjd: np.ndarray, epoch: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Phase in [0, 1) counted from ``epoch``."""
    return np.mod((mjd - epoch) / period, 1.0)


def pulsator_delta(mjd, epoch, period, amplitude, shape, rise_fraction):
    """Magnitude change of a radial pulsator.

    ``rrab`` is RR-Lyrae-like: a fast rise (``rise_fraction`` of the period) to maximum
    light at ``epoch``, then a slow decline. ``sine`` is a sinusoid with maximum at
    ``epoch``. Both shapes average to zero over a cycle, so the reference magnitude is
    the phase-averaged magnitude.
    """
    phi = _phase(mjd, epoch, period)
    sine = 0.5 * (1.0 - np.cos(2.0 * np.pi * phi))  # 0 at maximum, 1 at minimum
    rise = np.clip(rise_fraction, 1e-3, 0.5)
    decline_len = 1.0 - rise
    # Decline: half a cosine from 0 to 1 over 1-rise; rise: half a cosine back to 0.
    x_dec = np.clip(phi / decline_len, 0.0, 1.0)
    x_rise = np.clip((phi - decline_len) / rise, 0.0, 1.0)
    rr = np.where(
        phi < decline_len,
        0.5 * (1.0 - np.cos(np.pi * x_dec)),
        0.5 * (1.0 + np.cos(np.pi * x_rise)),
    )
    f = np.where(shape == "rrab", rr, sine)
    # Both shapes have a phase average of exactly 1/2.
    return amplitude * (f - 0.5)


def _bell(dt, duration):
    """Eclipse profile: 1 at centre, 0 outside +-duration/2, smooth (cosine squared)."""
    x = np.clip(np.abs(dt) / (0.5 * duration), 0.0, 1.0)
    return np.where(x < 1.0, np.cos(0.5 * np.pi * x) ** 2, 0.0)


def _centred(mjd, epoch, period, offset_phase=0.0):
    """Time from the nearest event at ``epoch + (n + offset_phase) * period``."""
    x = (mjd - epoch) / period - offset_phase
    return (x - np.round(x)) * period


def eclipsing_delta(mjd, epoch, period, depth, secondary_depth, duration):
    """Magnitude change of a detached eclipsing binary.

    Primary eclipses centred at ``epoch + n * period`` remove up to ``depth`` of the
    flux, secondary ones at phase 0.5 up to ``secondary_depth``; both last ``duration``
    days with a smooth (cosine-squared) profile.
    """
    loss = depth * _bell(_centred(mjd, epoch, period), duration)
    loss = loss + secondary_depth * _bell(_centred(mjd, epoch, period, 0.5), duration)
    return -2.5 * np.log10(1.0 - np.clip(loss, 0.0, 0.999))


def transit_delta(mjd, epoch, period, depth, duration, ingress_fraction=0.15):
    """Magnitude change of a planetary transit: a trapezoid in flux.

    Mid-transit at ``epoch + n * period``; first-to-last contact lasts ``duration``;
    ingress and egress each take ``ingress_fraction`` of it; the flat bottom removes
    ``depth`` of the flux (no limb darkening).
    """
    dt = np.abs(_centred(mjd, epoch, period))
    half = 0.5 * duration
    ingress = ingress_fraction * duration
    frac = np.clip((half - dt) / ingress, 0.0, 1.0)
    return -2.5 * np.log10(1.0 - depth * frac)


def trend_delta(mjd, epoch, slope):
    """Magnitude change of a slow linear trend, zero at ``epoch``."""
    return slope * (mjd - epoch)


def delta_mag(params: dict[str, np.ndarray], band: str, mjd) -> np.ndarray:
    """Magnitude change of every star in ``params`` at ``mjd``.

    Parameters
    ----------
    params : dict of numpy.ndarray
        Per-star columns (``var_type``, ``period``, ``epoch``, ... as in the module
        docstring), all of one length N.
    band : str
        ``"g"`` or ``"r"``.
    mjd : float or numpy.ndarray
        Times; broadcast against the N stars (pass shape (N,) or (N, M) with the star
        axis first).

    Returns
    -------
    numpy.ndarray
        Magnitude changes, broadcast shape of the stars and ``mjd``.
    """
    mjd = np.asarray(mjd, dtype=float)
    kind = np.asarray(params["var_type"])
    extra = (1,) * max(mjd.ndim - 1, 0)

    def col(name):
        return np.asarray(params[name]).reshape(kind.shape + extra)

    k = kind.reshape(kind.shape + extra)
    # Guard the division by period for stars without one (constants, trends).
    period = np.where(np.asarray(col("period"), dtype=float) > 0, col("period"), 1.0)
    epoch = np.asarray(col("epoch"), dtype=float)
    out = np.zeros(np.broadcast_shapes(k.shape, mjd.shape))
    puls = pulsator_delta(mjd, epoch, period, col("amplitude"), col("shape"),
                          col("rise_fraction"))
    ecl = eclipsing_delta(mjd, epoch, period, col("depth"), col("secondary_depth"),
                          np.maximum(col("duration"), 1e-6))
    tra = transit_delta(mjd, epoch, period, col("depth"), np.maximum(col("duration"), 1e-6))
    tre = trend_delta(mjd, epoch, col("slope"))
    out = np.where(k == "pulsator", puls, out)
    out = np.where(k == "eclipsing", ecl, out)
    out = np.where(k == "transit", tra, out)
    out = np.where(k == "trend", tre, out)
    if band == "r":
        out = out * col("amp_ratio_r")
    elif band != "g":
        raise ValueError(f"band must be 'g' or 'r', got {band!r}")
    return out
