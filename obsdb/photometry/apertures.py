"""Aperture photometry with a local sigma-clipped annulus sky, the full error model and flags.

One function serves detections and forced photometry: :func:`measure_apertures` measures
at the given positions (``recenter=False``, forced) or re-centroids first with
``sep.winpos`` (``recenter=True``).

How the numbers are made
------------------------
- **Sums**: ``sep.sum_circle`` with exact pixel/circle overlap, every star and radius in
  one call (0.01 s for 1000 stars x 4 radii on a 2048x2048 frame).
- **Masked pixels** (bad, cosmic ray; or non-finite) are interpolated: a cubic along the
  row and column where two good pixels lie on each side, else the mean of the good
  8-neighbours (up to three passes, so short tracks and bad columns fill in from their
  sides); their variance is the neighbours' mean variance. A masked pixel on a star's
  flank costs nothing measurable; one on the very peak costs 4 % of the flux at FWHM
  2 px, 0.9 % at 3 px, 0.1 % at 4.5 px (filling with sky: 15 %, 7 %, 3 %). Pixels
  still without a good neighbour after three passes count at the local sky (no star
  flux). Either way the measurement is flagged.
- **Local sky**: the annulus pixels of every star are gathered at once into a 2-D array
  (precomputed offsets; masked and off-frame pixels excluded, and, when the detections
  are given, pixels within ``exclusion_radius`` (default: the annulus inner radius, the
  clearance the star itself gets) of another star) and sorted once per row. After
  sorting, each sigma-clipping pass keeps a contiguous slice of the row, so the median
  is one indexed read and the mean and standard deviation come from cumulative sums:
  five clipping passes over 1000 stars cost what one ``nanmedian`` would.
- **Sky estimator**: the clipped **mean** by default. What the aperture needs is the
  expected sky per pixel, and the sky's Poisson noise is skewed: the median of a
  Poisson-dominated sky sits 1 / (6 gain) ADU below its mean (0.11 ADU at gain 1.5;
  measured over 2352 synthetic stars: -0.12 sky errors, against -0.06 for the clipped
  mean; a bias of -(area / 6 gain) ADU on every flux, 2 % of an S/N 8 star in a 3 FWHM
  aperture), and SExtractor's mode
  2.5 median - 1.5 mean three times that. The mean is also the least noisy (sigma/sqrt(n),
  against 1.25 for the median and 2.1 for the mode) and includes the light of unresolved
  faint sources, which is under the star as well. Its weakness, the wings of bright
  neighbours below the clipping level, is what the neighbour exclusion removes: a 5x
  brighter neighbour in the middle of the annulus biases the clipped mean by 2.9 sky
  errors without it, 0.5 with it (the median: 1.7 and 0.2). ``sky_estimator='median'``
  or ``'mode'`` remain available.
- **Error model**, per star and aperture of area A::

      var = sum(err^2 over the aperture) + (A * bkg_err)^2 + (scintillation * flux)^2

  ``err`` already holds read noise and the Poisson noise of star, sky and dark current.
  ``bkg_err`` is the error of the sky level: clipped std / sqrt(n_sky) for the mean (times
  sqrt(pi/2) for the median, 2.14 for the mode, their efficiencies for Gaussian noise).
  Pixels of a calibrated, unresampled frame are independent, so no correlation factor
  applies; a resampled (registered) frame would need one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import sep
from scipy.spatial import cKDTree

from obsdb.photometry import flags as F
from obsdb.photometry.background import SkyModel, as_sep_array, check_image

__all__ = ["ApertureResult", "measure_apertures"]

#: Mask bits replaced by interpolation inside apertures: bad (1) and cosmic ray (4).
_FILL_BITS = 1 | 4
#: A neighbour closer than this to the star is the star itself (its own detection).
_SELF_MATCH_PX = 1.0
#: Error of the sky estimators for n Gaussian values, in units of sigma / sqrt(n): the mean
#: 1, the median sqrt(pi/2), the mode 2.5 median - 1.5 mean sqrt(6.25 pi/2 + 2.25 - 7.5).
_EFFICIENCY = {"mean": 1.0, "median": float(np.sqrt(np.pi / 2.0)),
               "mode": float(np.sqrt(6.25 * np.pi / 2.0 + 2.25 - 7.5))}
#: Fewer clipped annulus pixels than this and the local sky is undefined (NaN).
_MIN_SKY_PIXELS = 10
#: Elements per gathered (stars x pixels) block; bounds memory for crowded frames.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class ApertureResult:
    """Photometry of n stars in k apertures.

    Attributes
    ----------
    x, y : numpy.ndarray
        (n,) positions measured at (0-based pixels; re-centred when asked).
    flux, flux_err, snr : numpy.ndarray
        (n, k) sky-subtracted flux (ADU), its 1-sigma error, and flux / flux_err.
    flags : numpy.ndarray
        (n, k) int32 flag bits (:mod:`obsdb.photometry.flags`).
    bkg, bkg_err : numpy.ndarray
        (n,) local sky per pixel (ADU) and the error of that sky level.
    n_sky : numpy.ndarray
        (n,) annulus pixels kept after clipping.
    radii : numpy.ndarray
        (k,) aperture radii (px).
    annulus : tuple of float
        (r_in, r_out) of the sky annulus (px).
    shift : numpy.ndarray
        (n,) distance between the input and the re-centred position (0 when not re-centred).
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    flags: np.ndarray
    snr: np.ndarray
    bkg: np.ndarray
    bkg_err: np.ndarray
    n_sky: np.ndarray
    radii: np.ndarray
    annulus: tuple[float, float]
    shift: np.ndarray

    def take(self, index) -> ApertureResult:
        """The stars ``index`` (an index or boolean array), in that order."""
        return replace(self, **{name: getattr(self, name)[index] for name in _PER_STAR})

    def append(self, other: ApertureResult) -> ApertureResult:
        """These stars followed by ``other``'s, measured with the same apertures."""
        if not np.array_equal(self.radii, other.radii) or self.annulus != other.annulus:
            raise ValueError("cannot join photometry made with different apertures")
        return replace(self, **{name: np.concatenate([getattr(self, name), getattr(other, name)])
                                for name in _PER_STAR})


