"""Solve a frame without a usable WCS by matching its stars to a solved frame of the field.

How :func:`align_to_reference` works
------------------------------------
1. **Rotation.** Both frames come from the same camera, so star separations are the
   same in both. Every pair of the brightest ~50 stars of the frame is compared with
   every pair of the reference's brightest ~50; pairs of equal length vote for the
   angle between them, modulo 180 degrees (a pair has no direction). Stars common to
   both frames pile their votes into one peak; chance pairs spread over the circle.
2. **Shift.** Around each of the best few peaks, and the same plus 180 degrees (a
   meridian flip), the angle is scanned in steps that move the frame corners by two
   pixels; at each step every star of the frame, turned, votes with every reference
   star for the shift between them. The angle and shift with most votes win, if they
   stand far above chance; otherwise ``astroalign.find_transform`` (triangle
   invariants) is tried on the same stars before giving up.
3. **Refinement.** The vote is good to a shift bin at the frame's corners: a
   least-squares similarity through the stars it pairs pins it down (kept only when
   it pairs as many stars). Then **fixed patterns** go: a detection of the frame that
   sits on a detection of the reference at the same pixel, where the transform moves
   that pixel by more than twice the tolerance, is a hot pixel, a defect or an edge
   effect the calibration left in both, not a star.
4. **Fit.** The similarity transform and the reference WCS give a first TAN WCS of the
   frame; the reference stars, put on the sky by the reference WCS, then serve as the
   catalog of the same match-fit-clip iteration as
   :func:`obsdb.astrometry.match.refine_wcs`, with three differences. The matches are
   found with a similarity (4 parameters) rather than a full linear map (6): with a
   dozen stars the two spare parameters let a bad match (a galaxy's knot) pull the fit
   and hide. Each match is weighted by the precision of its two centroids, from the
   S/N when given (else the reference's fluxes), and matched within five times its own
   expected error. And the clipping is looser (4 sigma), as the scatter of a dozen
   matches is itself uncertain. The final WCS is a full TAN fit, weighted, and its rms
   the weighted one. A SIP distortion of the reference is kept as it is (it belongs to
   the optics and the detector, so it holds in the frame's pixels too) and only the
   linear part is fitted.

Detections should be stars: pass the reference's point sources (``detect_stars``'
``point``), not a galaxy's knots, which move between frames as the deblending does.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from obsdb.astrometry.errors import AstrometryError
from obsdb.astrometry.fit import fit_wcs
from obsdb.astrometry.initial import _check_shape
from obsdb.astrometry.match import MAX_RMS_PX, Solution, _as_arrays, _false_alarm, _solve

__all__ = ["align_to_reference"]

_N_BRIGHT = 50
#: Pairs shorter than this (pixels) give a poor angle and are not used.
_MIN_PAIR_PX = 20.0
#: Two separations are "equal" within this (pixels) plus a fraction of the length,
#: which allows for centroid noise and a little differential distortion.
_LENGTH_TOL_PX = 1.5
_LENGTH_TOL_FRAC = 0.002
_ANGLE_BIN_DEG = 1.0
_N_ANGLE_CANDIDATES = 4
#: Each angle peak is scanned this far (deg) either side: chance pairs pull the
#: centre of a weak peak by a degree or so.
_ANGLE_SCAN_DEG = 1.5
_SHIFT_BIN_PX = 2.0
_MIN_VOTES = 4
_FALSE_ALARM = 1e-4
#: After the coarse transform, matches are first sought within this radius (pixels).
_START_RADIUS_PX = 6.0
#: A detection this close (pixels) to one of the reference at the same pixel position
#: is a fixed pattern, not a star, unless the frames are aligned to about that.
_FIXED_PATTERN_PX = 2.5
#: Without S/N, centroid weights stop growing with the flux beyond the flux of this many
#: of the reference's brightest stars.
_N_FULL_WEIGHT = 3
#: Centroid errors stop shrinking with the S/N at this S/N.
_SNR_FLOOR = 30.0
#: Outlier threshold (sigma) of the match-fit-clip iteration. Above refine_wcs' 3: with a
#: dozen stars the median-based scatter is uncertain by a quarter, and the weights from
#: the S/N only roughly right; a real star 3 sigma out is then no rarity.
_CLIP_SIGMA = 4.0


def _brightest(xy, flux, n):
    key = np.where(np.isfinite(flux), flux, -np.inf)
    return xy[np.argsort(-key, kind="stable")[:n]]


def _pair_angles(src, dst):
    """Angles (deg, modulo 180) between equal-length pairs of ``src`` and ``dst``.

    Pairs are unordered, so a pair of common stars votes for the true angle modulo
    180 degrees; :func:`_similarity_by_votes` tries both.
    """
    i, j = np.triu_indices(len(src), k=1)
    vs = src[j] - src[i]
    ls = np.hypot(vs[:, 0], vs[:, 1])
    keep = ls >= _MIN_PAIR_PX
    vs, ls = vs[keep], ls[keep]
    k, m = np.triu_indices(len(dst), k=1)
    vd = dst[m] - dst[k]
    ld = np.hypot(vd[:, 0], vd[:, 1])
    order = np.argsort(ld)
    ld, vd = ld[order], vd[order]
    tol = _LENGTH_TOL_PX + _LENGTH_TOL_FRAC * ls
    lo = np.searchsorted(ld, ls - tol, side="left")
    hi = np.searchsorted(ld, ls + tol, side="right")
    counts = hi - lo
    if counts.sum() == 0:
        return np.empty(0)
    src_row = np.repeat(np.arange(len(ls)), counts)
    # Row r's candidates are the sorted reference pairs lo[r] .. hi[r] - 1.
    dst_row = np.repeat(lo - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(counts.sum())
    a_src = np.arctan2(vs[src_row, 1], vs[src_row, 0])
    a_dst = np.arctan2(vd[dst_row, 1], vd[dst_row, 0])
    return np.degrees(a_dst - a_src) % 180.0


def _angle_candidates(angles):
    """Centres (deg, modulo 180) of the highest peaks of the angle votes."""
    nb = int(round(180.0 / _ANGLE_BIN_DEG))
    hist = np.bincount((angles / _ANGLE_BIN_DEG).astype(int) % nb, minlength=nb).astype(float)
    block = hist + np.roll(hist, 1) + np.roll(hist, -1)
    out = []
    for _ in range(_N_ANGLE_CANDIDATES):
        b = int(np.argmax(block))
        if block[b] <= 0:
            break
        out.append((b + 0.5) * _ANGLE_BIN_DEG)
        block[[(b + k) % nb for k in range(-2, 3)]] = -1.0
    return out


def _shift_vote(src, dst, angle_deg):
    """Best shift taking ``src`` turned by ``angle_deg`` onto ``dst``, and its votes.

    Every (src, dst) pair votes for the shift that superposes it, in bins of
    ``_SHIFT_BIN_PX``; the peak is the largest sum over 3 x 3 bins (a peak may straddle
    a bin edge).
    """
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    shifts = (dst[None, :, :] - (src @ rot.T)[:, None, :]).reshape(-1, 2)
    cells = np.floor(shifts / _SHIFT_BIN_PX).astype(np.int64)
    width = np.int64(1 << 20)
    keys = (cells[:, 0] + width // 2) * width + (cells[:, 1] + width // 2)
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    neighbours = uniq[:, None] + (np.array([-1, 0, 1])[:, None] * width + np.array([-1, 0, 1])).ravel()
    idx = np.minimum(np.searchsorted(uniq, neighbours), len(uniq) - 1)
    block = np.where(uniq[idx] == neighbours, counts[idx], 0).sum(axis=1)
    best = int(np.argmax(block))
    near = np.abs(cells - cells[np.flatnonzero(inverse == best)[0]]).max(axis=1) <= 1
    return rot, np.median(shifts[near], axis=0), int(block[best])


def _similarity_by_votes(src, dst, half_diag):
    """Rotation and shift taking ``src`` onto ``dst``: ``(rot, shift, votes, expected, trials)``."""
    angles = _pair_angles(src, dst)
    if len(angles) == 0:
        return None
    # Fine steps around each angle peak: half a step moves the frame corners by one
    # shift bin, which the 3 x 3 block of the shift vote still catches.
    step = math.degrees(2.0 * _SHIFT_BIN_PX / half_diag)
    offsets = np.arange(-_ANGLE_SCAN_DEG, _ANGLE_SCAN_DEG + step / 2, step)
    best, n_tried = None, 0
    for centre in _angle_candidates(angles):
        for angle in np.r_[centre + offsets, centre + 180.0 + offsets]:
            rot, shift, votes = _shift_vote(src, dst, angle)
            n_tried += 1
            if best is None or votes > best[2]:
                best = (rot, shift, votes)
    spread = np.ptp(dst, axis=0) + np.ptp(src, axis=0) + 3 * _SHIFT_BIN_PX
    cells = float(spread[0] * spread[1]) / _SHIFT_BIN_PX**2
    expected = 9.0 * len(src) * len(dst) / cells
    return (*best, expected, int(n_tried * cells))


def _similarity_by_astroalign(src, dst):
    import astroalign

    try:
        transform, (s, _) = astroalign.find_transform(src, dst)
    except Exception:  # noqa: BLE001 - MaxIterError, ValueError: "no transform found"
        return None
    if abs(transform.scale - 1.0) > 0.02:
        return None
    return transform.params[:2, :2] / transform.scale, transform.params[:2, 2], len(s)


def _refine_similarity(src, dst, rot, shift):
    """The vote's rotation and shift (good to a bin at the frame's corners) refined by a
    least-squares similarity fit to the stars they pair.

    With a dozen stars the vote's peak spans a few angle steps; the fit pins it down
    before fixed patterns are told from stars. Pairs are mutual nearest neighbours within
    two bins, clipped at three times their median residual; the refinement is kept only
    when it pairs at least as many stars within one bin as the vote did.
    """
    tree, back = cKDTree(dst), cKDTree(src)

    def pairs(r, t, radius):
        moved = src @ r.T + t
        dist, j = tree.query(moved, distance_upper_bound=radius)
        hit = np.flatnonzero(np.isfinite(dist))
        # Mutual: the reference star's nearest moved star is this one.
        _, i_back = back.query((dst[j[hit]] - t) @ r)
        keep = i_back == hit
        return hit[keep], j[hit[keep]], dist[hit[keep]]

    def tight(r, t):
        return len(pairs(r, t, _SHIFT_BIN_PX)[0])

    best = (rot, shift)
    i, j, _ = pairs(rot, shift, 2.0 * _SHIFT_BIN_PX)
    for _ in range(3):
        if i.size < 3:
            break
        zs = src[i, 0] + 1j * src[i, 1]
        zd = dst[j, 0] + 1j * dst[j, 1]
        c0, c1 = np.linalg.lstsq(np.column_stack([zs, np.ones_like(zs)]), zd, rcond=None)[0]
        res = np.abs(c0 * zs + c1 - zd)
        keep = res <= max(3.0 * float(np.median(res)), 0.5)
        if keep.all():
            break
        i, j = i[keep], j[keep]
    if i.size >= 3:
        t = float(np.angle(c0))
        r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        d = np.median(zd[keep] - (src[i] @ r.T) @ np.array([1.0, 1j]))
        candidate = (r, np.array([d.real, d.imag]))
        if tight(*candidate) >= tight(rot, shift):
            best = candidate
    return best


def _drop_fixed_pattern(x, y, ref_x, ref_y, rot, shift):
    """``x`` and ``ref_x`` with NaN where a detection of the frame and one of the
    reference share a pixel (within ``_FIXED_PATTERN_PX``) though the transform moves
    that pixel by more than twice as much."""
    xy = np.column_stack([x, y])
    ref_xy = np.column_stack([ref_x, ref_y])
    ok = np.flatnonzero(np.isfinite(xy).all(axis=1))
    ref_ok = np.flatnonzero(np.isfinite(ref_xy).all(axis=1))
    dist, j = cKDTree(ref_xy[ref_ok]).query(xy[ok], distance_upper_bound=_FIXED_PATTERN_PX)
    moved = np.hypot(*(xy[ok] @ rot.T + shift - xy[ok]).T)
    fixed = np.isfinite(dist) & (moved > 2.0 * _FIXED_PATTERN_PX)
    x, ref_x = x.copy(), ref_x.copy()
    x[ok[fixed]] = np.nan
    ref_x[ref_ok[j[fixed]]] = np.nan
    return x, ref_x


def _centroid_variances(flux, snr, ref_flux, ref_snr):
    """Relative variances of the reference's and the frame's centroids (or None).

    A centroid's error is about FWHM / (S/N) (sky-limited, optimal window), to a floor
    of FWHM / ``_SNR_FLOOR`` (the PSF's own changes between frames). With both S/N the
    two are summed; with fluxes only, the reference's centroid errors go as 1 / flux up
    to its ``_N_FULL_WEIGHT``-th brightest star (its fluxes and the frame's may be on
    different scales: isophotal, aperture), and the frame's are left out.
    """
    if snr is not None and ref_snr is not None:
        def var(s):
            s = np.where(np.isfinite(s), s, 0.0)
            return 1.0 / np.maximum(s, 1.0) ** 2 + 1.0 / _SNR_FLOOR**2
        return var(ref_snr), var(snr)
    flux = np.where(np.isfinite(ref_flux) & (ref_flux > 0), ref_flux, 0.0)
    positive = np.sort(flux[flux > 0])[::-1]
    if positive.size == 0:
        return None, None
    cap = float(positive[min(_N_FULL_WEIGHT, positive.size) - 1])
    return (cap / np.clip(flux, 1e-3 * cap, cap)) ** 2, None


def align_to_reference(x, y, flux, ref_x, ref_y, ref_flux, ref_wcs: WCS, *, shape,
                       min_matches: int = 6, sip: bool = True, max_rms_px: float = MAX_RMS_PX,
                       snr=None, ref_snr=None) -> Solution:
    """Solve a frame by matching its stars to those of a solved frame of the same field.

    Parameters
    ----------
    x, y, flux : array_like
        0-based pixel centroids and fluxes of the frame's detections.
    ref_x, ref_y, ref_flux : array_like
        The same for the reference frame.
    ref_wcs : astropy.wcs.WCS
        The reference frame's solved WCS (from :func:`obsdb.astrometry.match.refine_wcs`).
    shape : tuple of int
        The frame's shape ``(ny, nx)``.
    min_matches : int, optional
        Fewest matched stars accepted (at least 3).
    sip : bool, optional
        Keep the reference's SIP distortion (when it is centred on a frame of this
        shape), else allow a new one when the matches are many and spread enough.
    max_rms_px : float, optional
        Largest accepted rms of the matched stars' residuals, pixels (weighted by the
        precision of their centroids).
    snr, ref_snr : array_like, optional
        S/N of the frame's and the reference's stars (``detect_stars``' ``snr``, the
        measurements' ``snr``). Given both, they order the stars (a galaxy's knots
        have much flux and little S/N) and weight each match by 1 / (1/snr^2 +
        1/ref_snr^2); else the reference fluxes weight the matches.

    Returns
    -------
    Solution
        ``ref_index`` indexes the reference frame's stars. The rms includes the
        centroid errors of both frames, each match weighted by their precision.

    Raises
    ------
    AstrometryError
        If either frame has fewer than 3 stars, no rotation and shift line up enough
        stars (different field, little overlap, different pixel scale), or the fitted
        solution fails the checks of :func:`~obsdb.astrometry.match.refine_wcs`.
    ValueError
        If the arrays of a frame differ in length.

    Notes
    -----
    The frames may differ by any shift and any rotation (a meridian flip turns the
    frame by 180 degrees), but must share the pixel scale (same camera, binning and
    telescope, within about 0.5 %) and the parity (no mirror image).
    """
    ny, nx = _check_shape(shape)
    x, y, flux = _as_arrays("x, y and flux", x, y, flux)
    ref_x, ref_y, ref_flux = _as_arrays("ref_x, ref_y and ref_flux", ref_x, ref_y, ref_flux)
    with_snr = snr is not None and ref_snr is not None
    if with_snr:
        (snr,) = _as_arrays("x and snr", snr)
        (ref_snr,) = _as_arrays("ref_x and ref_snr", ref_snr)
        if len(snr) != len(x) or len(ref_snr) != len(ref_x):
            raise ValueError(f"snr and ref_snr must have one value per star, got {len(snr)} for {len(x)} and "
                             f"{len(ref_snr)} for {len(ref_x)}")
    ok = np.isfinite(x) & np.isfinite(y)
    ref_ok = np.isfinite(ref_x) & np.isfinite(ref_y)
    if ok.sum() < 3 or ref_ok.sum() < 3:
        raise AstrometryError(f"the frame has {ok.sum()} stars and the reference {ref_ok.sum()}: at least 3 "
                              "each are needed to align them; check the frame (clouds, focus) or pick "
                              "another reference")
    rank, ref_rank = (snr, ref_snr) if with_snr else (flux, ref_flux)
    src = _brightest(np.column_stack([x, y])[ok], rank[ok], _N_BRIGHT)
    dst = _brightest(np.column_stack([ref_x, ref_y])[ref_ok], ref_rank[ref_ok], _N_BRIGHT)

    found = _similarity_by_votes(src, dst, 0.5 * math.hypot(nx, ny))
    how = "pairs"
    if found is None or found[2] < _MIN_VOTES or _false_alarm(found[2], found[3], found[4]) > _FALSE_ALARM:
        fallback = _similarity_by_astroalign(src, dst)
        if fallback is None:
            votes = 0 if found is None else found[2]
            raise AstrometryError(f"no rotation and shift line up more than {votes} of the {len(src)} brightest "
                                  f"stars of the frame with the {len(dst)} of the reference: the frames may "
                                  "show different fields, overlap too little, or differ in pixel scale or "
                                  "parity; pick another reference or attach a solution with `obsdb wcs attach`")
        rot, shift, _ = fallback
        how = "astroalign"
    else:
        rot, shift = found[0], found[1]
    rot, shift = _refine_similarity(src, dst, rot, shift)

    # Fixed-pattern detections (hot pixels, defects, edge effects the calibration left)
    # sit at the same pixels of both frames, where no star does once the frames are
    # shifted: they would pull the fit or, matched, scatter it.
    x, ref_x = _drop_fixed_pattern(x, y, ref_x, ref_y, rot, shift)
    ref_ok = np.isfinite(ref_x) & np.isfinite(ref_y)

    # First WCS of the frame: its pixels -> reference pixels (similarity) -> sky.
    g = np.linspace(0.0, 1.0, 5)
    gx, gy = (a.ravel() for a in np.meshgrid(g * (nx - 1), g * (ny - 1)))
    in_ref = np.column_stack([gx, gy]) @ rot.T + shift
    sky = ref_wcs.all_pix2world(in_ref, 0)
    initial = fit_wcs(gx, gy, sky[:, 0], sky[:, 1], shape=shape)

    ref_sky = np.full((len(ref_x), 2), np.nan)
    ref_sky[ref_ok] = ref_wcs.all_pix2world(np.column_stack([ref_x, ref_y])[ref_ok], 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_mag = -2.5 * np.log10(np.where(ref_rank > 0, ref_rank, np.nan))
    ref_var, det_var = _centroid_variances(flux, snr if with_snr else None, ref_flux, ref_snr if with_snr else None)
    # The distortion belongs to the camera and telescope, not to the pointing: a
    # reference SIP centred like this frame holds in this frame's pixels too, and
    # keeping it leaves 6 parameters to fit instead of up to 20.
    distortion = None
    centred = ref_wcs.sip is not None and np.allclose(ref_wcs.sip.crpix, [(nx + 1) / 2.0, (ny + 1) / 2.0], atol=0.5)
    if sip and centred:
        distortion = ref_wcs.sip
    return _solve(x, y, flux, ref_sky[:, 0], ref_sky[:, 1], ref_mag, initial, shape=shape,
                  search_radius_px=_START_RADIUS_PX, max_rotation_deg=0.0, min_matches=int(min_matches),
                  sip=sip, coarse=False, label=f"align-{how}+", what="reference stars", distortion=distortion,
                  max_rms_px=float(max_rms_px), ref_var=ref_var, det_var=det_var, similarity=True,
                  clip=_CLIP_SIGMA)
