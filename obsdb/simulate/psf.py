"""Moffat point-spread function and postage-stamp rendering of many stars at once.

Pixel convention: 0-based pixel indices; the centre of pixel (i, j) (row i, column j)
is at x = j, y = i, so astropy ``wcs.all_world2pix(ra, dec, 0)`` positions apply
directly (FITS pixel = this + 1).
"""

from __future__ import annotations

import functools

import numpy as np

#: Stamp half-sizes: stars are grouped by these so that each group is one array operation.
HALF_SIZES = (4, 6, 8, 11, 16, 23, 32, 45, 64)

#: Wing level (ADU) below which a star's stamp may end; far below any noise.
WING_THRESHOLD_ADU = 0.02

#: Upper bound on array elements per rendering chunk (keeps memory around 100 MB).
_CHUNK_ELEMENTS = 4_000_000


def moffat_alpha(fwhm, beta):
    """Moffat core radius alpha for a FWHM: FWHM = 2 alpha sqrt(2**(1/beta) - 1)."""
    return np.asarray(fwhm) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_peak_fraction(fwhm, beta):
    """Fraction of the flux per unit area at the centre, (beta - 1) / (pi alpha^2)."""
    alpha = moffat_alpha(fwhm, beta)
    return (beta - 1.0) / (np.pi * alpha**2)


def stamp_half_size(flux, fwhm, beta, threshold=WING_THRESHOLD_ADU):
    """Half-size (px) of the stamp of each star, from :data:`HALF_SIZES`.

    The stamp extends to where the wing drops below ``threshold`` ADU (at least 2 FWHM,
    at most 64 px), so faint stars cost little and bright ones keep their halo.
    """
    alpha = moffat_alpha(fwhm, beta)
    peak = np.maximum(np.asarray(flux, dtype=float), 0.0) * moffat_peak_fraction(fwhm, beta)
    with np.errstate(divide="ignore"):
        q = np.where(peak > threshold, (peak / threshold) ** (1.0 / beta), 1.0)
    r = alpha * np.sqrt(np.maximum(q - 1.0, 0.0))
    r = np.maximum(r, 2.0 * np.asarray(fwhm) + 1.0)
    sizes = np.asarray(HALF_SIZES)
    idx = np.searchsorted(sizes, np.ceil(r))
    return sizes[np.minimum(idx, sizes.size - 1)]


def _moffat_grid(dx, dy, alpha2, beta):
    """Moffat (1 + r^2/alpha^2)^-beta on the outer product of per-star dx, dy vectors.

    ``dx``, ``dy`` have shape (n, m); the result has shape (n, m, m) (rows = dy). Written
    with as few full-size temporaries as possible, and without ``pow`` for integer beta
    (three times faster): this is the simulator's hot loop.
    """
    u = (1.0 + dy * dy / alpha2)[:, :, None] + (dx * dx / alpha2)[:, None, :]
    if float(beta).is_integer() and 1 <= beta <= 6:
        np.reciprocal(u, out=u)
        out = u.copy()
        for _ in range(int(beta) - 1):
            out *= u
        return out
    return np.power(u, -beta, out=u)


def _stamps(dx0, dy0, h, alpha2, beta, oversample):
    """Stamps (n, 2h+1, 2h+1) of stars offset (dx0, dy0) from their stamp centre pixel.

    ``dx0 = ix - x`` (integer centre minus true centre). Pixels are integrated by
    ``oversample``-fold sub-sampling only within about one FWHM of the centre, where the
    profile curves within a pixel; the wings, smooth on the pixel scale, are sampled at
    pixel centres (error well below 0.1 % of the flux).
    """
    offs = np.arange(-h, h + 1, dtype=float)
    prof = _moffat_grid(offs[None, :] + dx0[:, None], offs[None, :] + dy0[:, None],
                        alpha2, beta)
    hc = min(h, int(np.ceil(1.25 * np.sqrt(alpha2))))
    if oversample > 1 and hc > 0:
        sub = (np.arange(oversample) + 0.5) / oversample - 0.5
        core = (np.arange(-hc, hc + 1)[:, None] + sub[None, :]).ravel()
        side = 2 * hc + 1
        cp = _moffat_grid(core[None, :] + dx0[:, None], core[None, :] + dy0[:, None],
                          alpha2, beta)
        cp = cp.reshape(dx0.size, side, oversample, side, oversample).mean(axis=(2, 4))
        prof[:, h - hc:h + hc + 1, h - hc:h + hc + 1] = cp
    return prof