#: ApertureResult's per-star fields (first axis: the star).
_PER_STAR = ("x", "y", "flux", "flux_err", "flags", "snr", "bkg", "bkg_err", "n_sky", "shift")


def _check_inputs(sci, err, mask, x, y, radii, annulus, scintillation, neighbours_xy, saturation):
    sci = check_image("sci", sci)
    err = check_image("err", err, sci.shape)
    if mask is not None:
        mask = check_image("mask", mask, sci.shape)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D arrays of the same length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (drop positions that failed to transform)")
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    if radii.ndim != 1 or radii.size == 0:
        raise ValueError("radii must be a non-empty 1-D sequence of aperture radii")
    if not (np.isfinite(radii).all() and (radii > 0).all()):
        raise ValueError(f"radii must be finite and > 0, got {radii.tolist()}")
    if np.any(np.diff(radii) <= 0):
        raise ValueError(f"radii must be strictly increasing, got {radii.tolist()}")
    try:
        r_in, r_out = (float(v) for v in annulus)
    except (TypeError, ValueError):
        raise ValueError(f"annulus must be a pair (r_in, r_out), got {annulus!r}") from None
    if not r_in >= radii[-1]:
        raise ValueError(f"annulus inner radius {r_in} lies inside the largest aperture ({radii[-1]} px); "
                         "the sky would include the star")
    if not r_out > r_in:
        raise ValueError(f"annulus outer radius {r_out} must exceed the inner radius {r_in}")
    scint = np.asarray(scintillation, dtype=float)
    if scint.ndim > 1 or (scint.ndim == 1 and scint.size != x.size):
        raise ValueError(f"scintillation must be a scalar or one value per star ({x.size}), got shape {scint.shape}")
    if not (np.isfinite(scint).all() and (scint >= 0).all()):
        raise ValueError("scintillation must be finite and >= 0")
    scint = np.broadcast_to(scint, x.shape)
    if neighbours_xy is not None:
        neighbours_xy = np.asarray(neighbours_xy, dtype=float)
        if neighbours_xy.size == 0:
            neighbours_xy = np.zeros((0, 2))
        if neighbours_xy.ndim != 2 or neighbours_xy.shape[1] != 2:
            raise ValueError(f"neighbours_xy must have shape (m, 2), got {neighbours_xy.shape}")
    if saturation is not None and not np.isfinite(saturation):
        raise ValueError(f"saturation must be a finite number or None, got {saturation}")
    return sci, err, mask, x, y, radii, (r_in, r_out), scint, neighbours_xy


