"""Atmospheric scintillation noise of bright-star photometry.

Young (1967, AJ 72, 747) gives the relative flux scatter of a star seen through a
telescope of aperture diameter D (cm) at airmass X from an altitude h (m), integrated
over t seconds::

    sigma = C * D^(-2/3) * X^1.75 * exp(-h / H) * (2 t)^(-1/2),   C = 0.09, H = 8000 m

(the form of Dravins et al. 1998, PASP 110, 610). Osborn et al. (2015, MNRAS 452, 1707)
compared it with measured scintillation at several observatories and found the formula
underestimates the median by a factor of about 1.5; pass ``correction=1.5`` for that
site-averaged empirical value.
"""

from __future__ import annotations

import math

__all__ = ["scintillation_sigma"]


def scintillation_sigma(aperture_diameter_m: float, airmass: float, altitude_m: float, exptime_s: float, *,
                        coefficient: float = 0.09, scale_height_m: float = 8000.0,
                        correction: float = 1.0) -> float:
    """Relative flux sigma from scintillation (Young 1967; Osborn et al. 2015 correction).

    Parameters
    ----------
    aperture_diameter_m : float
        Telescope aperture diameter (m); the formula takes centimetres.
    airmass : float
        Airmass of the observation (>= 1).
    altitude_m : float
        Observatory altitude above sea level (m).
    exptime_s : float
        Exposure time (s).
    coefficient : float
        Young's constant C (0.09 for D in cm).
    scale_height_m : float
        Atmospheric scale height H of the turbulence (m).
    correction : float
        Multiplier; Osborn et al. (2015) found ~1.5 for the median of real sites.

    Returns
    -------
    float
        Relative sigma (fraction of the flux) to pass as ``scintillation`` to
        :func:`obsdb.photometry.apertures.measure_apertures`.

    Raises
    ------
    ValueError
        If the diameter or exposure time is not positive, the airmass is below 1, or
        the coefficient, scale height or correction is not positive.

    Examples
    --------
    >>> round(scintillation_sigma(0.5, 1.5, 2000.0, 60.0), 5)
    0.00096
    """
    if not aperture_diameter_m > 0:
        raise ValueError(f"aperture_diameter_m must be > 0, got {aperture_diameter_m}")
    if not airmass >= 1.0:
        raise ValueError(f"airmass must be >= 1, got {airmass}")
    if not exptime_s > 0:
        raise ValueError(f"exptime_s must be > 0, got {exptime_s}")
    if not math.isfinite(altitude_m):
        raise ValueError(f"altitude_m must be finite, got {altitude_m}")
    for name, value in (("coefficient", coefficient), ("scale_height_m", scale_height_m),
                        ("correction", correction)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    diameter_cm = 100.0 * aperture_diameter_m
    return float(correction * coefficient * diameter_cm ** (-2.0 / 3.0) * airmass**1.75
                 * math.exp(-altitude_m / scale_height_m) / math.sqrt(2.0 * exptime_s))
