"""The noise-free image of a frame: what a perfectly calibrated frame would show.

``S = sky_adu_per_pix + sum over stars of flux_i * PSF(x - x_i, y - y_i)`` in ADU, before
the flat field, with every quantity taken from the frame's truth record. The simulator
and :class:`obsdb.simulate.truth.Truth` both call these functions with the same record,
so the truth rebuilds the simulated image exactly.
"""

from __future__ import annotations

import numpy as np

from obsdb.simulate import astrometry, psf
from obsdb.simulate.records import FrameRecord
from obsdb.simulate.sky import StarTable


def star_fluxes(record: FrameRecord, stars: StarTable):
    """True positions and total fluxes of the field's stars in a light frame.

    Returns
    -------
    rows : numpy.ndarray
        Row indices into ``stars``.
    x, y : numpy.ndarray
        0-based pixel positions through the true WCS.
    flux : numpy.ndarray
        Total flux in ADU: ``exptime * 10**(-0.4 (m - ZP - C (g - r)))`` with the true
        magnitudes at mid-exposure.
    """
    if record.kind != "light":
        raise ValueError(f"{record.file} is a {record.kind} frame; stars are only in lights")
    rows = np.flatnonzero(stars["field"] == record.field)
    sub = stars.select(rows)
    x, y = astrometry.world_to_pixel(record.wcs_dict, sub["ra"], sub["dec"])
    mags = {b: sub.true_mag(b, record.mjd_mid) for b in ("g", "r")}
    m = mags[record.band]
    colour = mags["g"] - mags["r"]
    inst = m - record.true_zero_point - record.colour_term * colour
    flux = record.exptime * 10.0 ** (-0.4 * inst)
    return rows, x, y, flux


def noise_free_image(record: FrameRecord, stars: StarTable, size: int) -> np.ndarray:
    """Sky plus stars (ADU, float64, before the flat field) of any frame.

    Bias and dark frames give zeros, flats their uniform twilight level, lights the
    sky plus every star rendered with the frame's Moffat PSF.
    """
    image = np.full((size, size), record.sky_adu_per_pix, dtype=float)
    if record.kind != "light":
        return image
    _, x, y, flux = star_fluxes(record, stars)
    return psf.render_stars((size, size), x, y, flux, record.seeing_fwhm_px,
                            record.psf_beta, image=image)