def _fill_masked(data: np.ndarray, var: np.ndarray, hide: np.ndarray, passes: int = 3):
    """Replace hidden pixels of ``data`` and ``var`` (both owned by the caller) in place.

    First pass: where a row or column has two good pixels on each side, the cubic
    through them, (-f[-2] + 4 f[-1] + 4 f[+1] - f[+2]) / 6 (the mean of the row and
    column estimates when both exist). A star's core is concave: the plain mean of the
    8 neighbours loses ~35 % of a peak pixel at FWHM 3 px, the cubic ~12 %. Every other
    hidden pixel with a good 8-neighbour gets their mean; filled pixels count as good in
    the next pass. Variances: the mean of the good 8-neighbours' (or of the cubic's
    four). Returns the boolean image of pixels still unfilled, or None.
    """
    ny, nx = data.shape
    iy, ix = np.divmod(_flat_true(hide), nx)
    good = ~hide

    def sample(dy: int, dx: int):
        yy, xx = iy + dy, ix + dx
        inb = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
        return inb & good[yy, xx], data[yy, xx].astype(np.float64), var[yy, xx].astype(np.float64)

    for n_pass in range(passes):
        if iy.size == 0:
            return None
        acc = np.zeros(iy.size)
        acc_v = np.zeros(iy.size)
        cnt = np.zeros(iy.size)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    g, v, w = sample(dy, dx)
                    acc += np.where(g, v, 0.0)
                    acc_v += np.where(g, w, 0.0)
                    cnt += g
        with np.errstate(invalid="ignore", divide="ignore"):
            value, variance = acc / cnt, acc_v / cnt
        ok = cnt > 0
        if n_pass == 0:
            est = np.zeros(iy.size)
            est_v = np.zeros(iy.size)
            n_est = np.zeros(iy.size)
            for uy, ux in ((0, 1), (1, 0)):
                parts = [sample(k * uy, k * ux) for k in (-2, -1, 1, 2)]
                both = parts[0][0] & parts[1][0] & parts[2][0] & parts[3][0]
                cubic = (-parts[0][1] + 4 * parts[1][1] + 4 * parts[2][1] - parts[3][1]) / 6.0
                est += np.where(both, cubic, 0.0)
                est_v += np.where(both, sum(p[2] for p in parts) / 4.0, 0.0)
                n_est += both
            use = n_est > 0
            value = np.where(use, est / np.maximum(n_est, 1), value)
            variance = np.where(use & ~ok, est_v / np.maximum(n_est, 1), variance)
            ok |= use
        data[iy[ok], ix[ok]] = value[ok]
        var[iy[ok], ix[ok]] = variance[ok]
        good[iy[ok], ix[ok]] = True
        iy, ix = iy[~ok], ix[~ok]
    if iy.size == 0:
        return None
    rest = np.zeros(data.shape, dtype=np.float32)
    rest[iy, ix] = 1.0
    data[iy, ix] = 0.0
    var[iy, ix] = 0.0
    return rest


