"""Star detection (``sep.extract``), windowed centroids (``sep.winpos``) and PSF statistics.

Detection uses SExtractor's default 3x3 pyramid kernel as a plain convolution with the
threshold rescaled to the noise of the filtered image (its noise is 6/16 of the pixel
noise). For a sky rms that varies slowly over the kernel this is the same test as sep's
``filter_type='matched'`` with a noise map, at 0.05 s instead of 0.12 s on a 2048x2048
frame. ``threshold`` is thus a significance in the filtered image, as in SExtractor.

That kernel is matched to a PSF of ~2 px FWHM. For a broad PSF it loses most of the
signal (a 10 px FWHM star keeps 40 % of its matched-filter S/N) while cosmic rays and
hot pixels, sharp, keep all theirs: a long exposure of a sparse field in poor seeing
then yields more of them than stars. So the detections' sizes are measured by adaptive
moments and the frame's PSF size taken from them (:func:`frame_fwhm`); when it exceeds
``BROAD_FWHM`` the frame is searched again through a Gaussian of that FWHM, the
matched filter, with the threshold on the filtered image's measured noise. Detections
much sharper than the PSF (hot pixels, cosmic-ray remnants the mask missed) are then
dropped, on every frame, and each detection gets its adaptive FWHM and a ``point``
flag (the PSF's size and shape: a star, not a galaxy's knot or a defect), which is
what astrometry should match.

The PSF is measured by fitting an elliptical Moffat profile (free beta) to isolated,
unsaturated, unmasked, moderately bright stars, all of them at once by a vectorised
Levenberg-Marquardt. Pixels integrate the profile: the model adds the second-order
pixel-averaging term, Laplacian / 24, without which a 2 px FWHM comes out ~5 % too wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import sep
from scipy import ndimage
from scipy.spatial import cKDTree

from obsdb.photometry.background import SkyModel, as_sep_array, check_image

__all__ = ["BROAD_FWHM", "PsfStats", "STAR_DTYPE", "detect_stars", "frame_fwhm", "measure_psf"]

#: Mask bits that hide pixels from detection and centroiding: bad (1) and cosmic ray (4).
#: Saturated pixels (2) stay: a saturated star is still a star, to be detected and flagged.
_HIDE_BITS = 1 | 4

#: SExtractor's default detection kernel, normalised.
_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
#: Noise of the kernel-filtered image relative to the pixel noise: sqrt(sum k^2) / sum k.
_KERNEL_NOISE = float(np.sqrt(np.sum(_KERNEL**2)))

#: PSFs broader than this FWHM (px, adaptive moments: ~1.1 x the Moffat FWHM) are
#: searched through a Gaussian filter of their FWHM (the matched filter): the 3x3
#: kernel keeps 60 % of its S/N on a 6 px star, 40 % at 10 px. Below it the 3x3 kernel
#: stays: on a 4-5 px PSF the matched filter gains little, merges pairs 1.3-1.5 FWHM
#: apart that the 3x3 kernel splits, and adds faint detections, each of which flags
#: its bright neighbours as blended (the simulated night's zero points lost a third
#: of their calibrators on such frames).
BROAD_FWHM = 6.0
#: The matched filter's FWHM is capped here (px).
_MAX_KERNEL_FWHM = 16.0
#: Brightest detections whose sizes fix the frame's PSF.
_N_SIZE_STARS = 150
#: A peak whose 4 neighbours average less than this fraction of it (at S/N >= 10) is
#: sharper than any PSF of 2.5 px FWHM or more (0.64 at the pixel centre, noise aside).
_PIXEL_SHARP_CONTRAST = 0.35
#: Below this PSF FWHM (px, adaptive) a star's moments depend on where it sits on the
#: pixel grid (1.3 px stars come out 0.5 to 1.8 px) and its peak is as sharp as a hot
#: pixel's: no detection is then dropped as sharp, and all are ``point``.
_MIN_RESOLVED_FWHM = 2.5
#: On a broad PSF, a pixel above this many times the PSF-filtered image (and 5 sigma)
#: is sharper than any star's (at most ~2-2.5 times, at the peak).
_SHARP_PIXEL_RATIO = 5.0
#: Sizes at or below this FWHM (px) are single pixels: never the PSF.
_MIN_STAR_FWHM = 0.9
#: measure_psf lowers its S/N cut through these levels while fewer than _MIN_PSF_STARS
#: stars pass it; with fewer fits than that it fits one profile to all the stars at once.
_MIN_PSF_STARS = 8
_PSF_SNR_LEVELS = (20.0, 10.0, 5.0)
#: The joint fit fixes beta at _BETA_FIXED (typical of seeing-limited stars) when the
#: stars constrain it worse than this relative error, or put it outside _BETA_RANGE.
_BETA_REL_ERR = 0.2
_BETA_RANGE = (1.5, 6.0)
_BETA_FIXED = 3.0
#: Half-sizes (px) of the adaptive-moment stamps: most stars, then the broad ones.
_SMALL_HALF = 8
_LARGE_HALF = 32

#: A detection is a point source (``point``) when its adaptive FWHM is within this range
#: of the PSF's and it is rounder than this.
_POINT_RANGE = (0.6, 1.6)
_POINT_MAX_ELLIPTICITY = 0.7

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: sep's aperture flag: a masked pixel in the aperture (left out of the sum).
_APER_HASMASKED = int(sep.APER_HASMASKED)
#: Gaussian-sigma / half-light-radius ratio of sep.winpos' window (SExtractor: d50 / 2.35).
_WIN_SIG_PER_RHALF = 2.0 / 2.3548

STAR_DTYPE = np.dtype([
    ("x", "f8"), ("y", "f8"),            # windowed centroid, 0-based pixel (centre of first pixel = 0)
    ("x_iso", "f8"), ("y_iso", "f8"),    # isophotal barycentre from sep.extract
    ("flux", "f8"),                      # isophotal flux above the sky (rough)
    ("peak", "f4"),                      # highest sky-subtracted pixel
    ("a", "f4"), ("b", "f4"), ("theta", "f4"),  # isophotal second-moment ellipse (px, rad) in the
                                                # detection image (filtered, for a broad PSF)
    ("npix", "i4"),                      # pixels above the threshold
    ("sep_flag", "i2"),                  # sep.extract flags (1 merged, 2 truncated, ...)
    ("snr", "f4"),                       # S/N in a circular aperture of radius ~ FWHM
    ("windowed", "?"),                   # x, y come from sep.winpos (else the barycentre)
    ("fwhm", "f4"),                      # FWHM of the Gaussian matching the detection (adaptive
                                         # moments, px); NaN where not measured
    ("point", "?"),                      # size and shape of the frame's PSF: a star, not a galaxy,
                                         # a knot or a defect (True when the PSF is unknown or
                                         # too sharp for moments, under 2.5 px)
])


@dataclass(frozen=True)
class PsfStats:
    """PSF of a frame from a robust median over fitted stars.

    Attributes
    ----------
    fwhm : float
        Full width at half maximum (px): geometric mean of the major and minor axes.
    ellipticity : float
        1 - minor / major.
    n_used : int
        Stars whose fit entered the median (0: fwhm and ellipticity are NaN).
    beta : float
        Moffat beta.
    fwhm_scatter : float
        Robust spread (1.4826 MAD) of the per-star FWHM.
    """

    fwhm: float
    ellipticity: float
    n_used: int
    beta: float = float("nan")
    fwhm_scatter: float = float("nan")


def _ensure_pixstack(npix: int) -> None:
    # sep's object-pixel buffer is process-global; crowded or bright frames overflow the
    # 300000 default ("internal pixel buffer full"). Only ever grow it.
    if sep.get_extract_pixstack() < npix:
        sep.set_extract_pixstack(int(npix))


def _extract(data: np.ndarray, threshold: float, **kwargs):
    """``sep.extract`` that grows sep's buffers and tries again when they overflow."""
    for attempt in range(4):
        try:
            return sep.extract(data, threshold, **kwargs)
        except Exception as exc:  # sep raises a bare Exception when a buffer overflows
            message = str(exc)
            if attempt == 3 or "buffer full" not in message and "limit" not in message:
                raise
            if "pixel buffer" in message:
                sep.set_extract_pixstack(2 * sep.get_extract_pixstack())
            else:
                sep.set_sub_object_limit(2 * sep.get_sub_object_limit())
    raise AssertionError("unreachable")


