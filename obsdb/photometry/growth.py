"""Aperture radii, sky annulus, and the choice of the reported aperture.

Radii scale with the frame's FWHM so that every frame measures the same fraction of a
star's light at a given factor; fixed radii (in pixels) can be added for comparisons
across nights with different seeing.
"""

from __future__ import annotations

import numpy as np

from obsdb.photometry import flags as F

__all__ = ["choose_aperture", "default_radii", "default_annulus"]


def default_radii(fwhm: float, *, factors=(1.0, 1.5, 2.0, 3.0), fixed=()) -> np.ndarray:
    """Aperture radii (px): ``fwhm * factors`` plus ``fixed``, sorted, duplicates removed.

    Parameters
    ----------
    fwhm : float
        The frame's PSF FWHM (px).
    factors : sequence of float
        Radii in units of the FWHM. 1.0-1.5 FWHM is S/N-optimal for faint stars; 3 FWHM
        holds ~99 % of a Moffat beta=3 star, for bright stars and the curve of growth.
    fixed : sequence of float
        Extra radii in pixels.

    Returns
    -------
    numpy.ndarray
        Strictly increasing radii.

    Raises
    ------
    ValueError
        If ``fwhm`` is not a positive finite number, or a factor or fixed radius is <= 0,
        or there are no radii at all.
    """
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be a positive finite number, got {fwhm}")
    factors = np.atleast_1d(np.asarray(factors, dtype=float))
    fixed = np.atleast_1d(np.asarray(fixed, dtype=float))
    radii = np.concatenate([fwhm * factors, fixed])
    if radii.size == 0:
        raise ValueError("no radii: give at least one factor or fixed radius")
    if not (np.isfinite(radii).all() and (radii > 0).all()):
        raise ValueError(f"factors and fixed radii must be > 0, got factors {factors.tolist()}, "
                         f"fixed {fixed.tolist()}")
    # Rounded so that 1.5 * 2.0 and a fixed 3.0 count as one radius.
    return np.unique(np.round(radii, 6))


def default_annulus(fwhm: float, max_radius: float) -> tuple[float, float]:
    """Sky annulus (r_in, r_out) in px for apertures up to ``max_radius``.

    ``r_in = max(max_radius + 2, 4 FWHM)``: clear of the largest aperture, and far
    enough out that the star's own wing adds ~1e-4 of its flux per aperture pixel-area
    to the sky for a Moffat beta=3 (the same fraction for every star, so the zero point
    absorbs it). ``r_out = r_in + max(6, 2 FWHM)``: several hundred pixels, so the sky
    error adds less than the aperture's own sky noise at the S/N-optimal radius.

    Raises
    ------
    ValueError
        If ``fwhm`` or ``max_radius`` is not a positive finite number.
    """
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be a positive finite number, got {fwhm}")
    if not (np.isfinite(max_radius) and max_radius > 0):
        raise ValueError(f"max_radius must be a positive finite number, got {max_radius}")
    r_in = max(float(max_radius) + 2.0, 4.0 * float(fwhm))
    return r_in, r_in + max(6.0, 2.0 * float(fwhm))


def choose_aperture(flux, flux_err, radii, flags, *, growth_fraction: float = 0.9, bright_snr: float = 50.0,
                    min_snr: float = 3.0, min_stars: int = 3) -> int:
    """Index of the aperture to report for a frame.

    The rule, on stars with no flag at any radius other than LOW_SNR (isolated, in the
    frame, no bad, cosmic or saturated pixel):

    1. **S/N**: among faint-to-medium stars (``min_snr <= S/N < bright_snr`` at their
       best radius), the radius that maximises the median S/N. For sky-limited stars
       this is ~1-1.5 FWHM.
    2. **Floor from the curve of growth**: on the bright stars (S/N >= ``bright_snr`` in
       the largest aperture), the median of flux(r) / flux(largest); the reported
       radius is never smaller than the first radius where that reaches
       ``growth_fraction``. Below it the enclosed fraction changes fast with seeing,
       focus and centring errors, which an aperture correction from a few bright stars
       would not follow star by star.

    The larger of the two indices is returned. Without enough faint-to-medium stars
    (``min_stars``) all usable stars vote in step 1; without enough bright ones there is
    no floor; without any usable star the largest aperture is returned (complete flux
    is the safe choice when nothing is known).

    Parameters
    ----------
    flux, flux_err : array_like
        (n, k) fluxes and errors, as :class:`~obsdb.photometry.apertures.ApertureResult`.
    radii : array_like
        (k,) increasing radii.
    flags : array_like
        (n, k) flag bits.
    growth_fraction : float
        Curve-of-growth floor (0 < f <= 1).
    bright_snr, min_snr : float
        S/N limits of the bright and the faint-to-medium samples.
    min_stars : int
        Minimum sample size for each step.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        On shape mismatches, non-increasing radii or a ``growth_fraction`` outside (0, 1].
    """
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    if radii.ndim != 1 or radii.size == 0:
        raise ValueError("radii must be a non-empty 1-D sequence")
    if np.any(np.diff(radii) <= 0):
        raise ValueError(f"radii must be strictly increasing, got {radii.tolist()}")
    k = radii.size
    flux, flux_err, flg = (np.asarray(a) for a in (flux, flux_err, flags))
    for name, arr in (("flux", flux), ("flux_err", flux_err), ("flags", flg)):
        if arr.ndim != 2 or arr.shape[1] != k:
            raise ValueError(f"{name} must have shape (n, {k}) to match radii, got {arr.shape}")
    if not flux.shape == flux_err.shape == flg.shape:
        raise ValueError(f"flux {flux.shape}, flux_err {flux_err.shape} and flags {flg.shape} must have the same shape")
    if not 0 < growth_fraction <= 1:
        raise ValueError(f"growth_fraction must be in (0, 1], got {growth_fraction}")
    if flux.shape[0] == 0:
        return k - 1
    flux, flux_err, flg = flux.astype(float), flux_err.astype(float), flg.astype(np.int64)

    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / flux_err
    usable = (np.all((flg & ~F.LOW_SNR) == 0, axis=1) & np.all(np.isfinite(snr), axis=1)
              & np.all(flux_err > 0, axis=1))
    if usable.sum() < 1:
        return k - 1
    flux, snr = flux[usable], snr[usable]

    best = snr.max(axis=1)
    faint = (best >= min_snr) & (best < bright_snr)
    voters = snr[faint] if faint.sum() >= min_stars else snr
    j_snr = int(np.argmax(np.median(voters, axis=0)))

    j_floor = 0
    bright = snr[:, -1] >= bright_snr
    if bright.sum() >= min_stars:
        growth = np.median(flux[bright] / flux[bright, -1:], axis=0)
        reached = np.flatnonzero(growth >= growth_fraction)
        j_floor = int(reached[0]) if reached.size else k - 1
    return max(j_snr, j_floor)