@functools.lru_cache(maxsize=256)
def _profile_norm(alpha2: float, beta: float, oversample: int) -> float:
    """Factor turning the sampled profile of :func:`_stamps` into a unit-flux PSF.

    The analytic Moffat normalisation is (beta - 1) / (pi alpha^2), but point sampling
    the convex wings misses about 0.1 % of the pixel integrals; dividing by the sampled
    total of a reference star (out to 64 px, plus the analytic tail beyond) makes the
    sum of a star over an unbounded pixel grid equal to its flux to ~1e-5.
    """
    h = 64
    ref = _stamps(np.zeros(1), np.zeros(1), h, alpha2, beta, oversample)
    analytic = (beta - 1.0) / (np.pi * alpha2)
    tail = (1.0 + (h + 0.5) ** 2 / alpha2) ** (1.0 - beta)
    return analytic / (float(ref.sum()) * analytic + tail)


def render_stars(shape, x, y, flux, fwhm, beta, oversample=3, image=None):
    """Add Moffat stars to an image.

    Every star has the same pixel-integrated profile (sub-sampled ``oversample`` times
    per axis in the core), normalised to its total ``flux`` over the unbounded plane.
    The stamp of a star ends where its wing drops below :data:`WING_THRESHOLD_ADU`, so
    the image lacks that invisible far wing: at most ~0.5 % of the flux of the faintest
    stars, nothing measurable, and the same PSF shape for faint and bright stars (an
    aperture correction measured on bright stars applies to faint ones).

    Parameters
    ----------
    shape : tuple of int
        (ny, nx) of the image.
    x, y : numpy.ndarray
        0-based pixel positions of the star centres.
    flux : numpy.ndarray
        Total flux of each star (ADU).
    fwhm, beta : float
        Moffat FWHM (px) and beta, the same for every star of the frame.
    oversample : int
        Sub-pixel samples per axis in the core.
    image : numpy.ndarray, optional
        Image to add the stars to (not modified; the result is a new array).

    Returns
    -------
    numpy.ndarray
        float64 image of shape ``shape``.
    """
    ny, nx = shape
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    flux = np.atleast_1d(np.asarray(flux, dtype=float))
    half = stamp_half_size(flux, fwhm, beta)
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    # Only stars whose stamp touches the frame.
    keep = ((ix + half >= 0) & (ix - half < nx) & (iy + half >= 0) & (iy - half < ny)
            & (flux > 0))
    alpha2 = float(moffat_alpha(fwhm, beta)) ** 2
    norm = _profile_norm(alpha2, float(beta), int(oversample))
    acc = np.zeros(ny * nx)
    for h in np.unique(half[keep]):
        sel = np.flatnonzero(keep & (half == h))
        side = 2 * h + 1
        offs = np.arange(-h, h + 1)
        chunk = max(1, _CHUNK_ELEMENTS // (side * side))
        for start in range(0, sel.size, chunk):
            s = sel[start:start + chunk]
            prof = _stamps(ix[s] - x[s], iy[s] - y[s], int(h), alpha2, beta, oversample)
            prof *= (norm * flux[s])[:, None, None]
            rows = iy[s][:, None, None] + offs[None, :, None]
            cols = ix[s][:, None, None] + offs[None, None, :]
            inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
            acc += np.bincount((rows * nx + cols)[inside], weights=prof[inside],
                               minlength=ny * nx)
    out = acc.reshape(ny, nx)
    if image is not None:
        out = out + image
    return out


def peak_pixel_fraction(fwhm, beta, oversample=3):
    """Largest fraction of a star's flux that can fall in one pixel (star centred on it)."""
    img = render_stars((65, 65), np.array([32.0]), np.array([32.0]), np.array([1e6]),
                       fwhm, beta, oversample) / 1e6
    return float(img.max())


def saturating_flux(full_well_adu, fwhm, beta):
    """Total flux (ADU) whose peak pixel reaches ``full_well_adu`` at best centring."""
    return full_well_adu / peak_pixel_fraction(fwhm, beta)


__all__ = [
    "moffat_alpha", "moffat_peak_fraction", "stamp_half_size", "render_stars",
    "peak_pixel_fraction", "saturating_flux",
]