def _gaussian_kernel(fwhm: float) -> np.ndarray:
    """Normalised Gaussian of ``fwhm`` (px), truncated at 2 sigma (odd size)."""
    s = fwhm / _FWHM_PER_SIGMA
    h = max(1, int(math.ceil(2.0 * s)))
    g = np.arange(-h, h + 1, dtype=float)
    k = np.exp(-0.5 * (g[:, None] ** 2 + g[None, :] ** 2) / (s * s))
    return k / k.sum()


def _matched_filter_pass(data: np.ndarray, rms: np.ndarray, hide: np.ndarray | None, fwhm: float, threshold: float,
                         kwargs: dict):
    """Detections on the image filtered by a Gaussian of the PSF's ``fwhm``; returns
    them and the hidden pixels (``hide`` and the sharp pixels found here).

    The image is filtered here (separable: 0.02 s a megapixel, where sep's own 2-D
    convolution with a 19 x 19 kernel takes 0.1 s) and sep thresholds the filtered
    image at ``threshold`` times its measured noise; the isophotal flux and peak are
    then summed from the unfiltered image over each object's pixels.

    Pixels far sharper than the PSF allows (cosmic rays and hot pixels the mask missed)
    are hidden first: through a filter this broad a ray on a star's wing would merge
    with the star into one detection, whose centre it would then pull to itself.
    """
    s = fwhm / _FWHM_PER_SIGMA

    def smooth(work):
        return np.ascontiguousarray(ndimage.gaussian_filter(work, s, truncate=3.0), dtype=np.float32)

    work = data if hide is None else np.where(hide, np.float32(0.0), data)
    filtered = smooth(work)
    # A star's pixel is at most about twice the PSF-filtered image there (at the peak,
    # for a filter matched to it); a hot pixel is 2 pi sigma^2 times it (100 at 10 px
    # FWHM), a short cosmic-ray track ten times or more.
    sharp = (data > 5.0 * rms) & (data > _SHARP_PIXEL_RATIO * np.maximum(filtered, 0.0))
    if hide is not None:
        sharp &= ~hide
    if sharp.any():
        # With their 8 neighbours: the fainter edge of a ray.
        sharp = ndimage.binary_dilation(sharp, structure=np.ones((3, 3), dtype=bool))
        hide = sharp if hide is None else hide | sharp
        work = np.where(hide, np.float32(0.0), data)
        filtered = smooth(work)
        kwargs = {**kwargs, "mask": hide}
    # The filtered noise from the pixel noise assumes it uncorrelated; flat-field residuals,
    # faint galaxies and interpolation correlate it. Measure it instead (robustly, on a
    # sparse grid), never below the white-noise figure.
    white = float(np.sqrt(np.sum(_gaussian_kernel(fwhm) ** 2)))
    step = max(1, int(round(s)))
    ratio = filtered[::step, ::step] / np.maximum(rms[::step, ::step], 1e-30)
    if hide is not None:
        ratio = ratio[~hide[::step, ::step]]
    ratio = ratio[np.isfinite(ratio)]
    noise = white
    if ratio.size > 100:
        med = np.median(ratio)
        noise = float(np.clip(1.4826 * np.median(np.abs(ratio - med)), white, 2.0 * white))
    objects, segmap = _extract(filtered, float(threshold) * noise, filter_kernel=None, segmentation_map=True, **kwargs)
    if len(objects):
        pix = np.flatnonzero(segmap)
        labels = segmap.ravel()[pix]
        order = np.argsort(labels, kind="stable")
        pix, labels = pix[order], labels[order]
        values = work.ravel()[pix]
        first = np.searchsorted(labels, np.arange(1, len(objects) + 1))
        objects = objects.copy()
        objects["flux"] = np.bincount(labels - 1, weights=values, minlength=len(objects))
        objects["peak"] = np.maximum.reduceat(values, np.minimum(first, len(values) - 1))
    return objects, hide