def _flat_true(flags: np.ndarray) -> np.ndarray:
    """Flat indices of the True pixels of a sparse boolean image.

    Eight pixels are tested at a time as one 64-bit word: np.nonzero on the whole frame
    takes 5 ms for a 2048 x 2048 mask, this a tenth of that.
    """
    flat = np.ascontiguousarray(flags, dtype=bool).reshape(-1).view(np.uint8)
    cut = flat.size - flat.size % 8
    words = np.flatnonzero(flat[:cut].view(np.uint64))
    cand = (words[:, None] * 8 + np.arange(8)).ravel()
    return np.concatenate([cand[flat[cand] != 0], cut + np.flatnonzero(flat[cut:])])


def _offsets(r_lo: float, r_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer (dy, dx) offsets whose distance from a centre within half a pixel of (0, 0)
    can fall in [r_lo, r_hi]."""
    h = int(np.ceil(r_hi + 1))
    dy, dx = np.mgrid[-h:h + 1, -h:h + 1]
    d = np.hypot(dx, dy)
    sel = (d <= r_hi + 0.75) & (d >= r_lo - 0.75)
    return dy[sel].astype(np.int64), dx[sel].astype(np.int64)


def _stencil(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, dy: np.ndarray, dx: np.ndarray):
    """Flat pixel indices around each star (rounded centre + offsets), for ``ravel().take``.

    Returns (idx, inside, d2): (n, m) flat indices (clipped into the frame), the in-frame
    flag (None when every pixel is inside) and squared distances from the exact centre
    (float32: compared with radii, they need no more).
    """
    ny, nx = shape
    ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    fx, fy = (x - ix).astype(np.float32), (y - iy).astype(np.float32)
    d2 = np.square(dx.astype(np.float32)[None, :] - fx[:, None])
    d2 += np.square(dy.astype(np.float32)[None, :] - fy[:, None])
    idx = (iy * nx + ix)[:, None] + (dy * nx + dx)[None, :]
    h = int(max(np.abs(dx).max(initial=0), np.abs(dy).max(initial=0)))
    edge = np.flatnonzero((ix - h < 0) | (iy - h < 0) | (ix + h >= nx) | (iy + h >= ny))
    if edge.size == 0:
        return idx, None, d2
    # Only the few stars near the border need their pixels clipped into the frame.
    rows = iy[edge, None] + dy[None, :]
    cols = ix[edge, None] + dx[None, :]
    inside = np.ones(idx.shape, dtype=bool)
    inside[edge] = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    idx[edge] = np.clip(rows, 0, ny - 1) * nx + np.clip(cols, 0, nx - 1)
    return idx, inside, d2


def _clipped_sky(sci, mask, x, y, r_in, r_out, sigma, iters, *, estimator="mean", neighbours=None,
                 exclusion=0.0):
    """Sigma-clipped sky, its error and pixel count, for every star (see module notes)."""
    dy, dx = _offsets(r_in, r_out)
    n = x.size
    bkg = np.full(n, np.nan)
    bkg_err = np.full(n, np.nan)
    n_sky = np.zeros(n, dtype=np.int64)
    flat = np.ravel(sci)
    flat_mask = None if mask is None else np.ravel(mask)
    tree = cKDTree(neighbours) if neighbours is not None and len(neighbours) and exclusion > 0 else None
    chunk = max(1, _CHUNK_ELEMENTS // max(dy.size, 1))
    for start in range(0, n, chunk):
        s = slice(start, min(start + chunk, n))
        idx, inside, d2 = _stencil(sci.shape, x[s], y[s], dy, dx)
        # Kept in the frame's own type (float32 for obsdb's frames: half the bytes to sort);
        # the sums below run in float64.
        vals = flat.take(idx)
        if vals.dtype.kind != "f":
            vals = vals.astype(np.float64)
        use = (d2 >= r_in * r_in) & (d2 <= r_out * r_out) & np.isfinite(vals)
        if inside is not None:
            use &= inside
        if flat_mask is not None:
            use &= flat_mask.take(idx) == 0
        if tree is not None:
            use = _exclude_neighbours(use, tree, neighbours, x[s], y[s], dy, dx, r_out, exclusion)
        np.putmask(vals, ~use, np.inf)
        vals.sort(axis=1)
        lo = np.zeros(vals.shape[0], dtype=np.int64)
        hi = use.sum(axis=1)
        rows = np.arange(vals.shape[0])
        # Cumulative sums about a per-row reference (the first median) keep the variance
        # from cancelling in float64.
        mid = np.clip(hi // 2, 0, vals.shape[1] - 1)
        ref = np.where(hi > 0, vals[rows, mid], 0.0)
        centred = (vals - ref[:, None].astype(vals.dtype)).astype(np.float64)
        finite = np.isfinite(centred)
        # The rows laid end to end on one axis, row r shifted by r * span (its padding
        # sorted last within it): each clipping pass then counts the values beyond its
        # thresholds with one binary search per row instead of a pass over every pixel.
        reach = float(np.max(np.abs(centred), where=finite, initial=0.0)) + 1.0
        span = 2.0 * reach + 1.0
        base = rows * span
        keys = np.where(finite, centred, reach)
        keys += base[:, None]
        keys = keys.ravel()
        starts = rows * vals.shape[1]

        def count_below(threshold, side):
            t = np.clip(np.nan_to_num(threshold - ref, nan=-reach), -reach, reach - 0.5)
            return np.searchsorted(keys, t + base, side=side) - starts

        np.putmask(centred, ~finite, 0.0)
        c1 = np.empty((vals.shape[0], vals.shape[1] + 1))
        c2 = np.empty_like(c1)
        c1[:, 0] = c2[:, 0] = 0.0
        np.cumsum(centred, axis=1, out=c1[:, 1:])
        np.square(centred, out=centred)
        np.cumsum(centred, axis=1, out=c2[:, 1:])
        for it in range(iters + 1):
            cnt = hi - lo
            okay = cnt > 0
            safe = np.maximum(cnt, 1)
            a = np.clip((lo + hi - 1) // 2, 0, vals.shape[1] - 1)
            b = np.clip((lo + hi) // 2, 0, vals.shape[1] - 1)
            med = np.where(okay, 0.5 * (vals[rows, a] + vals[rows, b]), np.nan)
            s1 = c1[rows, hi] - c1[rows, lo]
            s2 = c2[rows, hi] - c2[rows, lo]
            mean_c = s1 / safe
            std = np.sqrt(np.maximum(s2 / safe - mean_c**2, 0.0))
            if it == iters:
                break
            new_lo = np.maximum(lo, count_below(med - sigma * std, "left"))     # values < threshold
            new_hi = np.minimum(hi, count_below(med + sigma * std, "right"))   # values <= threshold
            step = okay & (std > 0)
            new_lo = np.where(step, new_lo, lo)
            new_hi = np.where(step, np.maximum(new_hi, new_lo), hi)
            if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
                break
            lo, hi = new_lo, new_hi
        cnt = hi - lo
        enough = cnt >= _MIN_SKY_PIXELS
        mean = ref + mean_c
        level = {"mean": mean, "median": med, "mode": 2.5 * med - 1.5 * mean}[estimator]
        bkg[s] = np.where(enough, level, np.nan)
        bkg_err[s] = np.where(enough, _EFFICIENCY[estimator] * std / np.sqrt(np.maximum(cnt, 1)), np.nan)
        n_sky[s] = cnt
    return bkg, bkg_err, n_sky


def _exclude_neighbours(use, tree, neighbours, x, y, dy, dx, r_out, exclusion):
    """``use`` without the annulus pixels within ``exclusion`` of another star.

    A row keeps its full annulus when the exclusion would leave fewer than a quarter of
    its pixels (a crowded field: clipping alone has to do).
    """
    k = min(8, len(neighbours))
    dist, which = tree.query(np.column_stack([x, y]), k=k, distance_upper_bound=r_out + exclusion)
    dist, which = dist.reshape(x.size, k), which.reshape(x.size, k)
    other = np.isfinite(dist) & (dist > _SELF_MATCH_PX)
    if not other.any():
        return use
    # One (star, neighbour) pair per row, grouped by star: each pair costs one pass over
    # the star's annulus, and most stars have one neighbour or none.
    star, slot = np.nonzero(other)
    nb = neighbours[which[star, slot]]
    ox = (np.rint(x[star]) - nb[:, 0]).astype(np.float32)[:, None] + dx.astype(np.float32)[None, :]
    oy = (np.rint(y[star]) - nb[:, 1]).astype(np.float32)[:, None] + dy.astype(np.float32)[None, :]
    near = np.square(ox, out=ox) + np.square(oy, out=oy) < exclusion * exclusion
    rows, first = np.unique(star, return_index=True)
    keep = use[rows] & ~np.logical_or.reduceat(near, first, axis=0)
    enough = keep.sum(axis=1) >= 0.25 * use[rows].sum(axis=1)
    out = use.copy()
    out[rows[enough]] = keep[enough]
    return out


def _pixel_flags(sci, mask, x, y, radii, saturation):
    """Flag bits from the pixels each aperture touches (centre within r + 0.5 px)."""
    n, k = x.size, radii.size
    out = np.zeros((n, k), dtype=np.int32)
    if mask is None and saturation is None:
        return out
    dy, dx = _offsets(0.0, radii[-1] + 0.5)
    chunk = max(1, _CHUNK_ELEMENTS // max(dy.size, 1))
    for start in range(0, n, chunk):
        s = slice(start, min(start + chunk, n))
        idx, inside, d2 = _stencil(sci.shape, x[s], y[s], dy, dx)
        bits = np.zeros(idx.shape, dtype=np.int32)
        if mask is not None:
            m = np.ravel(mask).take(idx).astype(np.int32)
            bits |= np.where(m & 1, F.BAD_PIXEL, 0) | np.where(m & 2, F.SATURATED, 0)
            bits |= np.where(m & 4, F.COSMIC_RAY, 0)
        if saturation is not None:
            bits |= np.where(np.ravel(sci).take(idx) >= saturation, F.SATURATED, 0)
        if inside is not None:
            bits[~inside] = 0
        rows = np.flatnonzero(bits.any(axis=1))
        if rows.size == 0:
            continue
        bits, d2 = bits[rows], d2[rows]
        # Smallest aperture each pixel touches; OR per aperture, then accumulate outwards.
        first = np.searchsorted((radii + 0.5) ** 2, d2, side="left")
        acc = np.zeros(rows.size, dtype=np.int32)
        for j in range(k):
            acc |= np.bitwise_or.reduce(np.where(first == j, bits, 0), axis=1)
            out[start + rows, j] = acc
    return out


def _sum_circles(image: np.ndarray, x: np.ndarray, y: np.ndarray, radii: np.ndarray, var=None, err=None):
    """(n, k) exact-overlap sums (and errors when ``var`` or ``err`` is given) in one sep call.

    sep broadcasts only 1-D inputs, so every (star, radius) pair is flattened.
    """
    n, k = x.size, radii.size
    total, error, _ = sep.sum_circle(image, np.repeat(x, k), np.repeat(y, k), np.tile(radii, n), var=var, err=err,
                                     subpix=0)
    noisy = var is not None or err is not None
    return total.reshape(n, k), (np.asarray(error).reshape(n, k) if noisy else None)


def measure_apertures(sci: np.ndarray, err: np.ndarray, mask: np.ndarray | None, x, y, *, radii,
                      annulus: tuple[float, float], neighbours_xy=None, saturation: float | None = None,
                      scintillation=0.0, recenter: bool = False, sky: SkyModel | np.ndarray | None = None,
                      fwhm: float | None = None, max_shift: float = 1.0, clip_sigma: float = 3.0,
                      clip_iters: int = 5, sky_estimator: str = "mean",
                      exclusion_radius: float | None = None) -> ApertureResult:
    """Aperture photometry of stars at given positions, with local sky and full errors.

    Parameters
    ----------
    sci, err : numpy.ndarray
        Calibrated image and its 1-sigma error plane (ADU), sky not subtracted.
    mask : numpy.ndarray or None
        Mask bits: 1 bad, 2 saturated, 4 cosmic ray. Masked pixels never enter the sky;
        bad and cosmic pixels in an aperture are interpolated (see the module notes).
    x, y : array_like
        0-based pixel positions (centre of the first pixel = 0, as sep and astropy's
        ``origin=0``).
    radii : sequence of float
        Aperture radii (px), strictly increasing.
    annulus : (float, float)
        Inner and outer radius of the sky annulus (px); the inner one at least the
        largest aperture radius.
    neighbours_xy : array_like, optional
        (m, 2) positions of all detected stars: one within an aperture radius (other
        than the star itself, within 1 px) sets BLENDED for that aperture, and annulus
        pixels within ``exclusion_radius`` of one are left out of the sky.
    saturation : float, optional
        Pixel value (calibrated ADU) from which a pixel counts as saturated, on top of
        mask bit 2.
    scintillation : float or array_like
        Relative flux sigma from scintillation, scalar or one per star
        (:func:`obsdb.photometry.scintillation.scintillation_sigma`).
    recenter : bool
        Re-centroid with ``sep.winpos`` before measuring; a shift beyond ``max_shift``
        (or a failed centroid) keeps the input position and sets CENTROID_SHIFT.
    sky : SkyModel or numpy.ndarray, optional
        Sky to subtract before re-centring; without it the median local sky of all
        stars is used.
    fwhm : float, optional
        PSF FWHM (px) for the centroid window; default the smallest radius.
    max_shift : float
        Tolerance (px) of the re-centring.
    clip_sigma, clip_iters : float, int
        Sigma-clipping of the annulus (symmetric, median centre, standard deviation).
    sky_estimator : {"mean", "median", "mode"}
        Statistic of the clipped annulus pixels (see the module notes).
    exclusion_radius : float, optional
        Radius around other stars excluded from the annulus; default the annulus inner
        radius; 0 turns it off. An annulus that would keep less than a quarter of its
        pixels keeps them all.

    Returns
    -------
    ApertureResult

    Raises
    ------
    ValueError
        On shape mismatches, empty or non-increasing radii, an annulus inside the
        aperture, non-finite positions, or a bad ``scintillation``.
    """
    sci, err, mask, x, y, radii, (r_in, r_out), scint, neighbours_xy = _check_inputs(
        sci, err, mask, x, y, radii, annulus, scintillation, neighbours_xy, saturation)
    if recenter and not max_shift > 0:
        raise ValueError(f"max_shift must be > 0, got {max_shift}")
    if sky_estimator not in _EFFICIENCY:
        raise ValueError(f"sky_estimator must be one of {sorted(_EFFICIENCY)}, got {sky_estimator!r}")
    if not clip_sigma > 0 or int(clip_iters) != clip_iters or clip_iters < 0:
        raise ValueError(f"clip_sigma must be > 0 and clip_iters an integer >= 0, got {clip_sigma}, {clip_iters}")
    exclusion = r_in if exclusion_radius is None else float(exclusion_radius)
    if not exclusion >= 0:
        raise ValueError(f"exclusion_radius must be >= 0, got {exclusion_radius}")
    sky_kw = dict(estimator=sky_estimator, neighbours=neighbours_xy, exclusion=exclusion)
    ny, nx = sci.shape
    n, k = x.size, radii.size

    # The image that is summed: masked pixels interpolated, in copies (sci and err stay as
    # given); without anything to fill, sep reads the inputs themselves.
    data = as_sep_array(sci)
    noise = as_sep_array(err)
    hide = None if mask is None else (np.asarray(mask) & _FILL_BITS) != 0
    unmasked_bad = None
    if not (np.isfinite(data).all() and np.isfinite(noise).all()):
        unmasked_bad = ~np.isfinite(data) | ~np.isfinite(noise)
        hide = unmasked_bad if hide is None else hide | unmasked_bad
    rest = None
    if hide is not None and hide.any():
        data = data.copy()
        var = np.square(noise)
        rest = _fill_masked(data, var, hide)
    else:
        var = None

    flags = np.zeros((n, k), dtype=np.int32)
    shift = np.zeros(n)
    if recenter and n:
        if isinstance(sky, SkyModel):
            sky = sky.sky
        if sky is not None:
            back = data - check_image("sky", sky, sci.shape)
        else:
            level, _, _ = _clipped_sky(sci, mask, x, y, r_in, r_out, clip_sigma, clip_iters, **sky_kw)
            back = data - np.float32(np.nanmedian(level) if np.isfinite(level).any() else 0.0)
        sig = (float(fwhm) if fwhm else float(radii[0])) / 2.3548
        xw, yw, wflag = sep.winpos(back, x, y, np.full(n, sig), subpix=5)
        shift = np.hypot(xw - x, yw - y)
        moved = (wflag == 0) & np.isfinite(shift) & (shift <= max_shift)
        flags[~moved] |= F.CENTROID_SHIFT
        x = np.where(moved, xw, x)
        y = np.where(moved, yw, y)

    bkg, bkg_err, n_sky = _clipped_sky(sci, mask, x, y, r_in, r_out, clip_sigma, clip_iters, **sky_kw)

    xs, ys, rs = x[:, None], y[:, None], radii[None, :]
    total, sum_err = _sum_circles(data, x, y, radii, var=var, err=noise if var is None else None)
    edge = (xs - rs < -0.5) | (ys - rs < -0.5) | (xs + rs > nx - 0.5) | (ys + rs > ny - 0.5)
    area = np.broadcast_to(np.pi * rs**2, (n, k)).copy()
    if edge.any():
        # Only the part of the aperture inside the frame holds sky to subtract.
        rows = np.flatnonzero(edge.any(axis=1))
        ones = np.ones(sci.shape, dtype=np.float32)
        area[rows] = _sum_circles(ones, x[rows], y[rows], radii)[0]
        flags[edge] |= F.EDGE
    sky_area = area
    if rest is not None:
        # The unfilled pixels count at the local sky: no sky to remove there.
        sky_area = area - _sum_circles(rest, x, y, radii)[0]
    flux = total - bkg[:, None] * sky_area
    variance = sum_err**2 + (area * bkg_err[:, None]) ** 2 + (scint[:, None] * flux) ** 2
    flux_err = np.sqrt(variance)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, np.nan)

    flags |= _pixel_flags(sci, mask, x, y, radii, saturation)
    if unmasked_bad is not None:
        # Non-finite pixels without a mask bit: report as bad pixels.
        frac = _sum_circles(unmasked_bad.astype(np.float32), x, y, radii + 0.5)[0]
        flags[frac > 0] |= F.BAD_PIXEL
    flags[~np.isfinite(bkg)] |= F.BAD_PIXEL
    if neighbours_xy is not None and len(neighbours_xy) and n:
        tree = cKDTree(neighbours_xy)
        kk = min(16, len(neighbours_xy))
        dist, _ = tree.query(np.column_stack([x, y]), k=kk, distance_upper_bound=radii[-1])
        dist = dist.reshape(n, kk)
        other = np.isfinite(dist) & (dist > _SELF_MATCH_PX)
        for j in range(k):
            flags[np.any(other & (dist < radii[j]), axis=1), j] |= F.BLENDED
    with np.errstate(invalid="ignore"):
        flags[~(snr >= 5.0)] |= F.LOW_SNR

    return ApertureResult(x=x, y=y, flux=flux, flux_err=flux_err, flags=flags, snr=snr, bkg=bkg, bkg_err=bkg_err,
                          n_sky=n_sky, radii=radii, annulus=(r_in, r_out), shift=shift)
