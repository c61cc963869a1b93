"""Refine a rough WCS against a reference catalog: find the offset, match, fit, check.

How :func:`refine_wcs` works
----------------------------
1. The catalog stars near the frame are projected through the initial WCS.
2. **Coarse offset.** The brightest ~100 detections and the brightest ~200 catalog
   stars of the (enlarged) footprint are paired within ``search_radius_px``; every pair
   votes for the shift that would superpose it, for each rotation on a grid over
   +-``max_rotation_deg`` (fine enough that a rotation between two grid steps moves the
   frame corners by less than one 2-pixel bin). The peak of the votes is the shift and
   rotation; it must stand far above the votes chance pairings give, else the frame is
   not solved (wrong pointing, wrong field, clouds). Voting uses every star pair in
   the window, so it works with a dozen stars and with catalogs that are much deeper
   or shallower than the detections, where triangle (asterism) matching of two
   unequal lists often finds nothing.
3. **Iteration.** Catalog stars are predicted in pixels, matched one-to-one to their
   nearest detection within a radius, a polynomial from the tangent plane to pixels is
   fitted (linear first: that is TAN), 3-sigma outliers are clipped, and the radius
   shrinks to five times the scatter (not below ``MIN_RADIUS_PX``) until the matches do
   not change. With ``sip=True`` and enough well-spread matches, a SIP degree (2 or 3)
   is then chosen by the Bayesian information criterion and the iteration repeated.
4. **Fit and checks.** :func:`obsdb.astrometry.fit.fit_wcs` fits the final matches;
   the solution must have ``min_matches`` matches, far more than chance would give at
   the final radius, an rms under ``max_rms_px`` and a pixel scale within
   ``MAX_SCALE_CHANGE`` of the initial WCS.

Proper motion: ``ref_ra``/``ref_dec`` must already be at the epoch of the frame; the
caller applies it (the catalog module knows the epochs, this module does not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import stats
from scipy.spatial import cKDTree

from obsdb.astrometry.errors import AstrometryError
from obsdb.astrometry.fit import (
    MIN_STARS_FOR_SIP,
    _design,
    _powers,
    _tangent,
    apply_sip,
    fit_wcs,
    residuals,
    sip_allowed,
)
from obsdb.astrometry.initial import _check_shape

__all__ = ["MAX_RMS_PX", "MAX_SCALE_CHANGE", "MIN_RADIUS_PX", "Solution", "refine_wcs"]

#: Default largest rms (pixels) of the matched stars: more means wrong matches or
#: centroids too poor to trust.
MAX_RMS_PX = 1.0
#: Largest relative change of the pixel scale from the initial WCS that is accepted.
MAX_SCALE_CHANGE = 0.03
#: The matching radius never shrinks below this (pixels): well below it, good matches
#: of faint stars in poor seeing would be lost.
MIN_RADIUS_PX = 1.0

_N_BRIGHT_DET = 100
_N_BRIGHT_CAT = 200
_VOTE_BIN_PX = 2.0
#: A coarse solution must be less likely than this to come from chance pairings,
#: all trial rotations and shifts counted.
_FALSE_ALARM = 1e-4
_MIN_VOTES = 4
_CLIP_SIGMA = 3.0
_MAX_ITER = 30


@dataclass(frozen=True, eq=False)
class Solution:
    """A solved frame.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Fitted TAN or TAN-SIP WCS (``CRPIX`` at the frame centre).
    rms_px : float
        Rms of the 2-D residuals of the matched stars, pixels (weighted by the inverse
        variance of their positions when they are weighted, as
        :func:`~obsdb.astrometry.align.align_to_reference` does).
    rms_arcsec : float
        The same in arcseconds.
    n_matches : int
        Number of one-to-one matches the WCS was fitted to.
    det_index : ndarray of int
        Index of each matched star in the frame's detection list.
    ref_index : ndarray of int
        Index of its counterpart in the reference list (catalog, or the reference
        frame's detections for :func:`obsdb.astrometry.align.align_to_reference`).
    method : str
        How it was solved, e.g. ``'vote+tan'`` or ``'align-pairs+tan-sip3'``.
    """

    wcs: WCS
    rms_px: float
    rms_arcsec: float
    n_matches: int
    det_index: np.ndarray
    ref_index: np.ndarray
    method: str


# -- input checks --------------------------------------------------------------------------


def _as_arrays(names: str, *arrays) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=float).ravel() for a in arrays]
    if len({len(a) for a in out}) > 1:
        raise ValueError(f"{names} must have the same length, got " + ", ".join(str(len(a)) for a in out))
    return out


def _pixel_scale_deg(wcs: WCS) -> float:
    return float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial))))


# -- coarse offset by voting -----------------------------------------------------------------


def _vote_offset(det_xy, cat_xy, centre, window, max_rotation_deg, half_diag):
    """Rotation (deg, about ``centre``) and shift taking catalog pixels onto detections.

    Returns ``(rotation_deg, shift, votes, expected, trials)``: ``votes`` is the number
    of pairs in the peak (about the number of stars that agree), ``expected`` its mean
    from chance pairings and ``trials`` the number of (rotation, shift) cells tried;
    None when no pair falls in the window.
    """
    pairs = cKDTree(det_xy).sparse_distance_matrix(cKDTree(cat_xy), window, output_type="ndarray")
    if len(pairs) == 0:
        return None
    i, j = pairs["i"], pairs["j"]
    step = math.degrees(_VOTE_BIN_PX / half_diag)
    n_half = int(math.ceil(max_rotation_deg / step)) if max_rotation_deg > 0 else 0
    angles = np.linspace(-n_half * step, n_half * step, 2 * n_half + 1)
    t = np.radians(angles)[:, None]
    cx, cy = cat_xy[j, 0] - centre[0], cat_xy[j, 1] - centre[1]
    dx = det_xy[i, 0] - centre[0] - (np.cos(t) * cx - np.sin(t) * cy)
    dy = det_xy[i, 1] - centre[1] - (np.sin(t) * cx + np.cos(t) * cy)
    nb = int(math.ceil(2 * window / _VOTE_BIN_PX)) + 1
    ix = np.floor((dx + window) / _VOTE_BIN_PX).astype(int)
    iy = np.floor((dy + window) / _VOTE_BIN_PX).astype(int)
    inside = (ix >= 0) & (ix < nb) & (iy >= 0) & (iy < nb)
    k = np.broadcast_to(np.arange(len(angles))[:, None], ix.shape)
    flat = np.ravel_multi_index((k[inside], iy[inside], ix[inside]), (len(angles), nb, nb))
    hist = np.bincount(flat, minlength=len(angles) * nb * nb).reshape(len(angles), nb, nb).astype(np.int32)
    # A 3 x 3 block of bins catches a peak split across bin edges: sums of shifted slices
    # of the zero-padded counts (integers: a third of the time of a float filter).
    pad = np.pad(hist, ((0, 0), (1, 1), (1, 1)))
    rows = pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]
    block = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    best = np.unravel_index(int(np.argmax(block)), block.shape)
    votes = float(block[best])
    expected = 9.0 * len(pairs) / (math.pi * (window / _VOTE_BIN_PX) ** 2)
    a = best[0]
    near = (np.abs(ix[a] - best[2]) <= 1) & (np.abs(iy[a] - best[1]) <= 1)
    shift = np.array([np.median(dx[a][near]), np.median(dy[a][near])])
    return float(angles[a]), shift, votes, expected, len(angles) * nb * nb


def _false_alarm(votes: float, expected: float, trials: int) -> float:
    return float(min(1.0, stats.poisson.sf(votes - 1, max(expected, 1e-9)) * trials))


# -- matching and fitting ------------------------------------------------------------------


def _match(pred_xy, det_tree, radius):
    """One-to-one nearest-neighbour matches (catalog row, detection row) within radius.

    ``radius`` is one number, or one per catalog star.
    """
    radius = np.asarray(radius, dtype=float)
    dist, j = det_tree.query(pred_xy, distance_upper_bound=float(radius.max()))
    i = np.flatnonzero(np.isfinite(dist) & (dist <= radius))
    j, dist = j[i], dist[i]
    # Closest pairs first; a detection claimed by several catalog stars keeps the nearest.
    order = np.argsort(dist, kind="stable")
    i, j = i[order], j[order]
    _, first = np.unique(j, return_index=True)
    keep = np.sort(first)
    return i[keep], j[keep]


def _n_terms(degree: int) -> int:
    """Parameters per pixel axis: 2 for the similarity (4 in all), else the powers'."""
    return 2 if degree == 0 else len(_powers(degree))


def _fit_similarity(u, v, x, y, w=None):
    """Weighted least squares of x = a + c u - s v, y = b + s u + c v (a similarity,
    parity kept); returns (coef, leverage) or None. The leverage of a star is the mean
    of its two rows'."""
    n = len(u)
    zeros, ones = np.zeros(n), np.ones(n)
    design = np.vstack([np.column_stack([ones, zeros, u, -v]), np.column_stack([zeros, ones, v, u])])
    ww = np.ones(2 * n) if w is None else np.r_[w, w]
    wd = design * ww[:, None]
    normal = wd.T @ design
    if n < 2 or np.linalg.cond(normal) > 1e12:
        return None
    inv = np.linalg.inv(normal)
    coef = inv @ (wd.T @ np.r_[x, y])
    h = np.einsum("ij,jk,ik->i", wd, inv, design)
    return coef, 0.5 * (h[:n] + h[n:])


def _fit_poly(xi, eta, x, y, degree, w=None):
    """(Weighted) least squares of pixels on tangent-plane powers; (coef, leverage) or None.

    Normal equations: the tangent-plane coordinates are scaled to about +-1, so even
    the cubic system stays well conditioned, and they give the leverages (hat-matrix
    diagonal) for free, which QR would take ten times longer to give. Degree 0 is a
    similarity (:func:`_fit_similarity`).
    """
    if degree == 0:
        return _fit_similarity(xi, eta, x, y, w)
    design = _design(xi, eta, _powers(degree))
    wd = design if w is None else design * w[:, None]
    normal = wd.T @ design
    if len(x) < design.shape[1] or np.linalg.cond(normal) > 1e12:
        return None
    inv = np.linalg.inv(normal)
    coef = inv @ (wd.T @ np.column_stack([x, y]))
    leverage = np.einsum("ij,jk,ik->i", wd, inv, design)
    return coef, leverage


def _predict(coef, xi, eta, degree):
    if degree == 0:
        a, b, c, s = coef
        return np.column_stack([a + c * xi - s * eta, b + s * xi + c * eta])
    return _design(xi, eta, _powers(degree)) @ coef


def _rayleigh_sigma(r):
    # For 2-D Gaussian errors |r| is Rayleigh; median(r^2) = 2 ln2 sigma^2 ignores outliers.
    return math.sqrt(float(np.median(r**2)) / (2.0 * math.log(2.0))) if len(r) else math.inf


def _clipped_fit(xi, eta, x, y, degree, w=None, clip=_CLIP_SIGMA):
    """Polynomial fit with iterative 3-sigma clipping; returns (coef, keep, sigma).

    With weights ``w`` (inverse variances, relative) the fit is weighted, the clipping
    is on residuals scaled by sqrt(w) and ``sigma`` is the error of a star of unit
    weight.
    """
    n_min = _n_terms(degree) + 1
    keep = np.ones(len(x), dtype=bool)
    if len(x) < n_min:
        return None, keep, math.inf
    sw = np.ones(len(x)) if w is None else np.sqrt(w)
    coef, sigma = None, math.inf
    for _ in range(5):
        fitted = _fit_poly(xi[keep], eta[keep], x[keep], y[keep], degree, None if w is None else w[keep])
        if fitted is None:
            return None, keep, math.inf
        coef, h = fitted
        pred = _predict(coef, xi, eta, degree)
        r = np.hypot(pred[:, 0] - x, pred[:, 1] - y) * sw
        # Studentized residuals r / sqrt(1 - h): with few stars the fit bends towards a
        # bad match and hides it; divided by the spread its residual has when it is fitted
        # too, it stands out again. (The deleted residual r / (1 - h) would also throw out
        # a good star that alone holds a corner of the frame.)
        r_std = r.copy()
        r_std[keep] = r[keep] / np.sqrt(np.maximum(1.0 - h, 0.05))
        sigma = _rayleigh_sigma(r_std[keep])
        new = r_std <= clip * max(sigma, 1e-3)
        # With a handful of stars the median-based sigma is itself noisy: never clip
        # below what the fit needs.
        if np.array_equal(new, keep) or new.sum() < n_min:
            break
        keep = new
    return coef, keep, sigma


def _bic(xi, eta, x, y, degree, w=None) -> float:
    fitted = _fit_poly(xi, eta, x, y, degree, w)
    if fitted is None:
        return math.inf
    pred = _predict(fitted[0], xi, eta, degree)
    rss = float(np.sum(((pred[:, 0] - x) ** 2 + (pred[:, 1] - y) ** 2) * (1.0 if w is None else w)))
    n = 2 * len(x)
    return n * math.log(max(rss, 1e-30) / n) + 2 * len(_powers(degree)) * math.log(n)


def _iterate(xi, eta, pred, det_xy, det_tree, radius, degree, variances=None, clip=_CLIP_SIGMA):
    """Match, fit, clip and shrink the radius until the matches stop changing.

    Returns ``(cat_rows, det_rows, coef, sigma, radius, predicted)`` of the last good
    round, or ``(cat_rows, det_rows, None, ...)`` of the first round when even that
    could not be fitted (too few or degenerate matches). ``variances``: None, or
    ``(cat_var, det_var)``, relative variances of the catalog stars' and detections'
    positions (``det_var`` may be None); the fit then weights each match by the inverse
    of their sum, and each catalog star's radius shrinks to five times its own expected
    error; ``radius`` is then the largest of them.
    """
    state = None
    prev = None
    radii = np.full(len(xi), float(radius))
    for _ in range(_MAX_ITER):
        ci, dj = _match(pred, det_tree, radii)
        w = None if variances is None else 1.0 / _pair_variance(variances, ci, dj)
        coef, keep, sigma = _clipped_fit(xi[ci], eta[ci], det_xy[dj, 0], det_xy[dj, 1], degree, w, clip)
        if coef is None:
            return state if state is not None else (ci, dj, None, math.inf, radius, pred)
        pred = _predict(coef, xi, eta, degree)
        ci, dj = ci[keep], dj[keep]
        state = (ci, dj, coef, sigma, float(radii.max()), pred)
        spread = 1.0
        if variances is not None:
            cat_var, det_var = variances
            typical = 0.0 if det_var is None or len(dj) == 0 else float(np.median(det_var[dj]))
            spread = np.sqrt(cat_var + typical)
        new_radii = np.minimum(radii, np.maximum(MIN_RADIUS_PX, 5.0 * sigma * spread))
        key = (ci.tobytes(), dj.tobytes())
        if key == prev and np.array_equal(new_radii, radii):
            break
        prev, radii = key, new_radii
    return state


def _pair_variance(variances, ci, dj):
    cat_var, det_var = variances
    return cat_var[ci] + (0.0 if det_var is None else det_var[dj])


# -- the solver shared with align_to_reference -------------------------------------------------


def _solve(x, y, flux, ref_ra, ref_dec, ref_mag, initial_wcs, *, shape, search_radius_px,
           max_rotation_deg, min_matches, sip, coarse, label, what="catalog stars", distortion=None,
           max_rms_px=MAX_RMS_PX, ref_var=None, det_var=None, similarity=False, clip=_CLIP_SIGMA):
    """The solver of :func:`refine_wcs` and :func:`~obsdb.astrometry.align.align_to_reference`.

    ``ref_var``, ``det_var``: relative variances of the reference positions and of the
    detections' (None: all equal; ``det_var`` needs ``ref_var``). With them the fits
    weight each match by the inverse of the sum, each star is matched within five
    times its own expected error, and ``rms_px`` is the weighted rms. ``similarity``: the
    matches are found with a similarity (4 parameters) from the initial WCS's pixels
    rather than a full linear fit (6): with a dozen stars, two more free parameters
    let the fit follow a bad match (a galaxy's knot) and hide it. The final WCS is
    fitted in full all the same. ``clip``: outlier threshold, in sigma.
    """
    ny, nx = _check_shape(shape)
    x, y, flux = _as_arrays("x, y and flux", x, y, flux)
    ref_ra, ref_dec, ref_mag = _as_arrays("ref_ra, ref_dec and ref_mag", ref_ra, ref_dec, ref_mag)
    if min_matches < 3:
        raise ValueError(f"min_matches must be at least 3 (a TAN fit has 6 parameters), got {min_matches}")
    det_ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if len(det_ok) < min_matches:
        raise AstrometryError(f"only {len(det_ok)} stars were detected and {min_matches} matches are needed: "
                              "the frame may be clouded out, out of focus or blank; check it and the "
                              "detection threshold")
    det_xy = np.column_stack([x[det_ok], y[det_ok]])
    if distortion is not None:
        # A known distortion: match and fit in the undistorted (focal-plane) pixels.
        det_xy = np.column_stack(apply_sip(distortion, det_xy[:, 0], det_xy[:, 1]))
    det_brightness = np.where(np.isfinite(flux[det_ok]), flux[det_ok], -np.inf)

    centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    half_diag = 0.5 * math.hypot(nx, ny)
    scale0 = _pixel_scale_deg(initial_wcs)
    ra_c, dec_c = (float(v) for v in initial_wcs.all_pix2world([[centre[0], centre[1]]], 0)[0])
    margin = search_radius_px + math.radians(max_rotation_deg) * half_diag + 2 * _VOTE_BIN_PX
    cat_ok = np.flatnonzero(np.isfinite(ref_ra) & np.isfinite(ref_dec))
    if len(cat_ok):
        # Far stars are dropped before projecting: TAN folds the far hemisphere back
        # onto the frame.
        _, _, den = _tangent(ref_ra[cat_ok], ref_dec[cat_ok], ra_c, dec_c)
        near = den > math.cos(math.radians(min(80.0, 2.0 * (half_diag + margin) * scale0)))
        cat_ok = cat_ok[near]
    if len(cat_ok):
        px = initial_wcs.all_world2pix(np.column_stack([ref_ra[cat_ok], ref_dec[cat_ok]]), 0, quiet=True)
        foot = ((px[:, 0] > -0.5 - margin) & (px[:, 0] < nx - 0.5 + margin)
                & (px[:, 1] > -0.5 - margin) & (px[:, 1] < ny - 0.5 + margin))
        cat_ok, px = cat_ok[foot], px[foot]
    if len(cat_ok) < min_matches:
        raise AstrometryError(f"only {len(cat_ok)} of {len(ref_ra)} {what} fall on the frame (within "
                              f"{margin:.0f} px) through its initial WCS, and {min_matches} matches are "
                              "needed: the pointing or field is wrong, or the catalog does not cover it; "
                              "attach a solution with `obsdb wcs attach`")
    xi, eta, _ = _tangent(ref_ra[cat_ok], ref_dec[cat_ok], ra_c, dec_c)
    # Tangent-plane coordinates in (initial) pixels keep the polynomial well scaled.
    xi, eta = xi / scale0 / half_diag, eta / scale0 / half_diag
    cat_mag = np.where(np.isfinite(ref_mag[cat_ok]), ref_mag[cat_ok], np.inf)
    variances = None
    if ref_var is not None:
        variances = (np.asarray(ref_var, dtype=float).ravel()[cat_ok],
                     None if det_var is None else np.asarray(det_var, dtype=float).ravel()[det_ok])

    det_tree = cKDTree(det_xy)
    pred = px.copy()
    method = []
    if coarse:
        nd = min(_N_BRIGHT_DET, len(det_xy))
        bright_det = np.argsort(-det_brightness, kind="stable")[:nd]
        bright_cat = np.argsort(cat_mag, kind="stable")[:min(_N_BRIGHT_CAT, 2 * nd)]
        found = _vote_offset(det_xy[bright_det], px[bright_cat], centre, margin, max_rotation_deg, half_diag)
        near_frame = f"the {len(cat_ok)} {what} near the frame (of {len(ref_ra)})"
        if found is None:
            raise AstrometryError(f"none of the {nd} brightest detections is within {margin:.0f} px of any of "
                                  f"{near_frame}: the header pointing may be wrong by more than the search "
                                  "radius, or the catalog barely overlaps the frame; raise search_radius_px "
                                  "or attach a solution with `obsdb wcs attach`")
        angle, shift, votes, expected, trials = found
        fa = _false_alarm(votes, expected, trials)
        if votes < _MIN_VOTES or fa > _FALSE_ALARM:
            raise AstrometryError(f"only {votes:.0f} of the {nd} brightest detections line up with {near_frame} "
                                  f"for any shift up to {search_radius_px:.0f} px and rotation up to "
                                  f"{max_rotation_deg:g} deg ({expected:.1f} expected by chance): the header "
                                  "pointing may be wrong by more than the search radius, its pixel scale by "
                                  "more than a few per cent, or few stars overlap; attach a solution with "
                                  "`obsdb wcs attach`")
        t = math.radians(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        pred = centre + (px - centre) @ rot.T + shift
        radius = 2.0 * _VOTE_BIN_PX + 1.0
        method.append("vote")
    else:
        radius = search_radius_px

    if similarity:
        u, v = (px[:, 0] - centre[0]) / half_diag, (px[:, 1] - centre[1]) / half_diag
        state = _iterate(u, v, pred, det_xy, det_tree, radius, 0, variances, clip)
    else:
        state = _iterate(xi, eta, pred, det_xy, det_tree, radius, 1, variances, clip)
    n_in_frame = int(np.sum((pred[:, 0] > -0.5) & (pred[:, 0] < nx - 0.5)
                            & (pred[:, 1] > -0.5) & (pred[:, 1] < ny - 0.5)))
    if state[2] is None or len(state[0]) < min_matches:
        n = len(state[0])
        raise AstrometryError(f"only {n} of {n_in_frame} {what} on the frame matched a detection within "
                              f"{radius:.0f} px, and {min_matches} are needed: the initial WCS may be wrong "
                              "by more than the search radius, or few stars overlap; attach a solution with "
                              "`obsdb wcs attach`")
    degree = 1
    if sip and distortion is None:
        ci, dj = state[0], state[1]
        candidates = [d for d in sorted(MIN_STARS_FOR_SIP) if sip_allowed(det_xy[dj, 0], det_xy[dj, 1], shape, d)]
        if candidates:
            w = None if variances is None else 1.0 / _pair_variance(variances, ci, dj)
            bics = {d: _bic(xi[ci], eta[ci], det_xy[dj, 0], det_xy[dj, 1], d, w) for d in [1, *candidates]}
            degree = min(bics, key=bics.get)
        if degree > 1:
            better = _iterate(xi, eta, state[5], det_xy, det_tree, state[4], degree, variances, clip)
            if better[2] is not None and sip_allowed(det_xy[better[1], 0], det_xy[better[1], 1], shape, degree):
                state = better
            else:
                degree = 1
    ci, dj, _, _, radius, pred = state
    n = len(ci)

    ref_index = cat_ok[ci]
    det_index = det_ok[dj]
    w = None if variances is None else 1.0 / _pair_variance(variances, ci, dj)
    wcs = fit_wcs(x[det_index], y[det_index], ref_ra[ref_index], ref_dec[ref_index], shape=shape,
                  sip_degree=degree if degree > 1 else None, distortion=distortion, weights=w)
    dx, dy = residuals(wcs, x[det_index], y[det_index], ref_ra[ref_index], ref_dec[ref_index])
    rms_px = float(np.sqrt(np.average(dx**2 + dy**2, weights=w)))
    scale = _pixel_scale_deg(wcs)
    method.append("tan-sip(reference)" if distortion is not None else "tan" if degree == 1 else f"tan-sip{degree}")

    # Checks: enough matches, far more than chance coincidences at the final radius,
    # a plausible scatter and a pixel scale close to the initial one.
    chance = len(det_xy) * n_in_frame * math.pi * radius**2 / (nx * ny)
    if n < min_matches or n < 3.0 * chance:
        raise AstrometryError(f"only {n} of {n_in_frame} {what} on the frame matched within {radius:.1f} px "
                              f"({chance:.1f} expected by chance), and {min_matches} are needed: the initial "
                              "WCS may be wrong by more than the search radius, or few stars overlap; attach "
                              "a solution with `obsdb wcs attach`")
    if rms_px > max_rms_px:
        raise AstrometryError(f"the {n} matched stars scatter by {rms_px:.2f} px rms (more than {max_rms_px:g} "
                              "px): the matches are probably wrong or the centroids poor (trailing, bad "
                              "focus, faint stars); raise max_rms_px if the centroids are known to be poor")
    change = scale / scale0 - 1.0
    if abs(change) > MAX_SCALE_CHANGE:
        raise AstrometryError(f"the fitted pixel scale {scale * 3600:.4f} arcsec/px differs from the initial "
                              f"{scale0 * 3600:.4f} arcsec/px by {100 * change:+.1f}%: the matches are probably "
                              "wrong, or the initial scale is (check FOCALLEN and XPIXSZ)")
    return Solution(wcs=wcs, rms_px=rms_px, rms_arcsec=rms_px * scale * 3600.0, n_matches=n,
                    det_index=det_index, ref_index=ref_index, method=label + "+".join(method))


def refine_wcs(x, y, flux, ref_ra, ref_dec, ref_mag, initial_wcs: WCS, *, shape,
               search_radius_px: float = 60.0, max_rotation_deg: float = 2.0, min_matches: int = 6,
               sip: bool = True, max_rms_px: float = MAX_RMS_PX) -> Solution:
    """Solve a frame from detections, a reference catalog and a rough WCS.

    Parameters
    ----------
    x, y : array_like
        0-based pixel centroids of the detections (non-finite rows are ignored).
    flux : array_like
        Their fluxes, any unit; only their order matters (brightest stars find the
        offset).
    ref_ra, ref_dec : array_like
        Catalog positions in degrees at the epoch of the frame: the caller applies
        proper motion before calling. Stars off the frame are welcome.
    ref_mag : array_like
        Catalog magnitudes, any band; only their order matters. NaN counts as faint.
    initial_wcs : astropy.wcs.WCS
        Rough WCS: header (:func:`~obsdb.astrometry.initial.wcs_from_header`) or
        pointing (:func:`~obsdb.astrometry.initial.wcs_from_pointing`); its pixel
        scale must be right within ``MAX_SCALE_CHANGE``.
    shape : tuple of int
        Frame shape ``(ny, nx)``.
    search_radius_px : float, optional
        Largest pointing error searched, pixels.
    max_rotation_deg : float, optional
        Largest rotation error searched, degrees.
    min_matches : int, optional
        Fewest matched stars accepted (at least 3).
    sip : bool, optional
        Allow SIP distortion (degree 2 or 3, chosen by the Bayesian information
        criterion) when the matches are many and spread enough.
    max_rms_px : float, optional
        Largest accepted rms of the matched stars' residuals, pixels.

    Returns
    -------
    Solution

    Raises
    ------
    AstrometryError
        With the reason and what to do: too few detections or catalog stars on the
        frame, no significant offset within the search radius, too few matches, or a
        solution failing its checks (rms, scale).
    ValueError
        If the input arrays differ in length or ``min_matches`` < 3.

    Examples
    --------
    >>> sol = refine_wcs(cat["x"], cat["y"], cat["flux"], ref["ra"], ref["dec"], ref["g"],
    ...                  wcs_from_header(header), shape=data.shape)  # doctest: +SKIP
    >>> sol.rms_arcsec, sol.n_matches                                    # doctest: +SKIP
    """
    return _solve(x, y, flux, ref_ra, ref_dec, ref_mag, initial_wcs, shape=shape,
                  search_radius_px=float(search_radius_px), max_rotation_deg=abs(float(max_rotation_deg)),
                  min_matches=int(min_matches), sip=sip, coarse=True, label="", max_rms_px=float(max_rms_px))