def detect_stars(sci: np.ndarray, sky: SkyModel, mask: np.ndarray | None = None, *, threshold: float = 3.0,
                 min_area: int = 5, deblend: bool = True, deblend_cont: float = 0.0005,
                 deblend_nthresh: int = 32, err: np.ndarray | None = None) -> np.ndarray:
    """Detect stars on a calibrated frame.

    Two steps (see the module notes): sep.extract with SExtractor's 3x3 kernel; the
    PSF size from the adaptive moments of those detections; when the PSF is broader
    than ``BROAD_FWHM`` px, detection again through a Gaussian filter of the PSF's
    size. Detections much sharper than the PSF (hot pixels, cosmic rays the mask missed)
    are then dropped.

    Parameters
    ----------
    sci : numpy.ndarray
        Calibrated image (ADU), sky not subtracted.
    sky : SkyModel
        From :func:`~obsdb.photometry.background.estimate_background`.
    mask : numpy.ndarray, optional
        Mask bits; bad pixels (1) and cosmic rays (4) cannot start or grow a detection.
    threshold : float
        Detection threshold in sigma of the filtered image.
    min_area : int
        Minimum number of connected pixels above the threshold.
    deblend : bool
        Split blended sources (sep's multi-threshold deblending, 32 levels).
    deblend_cont : float
        Minimum flux fraction of a deblended branch. SExtractor's 0.005 merged 3.5 % of
        the S/N > 10 stars lying 2-4 FWHM from a 20-50x brighter one in a crowded test
        frame; 0.0005 keeps 99 % of them, at no extra spurious detection or time.
    deblend_nthresh : int
        Deblending levels; 16 saves 0.02 s of CPU on a 2048x2048 frame of 1000 stars
        and loses 1 % of those close companions.
    err : numpy.ndarray, optional
        Per-pixel 1-sigma error (the calibrated ERR plane) for ``snr``; without it the
        sky rms is used, which ignores the star's own Poisson noise.

    Returns
    -------
    numpy.ndarray
        Structured array of dtype :data:`STAR_DTYPE`, brightest (largest ``flux``) first.

    Raises
    ------
    ValueError
        On a shape mismatch or a non-positive ``threshold`` / ``min_area``.
    """
    sci = check_image("sci", sci)
    check_image("sky.sky", sky.sky, sci.shape)
    check_image("sky.rms", sky.rms, sci.shape)
    if mask is not None:
        mask = check_image("mask", mask, sci.shape)
    if err is not None:
        err = check_image("err", err, sci.shape)
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if int(min_area) != min_area or min_area < 1:
        raise ValueError(f"min_area must be a positive integer, got {min_area}")
    if not 0 < deblend_cont <= 1:
        raise ValueError(f"deblend_cont must be in (0, 1], got {deblend_cont}")

    data = as_sep_array(sci) - sky.sky
    hide = None if mask is None else ((np.asarray(mask) & _HIDE_BITS) != 0)
    rms = as_sep_array(sky.rms)
    _ensure_pixstack(max(300_000, sci.size // 8))
    kwargs = dict(err=rms, mask=hide, minarea=int(min_area),
                  deblend_cont=float(deblend_cont) if deblend else 1.0, deblend_nthresh=int(deblend_nthresh))
    objects = _extract(data, float(threshold) * _KERNEL_NOISE, filter_kernel=_KERNEL, filter_type="conv", **kwargs)

    # The PSF from the brightest detections, then the matched filter if it is broad.
    fwhm0 = float("nan")
    if len(objects):
        top = np.argsort(-objects["flux"], kind="stable")
        if mask is not None:
            # Saturated stars are broad and flat-topped, and bright: they must not pass for
            # the PSF (a sparse field with a few of them would then look out of focus).
            top = top[~_near_saturation(np.asarray(mask), objects["x"][top], objects["y"][top])]
        top = top[:_N_SIZE_STARS]
        start = np.sqrt(np.clip(objects["a"][top] * objects["b"][top], 0.25, 100.0))
        mom = _adaptive_moments(data, rms, hide, objects["x"][top], objects["y"][top], start)
        contrast, peak_snr = _peak_contrast(data, rms, hide, objects["x"][top], objects["y"][top])
        fwhm0 = frame_fwhm(mom, pixel_sharp=(contrast < _PIXEL_SHARP_CONTRAST) & (peak_snr >= 10.0))
    if np.isfinite(fwhm0) and fwhm0 > BROAD_FWHM:
        objects, hide = _matched_filter_pass(data, rms, hide, min(fwhm0, _MAX_KERNEL_FWHM), threshold, kwargs)
    objects = objects[np.argsort(-objects["flux"], kind="stable")]
    mom = None
    if len(objects) and np.isfinite(fwhm0) and fwhm0 >= _MIN_RESOLVED_FWHM:
        # Started small, the window settles on a sharp core where there is one. Stamps
        # of +-2 FWHM: objects broader than 1.7 times the PSF are not point sources anyway.
        half = int(np.clip(np.ceil(2.0 * fwhm0), 4, _LARGE_HALF))
        mom = _adaptive_moments(data, rms, hide, objects["x"], objects["y"], 1.0, half=half)
        keep = ~_sharper_than_psf(data, rms, hide, objects["x"], objects["y"], mom, fwhm0)
        objects, mom = objects[keep], _Moments(*(np.asarray(f)[keep] for f in _fields_of(mom)))
    n = len(objects)
    out = np.zeros(n, dtype=STAR_DTYPE)
    if n == 0:
        return out
    for name in ("flux", "peak", "a", "b", "theta", "npix"):
        out[name] = objects[name]
    out["x_iso"], out["y_iso"] = objects["x"], objects["y"]
    out["sep_flag"] = objects["flag"]
    if mom is None:
        out["fwhm"] = np.nan
        out["point"] = True
    else:
        out["fwhm"] = np.where(mom.positive, mom.fwhm, np.nan)
        out["point"] = (mom.ok & (mom.fwhm > _POINT_RANGE[0] * fwhm0) & (mom.fwhm < _POINT_RANGE[1] * fwhm0)
                        & (mom.ellipticity < _POINT_MAX_ELLIPTICITY))

    # One window for all stars: the PSF's, from the half-light radius of the brightest
    # clean detections. A per-star radius is noise for faint stars, and the optimal
    # centroid weight for a point source is its PSF.
    rhalf = _median_half_light_radius(data, objects, hide)
    sig = max(_WIN_SIG_PER_RHALF * rhalf, 0.5)
    # Pixel centres only (subpix=1): the window's weight at its 4-sigma edge is 3e-4, so
    # sub-sampling the edge pixels moves the centroids by 1e-5 px (median) at 60 % of the time.
    xw, yw, wflag = sep.winpos(data, objects["x"], objects["y"], np.full(n, sig), mask=hide, subpix=1)
    # A windowed centroid that moved off the isophote (a faint star next to a bright one)
    # has failed: keep the barycentre.
    # Masked pixels are left out of the window's sums: a window of a broad PSF nearly
    # always holds one, and its centroid is still good.
    good = (((wflag & ~_APER_HASMASKED) == 0) & np.isfinite(xw) & np.isfinite(yw)
            & (np.hypot(xw - objects["x"], yw - objects["y"]) < 2 * sig))
    out["x"] = np.where(good, xw, objects["x"])
    out["y"] = np.where(good, yw, objects["y"])
    out["windowed"] = good

    # S/N in a circle of radius 2 r_half (1.0-1.3 FWHM, near the S/N-optimal radius).
    noise = rms if err is None else as_sep_array(err)
    s, e, _ = sep.sum_circle(data, out["x"], out["y"], max(2.0 * rhalf, 1.5), err=noise, mask=hide, subpix=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["snr"] = np.where(e > 0, s / e, 0.0)
    if np.isfinite(fwhm0) and fwhm0 > BROAD_FWHM:
        # A broad star puts under a tenth of its light within 1 px of its centre, and its
        # S/N there is a third of its S/N in the wide circle; a cosmic-ray remnant or hot
        # pixel the moments missed (a sharp core on a streak) has more S/N there.
        s1, e1, _ = sep.sum_circle(data, out["x_iso"], out["y_iso"], 1.0, err=rms, mask=hide, subpix=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr1 = np.where(e1 > 0, s1 / e1, 0.0)
        out = out[~((snr1 >= 4.0) & (snr1 > out["snr"]))]
    return out


def _near_saturation(mask: np.ndarray, x, y, reach: int = 3) -> np.ndarray:
    """True where a saturated pixel (mask bit 2) lies within ``reach`` px of x, y."""
    ny, nx = mask.shape
    offs = np.arange(-reach, reach + 1)
    rows = np.clip(np.rint(y).astype(int)[:, None, None] + offs[None, :, None], 0, ny - 1)
    cols = np.clip(np.rint(x).astype(int)[:, None, None] + offs[None, None, :], 0, nx - 1)
    return np.any((mask[rows, cols] & 2) != 0, axis=(1, 2))


def _median_half_light_radius(data: np.ndarray, objects: np.ndarray, hide: np.ndarray | None) -> float:
    """Median half-light radius (px) of up to 100 of the brightest unflagged detections."""
    clean = np.flatnonzero(objects["flag"] == 0)[:100]
    if clean.size == 0:
        clean = np.arange(min(len(objects), 100))
    obj = objects[clean]
    rmax = np.clip(6.0 * obj["a"], 3.0, 30.0)
    r, rflag = sep.flux_radius(data, obj["x"], obj["y"], rmax, 0.5, mask=hide, subpix=5)
    fine = (rflag == 0) & np.isfinite(r) & (r > 0)
    if fine.sum() < 5:
        # Broad stars: their large apertures often hold a masked pixel (left out of the sum).
        fine = ((rflag & ~_APER_HASMASKED) == 0) & np.isfinite(r) & (r > 0)
    r = r[fine]
    return float(np.median(r)) if r.size else 1.5


# -- sizes: adaptive moments ----------------------------------------------------------------

@dataclass(frozen=True)
class _Moments:
    x: np.ndarray
    y: np.ndarray
    fwhm: np.ndarray          # 2.3548 (det C)^(1/4): FWHM of the Gaussian that matches the object
    ellipticity: np.ndarray   # 1 - minor / major
    snr: np.ndarray           # S/N of the window-weighted flux against the sky noise
    ok: np.ndarray            # positive flux, centre kept, window inside the stamp
    positive: np.ndarray      # positive window-weighted flux all along


#: Stars x stamp pixels per batch of adaptive moments: bounds memory (two float32 stacks
#: of 6 per pixel: 100 MB) when broad stamps meet a crowded frame.
_MOMENT_BATCH_PIXELS = 2_000_000


def _moments_in_stamps(data, rms, hide, x, y, sigma0, half: int, n_iter: int, sky=None):
    n = len(x)
    batch = max(1, _MOMENT_BATCH_PIXELS // (2 * half + 1) ** 2)
    if n <= batch:
        return _moments_of_batch(data, rms, hide, x, y, sigma0, half, n_iter, sky)
    parts = [_moments_of_batch(data, rms, hide, x[i:i + batch], y[i:i + batch], sigma0[i:i + batch], half,
                               n_iter, sky) for i in range(0, n, batch)]
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def _moments_of_batch(data, rms, hide, x, y, sigma0, half: int, n_iter: int, sky=None):
    ny, nx = data.shape
    n = len(x)
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    offs = np.arange(-half, half + 1)
    oy, ox = (a.ravel() for a in np.meshgrid(offs, offs, indexing="ij"))
    # Flat indices and take: several times faster than indexing with row and column
    # arrays. Only the stamps that cross the border need clipping.
    flat = (iy * nx + ix)[:, None] + (oy * nx + ox)[None, :]
    good = np.ones(flat.shape, dtype=bool)
    edge = np.flatnonzero((ix < half) | (iy < half) | (ix >= nx - half) | (iy >= ny - half))
    if edge.size:
        rows, cols = iy[edge, None] + oy[None, :], ix[edge, None] + ox[None, :]
        good[edge] = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
        flat[edge] = np.clip(rows, 0, ny - 1) * nx + np.clip(cols, 0, nx - 1)
    if hide is not None:
        good &= ~np.ravel(hide).take(flat)
    # float32 throughout: moments need no more (sums are float64).
    stamp = np.ravel(data).take(flat).astype(np.float32)
    if sky is not None:
        stamp -= np.ravel(sky).take(flat)
    good &= np.isfinite(stamp)
    np.putmask(stamp, ~good, np.float32(0.0))
    # Each iteration needs the window over the stamp and six window-weighted sums. Both
    # are batched matrix products over per-star stacks (the window's exponent is a
    # quadratic form in gx, gy; the sums are raw moments of the stamp): a third of the
    # time of the same arithmetic as elementwise passes. float32 is plenty for moments.
    quad = np.empty((n, 6, flat.shape[1]), dtype=np.float32)    # gx^2, gy^2, gx gy, gx, gy, 1
    gx, gy = quad[:, 3], quad[:, 4]                              # offsets from (x, y)
    np.subtract(ox.astype(np.float32)[None, :], (x - ix).astype(np.float32)[:, None], out=gx)
    np.subtract(oy.astype(np.float32)[None, :], (y - iy).astype(np.float32)[:, None], out=gy)
    quad[:, 5] = 1.0
    np.multiply(quad[:, 3], quad[:, 3], out=quad[:, 0])
    np.multiply(quad[:, 4], quad[:, 4], out=quad[:, 1])
    np.multiply(quad[:, 3], quad[:, 4], out=quad[:, 2])
    raw = np.empty_like(quad)                                    # the stamp times 1, x, y, xx, yy, xy
    for k, j in enumerate((5, 3, 4, 0, 1, 2)):
        np.multiply(quad[:, j], stamp, out=raw[:, k])
    mx, my = np.zeros(n), np.zeros(n)
    cmax = (half / 3.0) ** 2
    cxx = np.clip(np.asarray(sigma0, dtype=float) ** 2, 0.04, cmax)
    cyy = cxx.copy()
    cxy = np.zeros(n)
    positive = np.ones(n, dtype=bool)
    # The stars still moving are a shrinking subset; their stacks are compacted when it
    # halves, so that no iteration copies them.
    live = np.arange(n)          # stars whose rows quad and raw hold
    active = np.arange(n)
    for _ in range(n_iter):
        if active.size <= live.size // 2:
            where = np.searchsorted(live, active)
            quad, raw, live = quad[where], raw[where], active
        # Computed for every live star (at most twice the active ones), kept for the active.
        a = live
        det = cxx[a] * cyy[a] - cxy[a] ** 2
        # -q/2 at (dx, dy) = (gx - mx, gy - my), q = (cyy dx^2 + cxx dy^2 - 2 cxy dx dy) / det,
        # as coefficients of gx^2, gy^2, gx gy, gx, gy and 1.
        pxx, pyy, pxy = cyy[a] / det, cxx[a] / det, -2.0 * cxy[a] / det
        ma, na = mx[a], my[a]
        coef = -0.5 * np.stack([pxx, pyy, pxy, -2.0 * pxx * ma - pxy * na, -2.0 * pyy * na - pxy * ma,
                                pxx * ma * ma + pyy * na * na + pxy * ma * na], axis=1)
        w = np.exp(np.matmul(coef.astype(np.float32)[:, None, :], quad))        # (live, 1, m)
        m = np.matmul(raw, w.transpose(0, 2, 1))[:, :, 0].astype(float)      # (live, 6)
        if active.size < live.size:
            a = active
            m, ma, na = (v[np.searchsorted(live, a)] for v in (m, ma, na))
        s = m[:, 0]
        positive[a] &= s > 0
        s = np.where(s > 0, s, 1.0)
        cx, cy = m[:, 1] / s, m[:, 2] / s           # windowed centroid, stamp frame
        mxx, myy, mxy = m[:, 3] / s - cx * cx, m[:, 4] / s - cy * cy, m[:, 5] / s - cx * cy
        ex, ey = cx - ma, cy - na
        mx[a], my[a] = ma + np.clip(ex, -1.0, 1.0), na + np.clip(ey, -1.0, 1.0)
        # The window that matches the object is twice the windowed moments (exact for a
        # Gaussian object); positive definite and inside the stamp.
        old = cxx[a] + cyy[a]
        cxx[a], cyy[a] = np.clip(2.0 * mxx, 0.04, cmax), np.clip(2.0 * myy, 0.04, cmax)
        lim = 0.95 * np.sqrt(cxx[a] * cyy[a])
        cxy[a] = np.clip(2.0 * mxy, -lim, lim)
        size = cxx[a] + cyy[a]
        moving = (np.abs(size - old) >= 1e-3 * size) | (np.hypot(ex, ey) >= 1e-3)
        active = a[moving & positive[a]]
        if active.size == 0:
            break
    centred = np.hypot(mx, my) < np.maximum(2.0, 1.5 * np.sqrt(0.5 * (cxx + cyy)))
    det = cxx * cyy - cxy * cxy
    dx, dy = gx - mx[:, None].astype(np.float32), gy - my[:, None].astype(np.float32)
    pxx, pyy, pxy = ((v / det).astype(np.float32)[:, None] for v in (cyy, cxx, -2.0 * cxy))
    w = np.exp(np.float32(-0.5) * (pxx * dx * dx + pyy * dy * dy + pxy * dx * dy))
    var = np.where(good, np.square(np.ravel(rms).take(flat)), np.float32(0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = (w * stamp).sum(axis=1, dtype=float) / np.sqrt((w * w * var).sum(axis=1, dtype=float))
    half_tr = 0.5 * (cxx + cyy)
    d = np.sqrt((0.5 * (cxx - cyy)) ** 2 + cxy**2)
    major, minor = np.sqrt(half_tr + d), np.sqrt(np.maximum(half_tr - d, 1e-6))
    at_edge = np.maximum(cxx, cyy) >= 0.999 * cmax
    return (x + mx, y + my, _FWHM_PER_SIGMA * np.sqrt(major * minor), 1.0 - minor / major,
            np.nan_to_num(snr), positive, centred, at_edge)


def _adaptive_moments(data: np.ndarray, rms: np.ndarray, hide: np.ndarray | None, x, y, sigma0,
                      n_iter: int = 30, sky: np.ndarray | None = None, half: int | None = None) -> _Moments:
    """Adaptive (Gaussian-weighted) second moments of objects at ``x``, ``y``.

    The Gaussian window is iterated to twice the windowed second moments, which
    converges on the object's own size and shape (Bernstein & Jarvis 2002). Robust to
    noise and neighbours, unlike plain moments or half-light radii, and it needs no
    guess of the PSF. Stamps of 17 x 17 px, then 65 x 65 px for the objects wider than
    about 6 px FWHM; or all of ``2 half + 1`` px, where objects wider than about
    ``half`` px FWHM are not ``ok`` (and their FWHM a lower bound).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    sigma0 = np.broadcast_to(np.asarray(sigma0, dtype=float), x.shape)
    res = list(_moments_in_stamps(data, rms, hide, x, y, sigma0, half or _SMALL_HALF, n_iter, sky))
    wide = np.flatnonzero(res[7])
    if wide.size and half is None:
        more = _moments_in_stamps(data, rms, hide, x[wide], y[wide], res[2][wide] / _FWHM_PER_SIGMA, _LARGE_HALF,
                                  n_iter, sky)
        for k in range(8):
            res[k][wide] = more[k]
    xm, ym, fwhm, ell, snr, positive, centred, at_edge = res
    return _Moments(xm, ym, fwhm, ell, snr, positive & centred & ~at_edge, positive)


def frame_fwhm(mom: _Moments, pixel_sharp: np.ndarray | None = None) -> float:
    """The PSF FWHM (px) of a frame from the adaptive sizes of its brightest detections.

    Stars share one size; hot pixels and cosmic rays are sharper than any PSF, galaxies
    broader and of many sizes. The sizes of round (ellipticity < 0.5), well-measured
    (S/N >= 7) detections are smoothed in log size (weights S/N, capped at 100); each
    peak's support is the weight within 25 % of it. The PSF is the broadest peak with
    at least 3 objects and a third of the best-supported peak's weight: on a long
    exposure of a sparse field the cosmic rays can outnumber the stars, and they are
    always the sharper population. ``pixel_sharp`` (optional) marks detections whose
    brightest pixel stands far above its neighbours, as no PSF of 2.5 px FWHM or more
    allows: left out (when 3 others remain), they cannot outweigh the stars. NaN when
    no peak qualifies.
    """
    use = mom.ok & (mom.snr >= 7.0) & (mom.ellipticity < 0.5) & (mom.fwhm > _MIN_STAR_FWHM)
    if pixel_sharp is not None and np.sum(use & ~pixel_sharp) >= 3:
        use &= ~pixel_sharp
    # Deblended fragments of one star converge to the same centre: count them once.
    idx = np.flatnonzero(use)
    if idx.size:
        key = np.rint(mom.x[idx] / 2.0).astype(np.int64) * 1_000_003 + np.rint(mom.y[idx] / 2.0).astype(np.int64)
        _, first = np.unique(key, return_index=True)
        idx = idx[np.sort(first)]
    if idx.size < 3:
        return float("nan")
    lf = np.log10(mom.fwhm[idx])
    w = np.minimum(mom.snr[idx], 100.0)
    grid = np.arange(np.log10(_MIN_STAR_FWHM), np.log10(60.0), 0.005)
    kde = (w[None, :] * np.exp(-0.5 * ((grid[:, None] - lf[None, :]) / 0.04) ** 2)).sum(axis=1)
    peaks = np.flatnonzero((kde > np.r_[-1.0, kde[:-1]]) & (kde >= np.r_[kde[1:], -1.0]) & (kde > 0))
    near = np.abs(lf[None, :] - grid[peaks][:, None]) < 0.1
    support = (near * w[None, :]).sum(axis=1)
    count = near.sum(axis=1)
    eligible = np.flatnonzero((count >= 3) & (support >= support.max() / 3.0))
    if eligible.size == 0:
        return float("nan")
    members = near[eligible[-1]]
    return float(10.0 ** np.median(lf[members]))


def _fields_of(obj) -> tuple:
    """The fields of a dataclass instance, not copied (``dataclasses.astuple`` deep-copies)."""
    return tuple(getattr(obj, f.name) for f in fields(obj))


def _sharper_than_psf(data, rms, hide, x, y, mom: _Moments, fwhm0: float) -> np.ndarray:
    """True for detections much sharper than the PSF: hot pixels, cosmic-ray remnants.

    Two tests must agree. The peak (the brightest pixel within 2 px, or 0.3 FWHM): its
    four neighbours hold on average
    c = exp(-1 / (2 sigma^2)) of it for a Gaussian PSF of width sigma (0.73 at 3 px
    FWHM, 0.97 at 10 px; more when the star sits off a pixel centre); well under that
    (by 0.1 and ~5 / peak S/N: noise, and the brightest of 25 noisy pixels being
    picked), with the peak 5 sigma above the sky, is a sharp peak. And the adaptive
    moments, started small on the detection: a star's FWHM scatters about the PSF's
    by ~1.2 / (S/N); under half of it at S/N >= 8, or a third at S/N >= 4, no star is
    (the 3x3 kernel's detection limit is S/N ~4). On a broad PSF, where a cosmic ray's
    window can collapse onto one pixel of it at any S/N, half the PSF's FWHM is enough.
    The peak spares a star on a bright neighbour's wing, whose moments the slope can
    fool; the moments spare a broad star with a hot pixel on it.
    """
    # The detection's centre can sit a few pixels off a cosmic ray's brightest pixel when
    # the detection image is filtered broadly.
    reach = int(np.clip(round(0.3 * fwhm0), 2, 5))
    contrast, peak_snr = _peak_contrast(data, rms, hide, np.asarray(x), np.asarray(y), reach)
    expected = math.exp(-0.5 * (_FWHM_PER_SIGMA / fwhm0) ** 2)
    with np.errstate(divide="ignore"):
        limit = np.maximum(0.5 * expected, expected - 0.1 - 5.0 / np.maximum(peak_snr, 1e-3))
    sharp_peak = (contrast < limit) & (peak_snr >= 5.0)
    if fwhm0 > BROAD_FWHM:
        small = ~mom.positive | (mom.fwhm < 0.5 * fwhm0)
    else:
        small = mom.positive & (((mom.fwhm < 0.5 * fwhm0) & (mom.snr >= 8.0))
                                | ((mom.fwhm < 0.33 * fwhm0) & (mom.snr >= 4.0)))
    return sharp_peak & small


def _peak_contrast(data, rms, hide, x, y, reach: int = 2):
    """Mean of the 4 neighbours of the brightest pixel within ``reach`` px, over that
    pixel; and that pixel's S/N. Hidden pixels are left out."""
    ny, nx = data.shape
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    h = reach + 1
    offs = np.arange(-h, h + 1)
    rows = np.clip(iy[:, None, None] + offs[None, :, None], 0, ny - 1)
    cols = np.clip(ix[:, None, None] + offs[None, None, :], 0, nx - 1)
    stamp = data[rows, cols].astype(float)
    valid = np.isfinite(stamp) if hide is None else np.isfinite(stamp) & ~hide[rows, cols]
    inner = np.where(valid[:, 1:-1, 1:-1], stamp[:, 1:-1, 1:-1], -np.inf)
    k = np.argmax(inner.reshape(len(x), -1), axis=1)
    py, px = np.unravel_index(k, (2 * reach + 1, 2 * reach + 1))
    py, px = py + 1, px + 1
    n = np.arange(len(x))
    peak = stamp[n, py, px]
    nb = np.stack([stamp[n, py - 1, px], stamp[n, py + 1, px], stamp[n, py, px - 1], stamp[n, py, px + 1]], axis=1)
    ok = np.stack([valid[n, py - 1, px], valid[n, py + 1, px], valid[n, py, px - 1], valid[n, py, px + 1]], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_nb = np.where(ok.any(axis=1), np.sum(np.where(ok, nb, 0.0), axis=1) / ok.sum(axis=1), np.nan)
        contrast = np.where(peak > 0, mean_nb / peak, np.nan)
        peak_snr = peak / rms[np.clip(iy + py - h, 0, ny - 1), np.clip(ix + px - h, 0, nx - 1)]
    return contrast, np.nan_to_num(peak_snr)


# -- PSF ----------------------------------------------------------------------------------

def _moffat_pixels(p: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Pixel-integrated unit-peak elliptical Moffat at offsets ``dx``, ``dy`` (n, m).

    ``p`` (n, 6) holds x0, y0, cxx, cyy, cxy, beta with
    Q = cxx X^2 + cxy X Y + cyy Y^2, profile (1 + Q)^-beta. Averaging over the pixel adds
    Laplacian / 24 (Taylor expansion of the unit-square mean), good to ~0.1 % of the
    peak at FWHM 2 px.
    """
    x0, y0, cxx, cyy, cxy, beta = (p[:, i:i + 1] for i in range(6))
    X = dx - x0
    Y = dy - y0
    Q = cxx * X * X + cxy * X * Y + cyy * Y * Y
    inv_u = 1.0 / (1.0 + Q)
    f = np.exp(beta * np.log(inv_u))
    qx = 2.0 * cxx * X + cxy * Y
    qy = 2.0 * cyy * Y + cxy * X
    lap = f * inv_u * (-2.0 * beta * (cxx + cyy) + beta * (beta + 1.0) * (qx * qx + qy * qy) * inv_u)
    return f + lap / 24.0


def _constrain(p: np.ndarray) -> np.ndarray:
    """Keep the nonlinear parameters where the profile exists (positive-definite, beta > 1)."""
    p = p.copy()
    p[:, 2] = np.maximum(p[:, 2], 1e-4)
    p[:, 3] = np.maximum(p[:, 3], 1e-4)
    lim = 1.9 * np.sqrt(p[:, 2] * p[:, 3])
    p[:, 4] = np.clip(p[:, 4], -lim, lim)
    p[:, 5] = np.clip(p[:, 5], 1.05, 30.0)
    return p


def _fit_moffat(stamps: np.ndarray, weights: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                p0: np.ndarray, amp0: np.ndarray, sky0: np.ndarray, n_iter: int = 25):
    """Vectorised Levenberg-Marquardt fit of B + A * Moffat to every stamp at once.

    The amplitude A and sky B enter linearly (analytic Jacobian columns); the six shape
    parameters by forward differences. Returns (p (n, 6), A, B, chi2, converged).
    """
    n, m = stamps.shape
    sw = np.sqrt(weights)
    steps = np.array([1e-3, 1e-3, 0.0, 0.0, 0.0, 1e-3])

    def full(p, a, b):
        return b[:, None] + a[:, None] * _moffat_pixels(p, dx, dy)

    p, a, b = p0.copy(), amp0.copy(), sky0.copy()
    chi2 = np.sum(((stamps - full(p, a, b)) * sw) ** 2, axis=1)
    lam = np.full(n, 1e-2)
    converged = np.zeros(n, dtype=bool)
    for _ in range(n_iter):
        base = _moffat_pixels(p, dx, dy)
        jac = np.empty((n, m, 8))
        jac[:, :, 0] = base
        jac[:, :, 1] = 1.0
        c_scale = 1e-3 * 0.5 * (p[:, 2] + p[:, 3])
        for k in range(6):
            h = np.full(n, steps[k]) if k in (0, 1) else (c_scale if k in (2, 3, 4) else steps[k] * p[:, 5])
            q = p.copy()
            q[:, k] += h
            jac[:, :, 2 + k] = a[:, None] * (_moffat_pixels(q, dx, dy) - base) / h[:, None]
        jw = jac * sw[:, :, None]
        resid = (stamps - (b[:, None] + a[:, None] * base)) * sw
        jt = jw.transpose(0, 2, 1)
        hess = jt @ jw
        grad = (jt @ resid[:, :, None])[:, :, 0]
        diag = np.einsum("nii->ni", hess)
        damped = hess + (lam[:, None] * diag)[:, :, None] * np.eye(8)[None]
        try:
            delta = np.linalg.solve(damped, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            delta = np.zeros_like(grad)
            for i in range(n):
                delta[i] = np.linalg.lstsq(damped[i], grad[i], rcond=None)[0]
        a_new, b_new = a + delta[:, 0], b + delta[:, 1]
        p_new = _constrain(p + delta[:, 2:])
        chi2_new = np.sum(((stamps - full(p_new, a_new, b_new)) * sw) ** 2, axis=1)
        better = np.isfinite(chi2_new) & (chi2_new < chi2)
        small = better & (chi2 - chi2_new < 1e-6 * chi2)
        converged |= small
        p[better], a[better], b[better] = p_new[better], a_new[better], b_new[better]
        chi2 = np.where(better, chi2_new, chi2)
        lam = np.where(better, lam * 0.2, lam * 10.0)
        if converged.all():
            break
    # A star whose step keeps being refused has reached its minimum too.
    converged |= lam > 1e6
    return p, a, b, chi2, converged


def _guess_fwhm(sci: np.ndarray, x: np.ndarray, y: np.ndarray, half: int = 15) -> float:
    """Rough FWHM (px) from the median half-light radius of stars in 31x31 stamps.

    Sky: the median of each stamp's border; total flux: within ``half`` px. Only a start
    for the fit, which converges from anywhere within a factor of ~2.
    """
    ny, nx = sci.shape
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (ix - half >= 0) & (iy - half >= 0) & (ix + half < nx) & (iy + half < ny)
    if not inside.any():
        return 3.0
    ix, iy, x, y = ix[inside], iy[inside], x[inside], y[inside]
    offs = np.arange(-half, half + 1)
    stamps = np.asarray(sci)[iy[:, None, None] + offs[None, :, None], ix[:, None, None] + offs[None, None, :]]
    stamps = stamps.astype(float).reshape(len(ix), -1)
    dyy, dxx = np.meshgrid(offs, offs, indexing="ij")
    border = ((np.abs(dxx) == half) | (np.abs(dyy) == half)).ravel()
    stamps -= np.median(stamps[:, border], axis=1)[:, None]
    r = np.hypot(dxx.ravel()[None, :] - (x - ix)[:, None], dyy.ravel()[None, :] - (y - iy)[:, None])
    order = np.argsort(r, axis=1)
    rs = np.take_along_axis(r, order, axis=1)
    cum = np.cumsum(np.take_along_axis(stamps, order, axis=1) * (rs <= half), axis=1)
    total = cum[:, -1]
    okay = total > 0
    if not okay.any():
        return 3.0
    idx = np.argmax(cum[okay] >= 0.5 * total[okay, None], axis=1)
    rhalf = rs[okay][np.arange(idx.size), idx]
    # FWHM / r_half is 1.58 for Moffat beta=3 and 2.0 for a Gaussian; the pixel-centre
    # radii overestimate r_half by ~0.3 px.
    return float(max(1.7 * (np.median(rhalf) - 0.3), 1.0))


def measure_psf(sci: np.ndarray, stars: np.ndarray, sky: SkyModel, mask: np.ndarray | None = None, *,
                err: np.ndarray | None = None, saturation: float | None = None, max_stars: int = 40,
                min_snr: float = 30.0) -> PsfStats:
    """Measure the frame's PSF size and shape from its good stars.

    A first guess of the FWHM comes from the adaptive moments of the clean detections
    (:func:`frame_fwhm`), which also leave out those much sharper (hot pixels, cosmic
    rays) or broader (galaxies) than the PSF, or streaked; stamps are +-2 of it (up to
    +-32 px). Stars used: clean sep detections (not merged, not truncated) with
    ``snr >= min_snr``, no other detection within two stamp radii, the stamp inside
    the frame, no masked pixel within 1.5 FWHM of the centre (3 % of that area for a
    broad PSF) and no saturated pixel in the stamp, peak below ``saturation``; the
    ``max_stars`` brightest of them are fitted (elliptical Moffat, free beta,
    pixel-integrated; see the module notes) and the per-star results combined by a
    median.

    When fewer than 8 stars qualify (a sparse field, a long exposure in poor seeing),
    the S/N cut drops to 20, 10 and 5, and the isolation is relaxed to neighbours of a
    tenth of the star's flux beyond 1.5 FWHM, whose cores are left out of the fit. With
    fewer than 8 good single fits, one profile is fitted to all the stars at once
    (beta fixed at 3 when they do not pin it down) and ``fwhm_scatter`` is that of the
    single fits (NaN under 3).

    Parameters
    ----------
    sci : numpy.ndarray
        Calibrated image (ADU), sky not subtracted.
    stars : numpy.ndarray
        From :func:`detect_stars` (fields x, y, snr, sep_flag used), brightest first.
    sky : SkyModel
        The frame's sky.
    mask : numpy.ndarray, optional
        Mask bits; masked pixels get no weight.
    err : numpy.ndarray, optional
        ERR plane for the fit weights (else the sky rms: unweighted per star).
    saturation : float, optional
        Stars with a pixel at or above it are left out.
    max_stars : int
        At most this many stars are fitted (cost grows linearly).
    min_snr : float
        Minimum detection S/N, lowered (to 20, 10, 5) when fewer than 8 stars reach it.

    Returns
    -------
    PsfStats
        With ``n_used = 0`` and NaN values when no star qualifies.

    Raises
    ------
    ValueError
        On a shape mismatch, or ``stars`` lacking a field.
    """
    sci = check_image("sci", sci)
    check_image("sky.sky", sky.sky, sci.shape)
    if mask is not None:
        mask = check_image("mask", mask, sci.shape)
    if err is not None:
        err = check_image("err", err, sci.shape)
    missing = [f for f in ("x", "y", "snr", "sep_flag") if f not in (stars.dtype.names or ())]
    if missing:
        raise ValueError(f"stars lacks the fields {missing}; pass the output of detect_stars")
    nan = PsfStats(float("nan"), float("nan"), 0)
    if len(stars) == 0:
        return nan
    ny, nx = sci.shape

    clean = np.flatnonzero((stars["sep_flag"] & 3) == 0)
    pool = clean[stars["snr"][clean] >= min(min_snr, _PSF_SNR_LEVELS[-1])][:_N_SIZE_STARS]
    if pool.size == 0:
        return nan
    # First guess from adaptive moments (no stamp size to guess), which also show the
    # detections sharper than the PSF (hot pixels, cosmic rays), streaked or much
    # broader (galaxies): left out.
    hide = None if mask is None else (np.asarray(mask) & _HIDE_BITS) != 0
    mom = _adaptive_moments(sci, sky.rms, hide, stars["x"][pool], stars["y"][pool], 1.0, sky=sky.sky)
    fwhm0 = frame_fwhm(mom)
    if not np.isfinite(fwhm0):
        sized = mom.ok & (mom.fwhm > _MIN_STAR_FWHM)
        fwhm0 = float(np.median(mom.fwhm[sized])) if sized.any() else _guess_fwhm(sci, stars["x"][pool[:50]],
                                                                                    stars["y"][pool[:50]])
    odd = mom.ok & ((mom.fwhm < 0.5 * fwhm0) | (mom.fwhm > 2.0 * fwhm0) | (mom.ellipticity > _POINT_MAX_ELLIPTICITY))
    pool = pool[~odd]
    half = int(np.clip(np.ceil(2.0 * fwhm0), 4, _LARGE_HALF))

    x, y = stars["x"][pool], stars["y"][pool]
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (ix - half >= 0) & (iy - half >= 0) & (ix + half < nx) & (iy + half < ny)
    if len(stars) > 1:
        tree = cKDTree(np.column_stack([stars["x"], stars["y"]]))
        k = min(len(stars), 8)
        dist, nbr = tree.query(np.column_stack([x, y]), k=k)
        dist, nbr = dist[:, 1:], nbr[:, 1:]
        nbr = np.minimum(nbr, len(stars) - 1)
        near = dist <= 2 * half
        isolated = ~near.any(axis=1)
        # Relaxed when stars are few: a neighbour under a tenth of the star's flux (a
        # noise bump, a faint star) moves a broad star's fit little, and a brighter one
        # beyond 1.5 FWHM has its own core (1 FWHM about it) left out of the fit.
        bright_nbr = near & (stars["flux"][nbr] >= 0.1 * stars["flux"][pool][:, None])
        roughly_isolated = ~(bright_nbr & (dist <= 1.5 * fwhm0)).any(axis=1)
    else:
        isolated = roughly_isolated = np.ones(pool.size, dtype=bool)
        bright_nbr = np.zeros((pool.size, 0), dtype=bool)
        nbr = np.zeros((pool.size, 0), dtype=int)

    offs = np.arange(-half, half + 1)
    dyy, dxx = np.meshgrid(offs, offs, indexing="ij")
    dxx, dyy = dxx.ravel().astype(float), dyy.ravel().astype(float)
    rows = np.clip(iy[:, None] + dyy.astype(int)[None, :], 0, ny - 1)
    cols = np.clip(ix[:, None] + dxx.astype(int)[None, :], 0, nx - 1)
    stamps = np.asarray(sci)[rows, cols].astype(float)
    good = np.isfinite(stamps)
    r2 = (dxx[None, :] - (x - ix)[:, None]) ** 2 + (dyy[None, :] - (y - iy)[:, None]) ** 2
    usable = inside.copy()
    if mask is not None:
        m = np.asarray(mask)[rows, cols]
        usable &= ~np.any((m & 2) != 0, axis=1)
        # Masked pixels weigh nothing in the fit; a few in a broad core cost little (a
        # bad-pixel map of 1 % puts 8 in a 10 px star's), but one in a 2-3 px core is a
        # fifth of it.
        core = r2 <= (1.5 * fwhm0) ** 2
        area = np.pi * (1.5 * fwhm0) ** 2
        allowed = int(0.03 * area) if area >= 100.0 else 0
        usable &= np.sum((m != 0) & core, axis=1) <= allowed
        good &= m == 0
    if saturation is not None:
        usable &= ~np.any(stamps >= saturation, axis=1)
    # The S/N cut: min_snr, lowered step by step (and the isolation relaxed) while fewer
    # than _MIN_PSF_STARS stars qualify.
    snr = stars["snr"][pool]
    for level in [min_snr] + [v for v in _PSF_SNR_LEVELS if v < min_snr]:
        choice = usable & isolated & (snr >= level)
        if choice.sum() >= _MIN_PSF_STARS:
            break
        choice = usable & roughly_isolated & (snr >= level)
        if choice.sum() >= _MIN_PSF_STARS:
            break
    sel = np.flatnonzero(choice)[:int(max_stars)]
    if sel.size == 0:
        return nan
    stamps, good, ix, iy, x, y = stamps[sel], good[sel], ix[sel], iy[sel], x[sel], y[sel]
    rows, cols = rows[sel], cols[sel]
    for i, star in enumerate(sel):
        if isolated[star]:
            continue
        for j in nbr[star][bright_nbr[star]]:
            good[i] &= (cols[i] - stars["x"][j]) ** 2 + (rows[i] - stars["y"][j]) ** 2 > fwhm0**2
    if err is not None:
        var = np.asarray(err)[rows, cols].astype(float) ** 2
    else:
        var = np.asarray(sky.rms)[rows, cols].astype(float) ** 2
    weights = np.where(good & (var > 0) & np.isfinite(var), 1.0 / np.where(var > 0, var, 1.0), 0.0)
    stamps = np.where(good, stamps, 0.0)

    alpha0 = fwhm0 / (2.0 * np.sqrt(2.0 ** (1.0 / 3.0) - 1.0))
    n = sel.size
    p0 = np.column_stack([x - ix, y - iy, np.full(n, alpha0**-2), np.full(n, alpha0**-2), np.zeros(n),
                          np.full(n, 3.0)])
    edge = (np.abs(dxx) == half) | (np.abs(dyy) == half)
    sky0 = np.median(stamps[:, edge], axis=1)
    amp0 = np.max(stamps, axis=1) - sky0
    p, amp, sky_fit, _, ok = _fit_moffat(stamps, weights, dxx[None, :], dyy[None, :], p0, amp0, sky0)

    fwhm, ell = _moffat_size(p)
    fine = (ok & (amp > 0) & np.isfinite(fwhm) & (fwhm > max(0.5 * fwhm0, _MIN_STAR_FWHM))
            & (fwhm < 4.0 * fwhm0) & (p[:, 5] > 1.1) & (p[:, 5] < 29.0))
    if fine.sum() >= _MIN_PSF_STARS or n == 1:
        if not fine.any():
            return nan
        f = fwhm[fine]
        med = float(np.median(f))
        return PsfStats(fwhm=med, ellipticity=float(np.median(ell[fine])), n_used=int(fine.sum()),
                        beta=float(np.median(p[fine, 5])), fwhm_scatter=float(1.4826 * np.median(np.abs(f - med))))

    # Few stars, most of them faint: one profile fitted to all of them at once uses the
    # light of every star, where a median of single fits leans on one or two.
    start = np.flatnonzero(fine)
    shape0 = np.median(p[start, 2:], axis=0) if start.size else p0[0, 2:]
    local = np.where(fine[:, None], p[:, :2], p0[:, :2])
    a0 = np.where(fine & (amp > 0), amp, amp0)
    b0 = np.where(fine, sky_fit, sky0)
    joint = _fit_moffat_joint(stamps, weights, dxx[None, :], dyy[None, :], local, shape0, a0, b0)
    if joint is None:
        return nan
    shape, used = joint
    jf, je = _moffat_size(np.r_[0.0, 0.0, shape][None, :])
    if not (np.isfinite(jf[0]) and max(0.5 * fwhm0, _MIN_STAR_FWHM) < jf[0] < 4.0 * fwhm0 and 1.1 < shape[3] < 29.0):
        return nan
    f = fwhm[fine]
    scatter = float(1.4826 * np.median(np.abs(f - np.median(f)))) if f.size >= 3 else float("nan")
    return PsfStats(fwhm=float(jf[0]), ellipticity=float(je[0]), n_used=int(used), beta=float(shape[3]),
                    fwhm_scatter=scatter)


def _moffat_size(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FWHM (geometric mean of the axes, px) and ellipticity of Moffat parameters ``p`` (n, 6)."""
    cxx, cyy, cxy, beta = p[:, 2], p[:, 3], p[:, 4], p[:, 5]
    # Eigenvalues of [[cxx, cxy/2], [cxy/2, cyy]]: the profile halves at Q = 2^(1/beta) - 1.
    mean_c = 0.5 * (cxx + cyy)
    diff = np.sqrt((0.5 * (cxx - cyy)) ** 2 + (0.5 * cxy) ** 2)
    lam_max, lam_min = mean_c + diff, mean_c - diff
    qhalf = 2.0 ** (1.0 / beta) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        major = np.where(lam_min > 0, 2.0 * np.sqrt(qhalf / np.where(lam_min > 0, lam_min, 1.0)), np.nan)
        minor = 2.0 * np.sqrt(qhalf / lam_max)
    return np.sqrt(major * minor), 1.0 - minor / major


def _fit_moffat_joint(stamps, weights, dx, dy, local0, shape0, amp0, sky0, n_iter: int = 40):
    """One Moffat shape (cxx, cyy, cxy, beta) fitted to all stamps, each star with its own
    centre, amplitude and sky: Levenberg-Marquardt on the normal equations, reduced to
    the 4 shared parameters (Schur complement of the per-star 4 x 4 blocks).

    Beta is fixed at ``_BETA_FIXED`` when the stars do not pin it down. Stars that fit
    much worse than the others (a galaxy, a blend) or come out negative are dropped and
    the fit repeated, once. Returns (shape (4,), stars used) or None.
    """
    keep = np.ones(len(stamps), dtype=bool)
    result = None
    for _ in range(2):
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return result
        args = (stamps[idx], weights[idx], dx, dy, local0[idx])
        fitted = _joint_lm(*args, shape0, amp0[idx], sky0[idx], n_iter)
        if fitted is None or not (fitted[3] < _BETA_REL_ERR * fitted[0][3]
                                  and _BETA_RANGE[0] <= fitted[0][3] <= _BETA_RANGE[1]):
            # Faint stars leave beta free to trade with the width (and a sky that is not
            # flat under broad wings pulls it to the edge): fix it instead.
            fixed = np.r_[np.asarray(shape0 if fitted is None else fitted[0])[:3], _BETA_FIXED]
            fitted = _joint_lm(*args, fixed, amp0[idx], sky0[idx], n_iter, free_beta=False) or fitted
        if fitted is None:
            return result
        shape, chi2_star, dof, _, amp = fitted
        red = chi2_star / np.maximum(dof, 1)
        positive = amp > 0
        if positive.any():
            result = (shape, int(positive.sum()))
            med = float(np.median(red[positive]))
            bad = ~positive | (red > med + 5.0 * max(1.4826 * float(np.median(np.abs(red[positive] - med))),
                                                     0.05 * med))
        else:
            bad = ~positive
        if not bad.any() or idx.size - bad.sum() < 1:
            break
        keep[idx[bad]] = False
        if positive.any():
            shape0 = shape
    return result


def _joint_lm(stamps, weights, dx, dy, local0, shape0, amp0, sky0, n_iter, free_beta=True):
    """Returns (shape, chi2 per star, dof per star, sigma of beta, amplitudes) or None."""
    n, m = stamps.shape
    ng = 4 if free_beta else 3
    sw = np.sqrt(weights)

    def params(local, shape):
        return np.column_stack([local, np.broadcast_to(shape, (n, 4))])

    def chi2_of(local, shape, a, b):
        model = b[:, None] + a[:, None] * _moffat_pixels(params(local, shape), dx, dy)
        return np.sum(((stamps - model) * sw) ** 2, axis=1)

    local, shape, a, b = local0.astype(float).copy(), np.asarray(shape0, float).copy(), amp0.copy(), sky0.copy()
    shape = _constrain(np.r_[0.0, 0.0, shape][None, :])[0, 2:]
    chi2 = chi2_of(local, shape, a, b)
    lam = 1e-2
    for _ in range(n_iter):
        p = params(local, shape)
        base = _moffat_pixels(p, dx, dy)
        jac = np.empty((n, m, 8))
        jac[:, :, 0] = base
        jac[:, :, 1] = 1.0
        c_scale = 1e-3 * 0.5 * (shape[0] + shape[1])
        for k, h in enumerate((1e-3, 1e-3, c_scale, c_scale, c_scale, 1e-3 * shape[3])):
            q = p.copy()
            q[:, k] += h
            jac[:, :, 2 + k] = a[:, None] * (_moffat_pixels(q, dx, dy) - base) / h
        jw = jac * sw[:, :, None]
        resid = (stamps - (b[:, None] + a[:, None] * base)) * sw
        jw = jw[:, :, :4 + ng]
        hess = jw.transpose(0, 2, 1) @ jw                   # (n, 4 + ng, 4 + ng)
        grad = np.einsum("nmk,nm->nk", jw, resid)
        h_ll, h_lg, g_l = hess[:, :4, :4], hess[:, :4, 4:], grad[:, :4]
        h_gg, g_g = hess[:, 4:, 4:].sum(axis=0), grad[:, 4:].sum(axis=0)
        damped_ll = h_ll + lam * np.einsum("nii->ni", h_ll)[:, :, None] * np.eye(4)[None]
        damped_gg = h_gg + lam * np.diag(np.diag(h_gg))
        try:
            inv_ll = np.linalg.inv(damped_ll)
            schur = damped_gg - np.einsum("nki,nkl,nlj->ij", h_lg, inv_ll, h_lg)
            rhs = g_g - np.einsum("nki,nkl,nl->i", h_lg, inv_ll, g_l)
            d_g = np.linalg.solve(schur, rhs)
        except np.linalg.LinAlgError:
            return None
        d_l = np.einsum("nij,nj->ni", inv_ll, g_l - h_lg @ d_g)
        a_new, b_new = a + d_l[:, 0], b + d_l[:, 1]
        local_new = local + d_l[:, 2:]
        shape_new = _constrain(np.r_[0.0, 0.0, shape + np.r_[d_g, np.zeros(4 - ng)]][None, :])[0, 2:]
        chi2_new = chi2_of(local_new, shape_new, a_new, b_new)
        if np.isfinite(chi2_new.sum()) and chi2_new.sum() < chi2.sum():
            small = chi2.sum() - chi2_new.sum() < 1e-7 * chi2.sum()
            local, shape, a, b, chi2 = local_new, shape_new, a_new, b_new, chi2_new
            lam *= 0.2
            if small:
                break
        else:
            lam *= 10.0
            if lam > 1e8:
                break
    beta_err = float("nan")
    if free_beta:
        try:
            # Covariance of the shared parameters: the inverse of the undamped Schur complement.
            inv_ll = np.linalg.inv(h_ll)
            cov = np.linalg.inv(h_gg - np.einsum("nki,nkl,nlj->ij", h_lg, inv_ll, h_lg))
            beta_err = float(np.sqrt(max(cov[3, 3], 0.0)))
        except np.linalg.LinAlgError:
            pass
    return shape, chi2, np.count_nonzero(weights > 0, axis=1) - 4, beta_err, a
