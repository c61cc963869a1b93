"""Point-source limiting magnitudes of a frame from its background noise."""

from __future__ import annotations

import math

__all__ = ["limiting_magnitudes"]


def limiting_magnitudes(sky_rms_per_pixel: float, radius_px: float, zero_point: float,
                        exptime_s: float | None = None, *, sigmas=(3, 5, 10),
                        aperture_correction: float = 1.0) -> dict[int, float]:
    """Magnitudes of the point sources detected at ``sigmas`` in a circular aperture.

    A star is at n sigma when its aperture flux equals n times the background noise in
    the aperture, ``n * sky_rms * sqrt(pi r^2)`` (the star's own Poisson noise is
    negligible at the limit; the local-sky error is left out, as it shrinks with the
    annulus size). Then::

        m_lim = zero_point - 2.5 log10(F_lim * aperture_correction [/ exptime_s])

    Parameters
    ----------
    sky_rms_per_pixel : float
        Background noise per pixel (ADU), e.g. ``SkyModel.rms_level``.
    radius_px : float
        Radius of the reported aperture (px).
    zero_point : float
        Magnitude of a source of 1 ADU. **Per exposure** when ``exptime_s`` is None
        (the frame's zero point for ``inst_mag = -2.5 log10(flux_adu)``, as obsdb's
        callers pass it); **per second** when ``exptime_s`` is given, and the flux is
        then divided by it.
    exptime_s : float, optional
        Exposure time (s), only for a per-second zero point.
    sigmas : sequence of int
        Detection significances.
    aperture_correction : float
        Factor from the aperture flux to the flux the zero point refers to (>= 1 when
        the zero point is for total fluxes; 1 when it was fitted on the same aperture).

    Returns
    -------
    dict of int to float
        ``{sigma: limiting magnitude}``.

    Raises
    ------
    ValueError
        If the rms, radius, exposure time, a sigma or the aperture correction is not
        positive, or the zero point is not finite.

    Examples
    --------
    >>> lim = limiting_magnitudes(10.0, 3.0, 25.0)
    >>> round(lim[5], 3)
    18.938
    """
    if not (math.isfinite(sky_rms_per_pixel) and sky_rms_per_pixel > 0):
        raise ValueError(f"sky_rms_per_pixel must be > 0, got {sky_rms_per_pixel}")
    if not (math.isfinite(radius_px) and radius_px > 0):
        raise ValueError(f"radius_px must be > 0, got {radius_px}")
    if not math.isfinite(zero_point):
        raise ValueError(f"zero_point must be finite, got {zero_point}")
    if exptime_s is not None and not exptime_s > 0:
        raise ValueError(f"exptime_s must be > 0 or None, got {exptime_s}")
    if not aperture_correction > 0:
        raise ValueError(f"aperture_correction must be > 0, got {aperture_correction}")
    sigmas = list(sigmas)
    if not sigmas or any(not s > 0 for s in sigmas):
        raise ValueError(f"sigmas must be positive numbers, got {sigmas}")
    noise = sky_rms_per_pixel * math.sqrt(math.pi) * radius_px
    scale = aperture_correction / (exptime_s if exptime_s is not None else 1.0)
    return {int(s) if float(s).is_integer() else s: zero_point - 2.5 * math.log10(s * noise * scale)
            for s in sigmas}
