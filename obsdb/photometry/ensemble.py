"""Ensemble photometry: every star and every frame of one field in one filter at once.

Model and sign convention (the same as :mod:`obsdb.photometry.zeropoint`)::

    M_i = inst_ij + Z_j + c * colour_i

``M_i`` is star i's calibrated magnitude, ``inst_ij = -2.5 log10(flux_adu)`` its
instrumental magnitude on frame j, ``Z_j`` the frame's zero point (smaller through
cloud) and ``c`` a colour term that is constant over the field and filter. DESIGN.md's
``m_ij = M_i + Z_j`` is the same model with the instrumental magnitude on the left and
the opposite sign for Z.

How it is solved
----------------
Written as ``inst_ij = p_i + q_j`` (``p_i = M_i - c colour_i - offset``,
``q_j = offset - Z_j``), the weighted least-squares normal matrix has a block-arrow
form: diagonal in the stars, diagonal in the frames, coupled only by the weights of the
observations. Eliminating the larger of the two sets leaves a dense symmetric system on
the smaller (the Schur complement), built with one BLAS product and solved by Cholesky:
1000 stars x 500 frames is a 500 x 500 system. Its inverse gives the errors. The model
only fixes p + q, so each connected component of the star-frame graph has one free
offset (the gauge), fixed at mean q = 0 and then tied to the catalog.

Noise model
-----------
Each observation's variance is ``inst_err^2 + excess_j^2``: ``excess_j`` is an extra
scatter per frame (scintillation, flat-field residuals, guiding) that quoted
CCD-equation errors leave out, estimated by maximum likelihood from the frame's
residuals and shrunk towards the value the other frames give (a frame's own estimate rests
on its few bright stars, and noisy weights would make the errors too small). After the
first solve the quoted errors are re-evaluated at the model flux
(``inst_err * 10^(-0.4 (inst - model))``, which is exact for sky-limited stars and
immaterial for bright ones): a quoted error computed from the *measured* flux is smaller
for an upward fluctuation, and weighting with it would pull faint stars bright. The mean
of magnitudes is also biased faint by err^2 / 2.17 (the logarithm's curvature), which
``debias`` removes before averaging.

Robustness
----------
A median polish gives the first solution; observations beyond ``clip_sigma`` are
clipped (cosmic rays, bad pixels) and may come back in later iterations. The deviation
is measured in flux, where the noise is normal: a cosmic ray 0.55 mag bright on a star
at S/N 7 is 5 sigma in flux but only 3.8 sigma in magnitudes. Stars whose own
light curve is not constant -- chi^2 too high for their degrees of freedom once scaled
by the bulk of the stars, or more clipped points than the field's outlier rate allows --
are flagged ``variable`` and removed from the ensemble, which is then solved again.

Tie to the catalog
------------------
``cat_i - p_i = offset_k + c colour_i`` over the catalog stars of each component, with
:func:`~obsdb.photometry.zeropoint.fit_linear_robust` (catalog errors plus an intrinsic
scatter, clipping; one offset per component, one shared colour term). A component
without enough catalog stars keeps mean Z = 0 and is reported untied (flag 512).

Stars outside the ensemble (variables, too few frames) get magnitudes afterwards from
the solved zero points, as every measurement does through :func:`calibrate`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import sparse, stats
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.sparse.csgraph import connected_components

from obsdb.photometry.zeropoint import CalibrationError, clipped_variance, fill_missing_errors, fit_linear_robust

__all__ = ["EnsembleSolution", "calibrate", "solve_ensemble", "solve_two_way"]

# Dense blocks of the design are built this many values at a time (8 bytes each).
_CHUNK_VALUES = 4_000_000
# Re-evaluated errors stay within this factor of the quoted ones: an outlier's model flux
# says nothing about its error.
_ERROR_FACTOR_RANGE = (0.5, 2.0)
_MIN_ERROR = 1e-4
_MAG_PER_LN = 2.5 / np.log(10)  # 1.0857: d(mag) / d(ln flux)


@dataclass(frozen=True)
class EnsembleSolution:
    """The solved ensemble of one field and filter (see the module docstring).

    Arrays are per star (length n_stars), per frame (n_frames), per observation (the
    inputs' length) or per connected component, as stated.

    Attributes
    ----------
    M : ndarray, per star
        Calibrated mean magnitude; NaN for stars without observations in solved frames.
        For ensemble members from the joint solve, for the others (variables, too few
        frames) the weighted mean of their calibrated observations.
    M_err : ndarray, per star
        Statistical error of M relative to the gauge (the component's catalog offset and
        colour term are shared, see :meth:`systematic_error`).
    chi2_dof : ndarray, per star
        chi^2 per degree of freedom of the star's light curve about M (NaN below 2 points).
    n_used, n_obs : ndarray of int, per star
        Observations used for M (after clipping) and available in solved frames.
    variable : ndarray of bool, per star
        Candidates whose light curve is not constant; excluded from the ensemble.
    member : ndarray of bool, per star
        Stars that constrain the zero points.
    star_component : ndarray of int, per star
        Connected component of the star (-1: unsolved).
    catalog_used : ndarray of bool, per star
        Stars used in the tie to the catalog.
    Z, Z_err : ndarray, per frame
        Zero point and its error relative to the gauge; NaN for unsolved frames.
    frame_excess : ndarray, per frame
        Extra scatter (mag) added in quadrature to every measurement of the frame.
    frame_n_stars : ndarray of int, per frame
        Ensemble stars used on the frame.
    frame_rms : ndarray, per frame
        Weighted rms (mag) of the frame's ensemble residuals.
    frame_component : ndarray of int, per frame
        Connected component (-1: unsolved).
    used_obs : ndarray of bool, per observation
        Kept in the ensemble solve.
    clipped_obs : ndarray of bool, per observation
        Judged outliers against the star's model (cosmic rays, ...); for variables,
        beyond ``clip_sigma`` times their own robust scatter.
    n_components : int
        Connected components of the star-frame graph, largest first.
    component_tied : ndarray of bool, per component
        Tied to the catalog (else relative only: mean Z = 0 over its frames).
    component_offset, component_offset_err : ndarray, per component
        Catalog offset of each component (0 and NaN when untied).
    component_colour_cov : ndarray, per component
        Covariance of each offset with the fitted colour term.
    tied_to_catalog : bool
        True when every solved component is tied to the catalog.
    colour_term, colour_term_err : float
        Colour term applied (fitted, given, or 0.0) and its error.
    pivot_colour, colour_spread : float
        Weighted mean and standard deviation of the tie stars' colours: stars of unknown
        colour are calibrated at the pivot, with ``|c| * colour_spread`` as systematic.
    catalog_sigma_int, catalog_chi2_dof : float
        Intrinsic scatter and quoted-error chi^2/dof of the catalog tie (NaN untied).
    rms : float
        Weighted rms (mag) of all ensemble residuals.
    n_iter : int
        Iterations run.
    """

    M: np.ndarray
    M_err: np.ndarray
    chi2_dof: np.ndarray
    n_used: np.ndarray
    n_obs: np.ndarray
    variable: np.ndarray
    member: np.ndarray
    star_component: np.ndarray
    catalog_used: np.ndarray
    Z: np.ndarray
    Z_err: np.ndarray
    frame_excess: np.ndarray
    frame_n_stars: np.ndarray
    frame_rms: np.ndarray
    frame_component: np.ndarray
    used_obs: np.ndarray
    clipped_obs: np.ndarray
    n_components: int
    component_tied: np.ndarray
    component_offset: np.ndarray
    component_offset_err: np.ndarray
    component_colour_cov: np.ndarray
    tied_to_catalog: bool
    colour_term: float
    colour_term_err: float
    pivot_colour: float
    colour_spread: float
    catalog_sigma_int: float
    catalog_chi2_dof: float
    rms: float
    n_iter: int

    @property
    def frame_tied(self) -> np.ndarray:
        """Per frame: solved and tied to the catalog (else flag 512 applies)."""
        comp = self.frame_component
        out = np.zeros(comp.shape, dtype=bool)
        ok = comp >= 0
        out[ok] = self.component_tied[comp[ok]]
        return out

    def systematic_error(self, frame_idx, colour=None) -> np.ndarray:
        """Calibration error shared by all measurements of a star: offset and colour term.

        Parameters
        ----------
        frame_idx : array_like of int
            Frames of the measurements (their component's offset applies).
        colour : array_like, optional
            Colour of each measurement's star; NaN or None: unknown.

        Returns
        -------
        ndarray
            1-sigma error (mag); 0 in untied components, NaN in unsolved frames.
        """
        f = np.asarray(frame_idx, dtype=np.int64)
        col = np.full(f.shape, np.nan) if colour is None else np.broadcast_to(np.asarray(colour, float), f.shape)
        ok = (f >= 0) & (f < self.Z.shape[0])
        comp = np.where(ok, self.frame_component[np.clip(f, 0, self.Z.shape[0] - 1)], -1)
        solved = comp >= 0
        k = np.clip(comp, 0, None)
        known = np.isfinite(col)
        x = np.where(known, col, self.pivot_colour if np.isfinite(self.pivot_colour) else 0.0)
        var = np.zeros(f.shape)
        if self.n_components:
            tied = self.component_tied[k] & solved
            var = np.where(tied, self.component_offset_err[k] ** 2 + x * x * self.colour_term_err**2
                           + 2 * x * self.component_colour_cov[k], 0.0)
        spread = self.colour_term * (self.colour_spread if np.isfinite(self.colour_spread) else 0.0)
        var = var + np.where(known, 0.0, spread**2)
        return np.where(solved, np.sqrt(np.maximum(var, 0.0)), np.nan)


# -- the two-way least-squares solver ----------------------------------------------------


def _group_median(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    order = np.lexsort((values, groups))
    v = values[order]
    counts = np.bincount(groups, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(n, np.nan)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = 0.5 * (v[lo] + v[hi])
    return out


def _rows_dense(x: sparse.csr_matrix):
    """Yield (start, dense block) of the rows of a CSR matrix, a bounded amount at a time."""
    step = max(1, _CHUNK_VALUES // max(x.shape[1], 1))
    for r0 in range(0, x.shape[0], step):
        yield r0, x[r0:r0 + step].toarray()


def _eliminate(a_idx, b_idx, y, w, na, nb, want_cov):
    """Eliminate side a; dense Schur system on side b with gauge sum(b) = 0.

    Returns b-side solution, a-side solution, and (if want_cov) the full b-side covariance
    C = S^+ and the a-side variances.
    """
    Wa = np.bincount(a_idx, w, na)
    Wb = np.bincount(b_idx, w, nb)
    ba = np.bincount(a_idx, w * y, na)
    bb = np.bincount(b_idx, w * y, nb)
    # X_ab = w_ab / sqrt(W_a): then S = diag(W_b) - X^T X (duplicates are summed).
    x = sparse.csr_matrix((w / np.sqrt(Wa[a_idx]), (a_idx, b_idx)), shape=(na, nb))
    S = np.diag(Wb)
    if x.nnz < 0.05 * na * nb:
        S -= (x.T @ x).toarray()
    else:
        for _, block in _rows_dense(x):
            S -= block.T @ block
    rhs = bb - np.bincount(b_idx, w * (ba / Wa)[a_idx], nb)
    # S has the null vector 1 (a common shift of both sides changes nothing). Adding
    # alpha u u^T with u = 1/sqrt(nb) makes it positive definite without moving the
    # solution orthogonal to 1, and inv(S_reg) = S^+ + 11^T / (alpha nb).
    alpha = float(np.mean(np.diag(S))) or 1.0
    S_reg = S + alpha / nb
    try:
        factor = cho_factor(S_reg, lower=True, check_finite=False)

        def solve(r):
            return cho_solve(factor, r, check_finite=False)
    except LinAlgError:  # numerically singular beyond the gauge: least-squares fallback
        pinv = np.linalg.pinv(S_reg, hermitian=True)

        def solve(r):
            return pinv @ r
    qb = solve(rhs)
    qb -= qb.mean()
    pa = (ba - np.bincount(a_idx, w * qb[b_idx], na)) / Wa
    if not want_cov:
        return qb, pa, None, None
    C = solve(np.eye(nb)) - 1.0 / (alpha * nb)
    C = 0.5 * (C + C.T)
    quad = np.empty(na)
    for r0, block in _rows_dense(x):
        quad[r0:r0 + block.shape[0]] = np.einsum("ij,ij->i", block @ C, block)
    var_a = 1.0 / Wa + quad / Wa
    return qb, pa, C, var_a


def solve_two_way(row_idx, col_idx, y, weight, n_rows: int, n_cols: int, *, want_cov: bool = True):
    """Weighted least squares for ``y = p[row] + q[col]`` with the gauge ``mean(q) = 0``.

    The observations must form one connected component. The larger of the two sides is
    eliminated and the dense Schur complement on the smaller one is factorised.

    Parameters
    ----------
    row_idx, col_idx : ndarray of int
        Row (star) and column (frame) of each observation; every index in
        ``range(n_rows)`` and ``range(n_cols)`` must occur.
    y, weight : ndarray
        Values and weights (1 / variance).
    n_rows, n_cols : int
        Sizes.
    want_cov : bool
        Also return the variances (one matrix inverse, O(min(n_rows, n_cols)^3)).

    Returns
    -------
    p, q : ndarray
        Solutions (``mean(q) == 0``).
    var_p, var_q : ndarray or None
        Their variances under that gauge.
    """
    r = np.asarray(row_idx, dtype=np.int64)
    c = np.asarray(col_idx, dtype=np.int64)
    y = np.asarray(y, dtype=float)
    w = np.asarray(weight, dtype=float)
    if n_cols <= n_rows:
        q, p, C, var_p = _eliminate(r, c, y, w, n_rows, n_cols, want_cov)
        return p, q, var_p, (None if C is None else np.diag(C).copy())
    # Fewer rows: solve on the rows (gauge mean p = 0), then move to mean q = 0, which
    # shifts p up and q down by mean(q). Variances follow from the gauge-free quantities
    # p_i + mean(q) and q_j - mean(q), with the block inverse of the normal matrix.
    p0, q0, C, var_q0 = _eliminate(c, r, y, w, n_cols, n_rows, want_cov)
    shift = q0.mean()
    p, q = p0 + shift, q0 - shift
    if C is None:
        return p, q, None, None
    F = n_cols
    V = np.bincount(c, w, F)                      # column weight sums
    u = np.bincount(r, w / V[c], n_rows)          # u = W D_V^-1 1
    Cu = C @ u
    uCu = float(u @ Cu)
    s_inv_v = float(np.sum(1.0 / V))
    var_qbar = (s_inv_v + uCu) / F**2
    var_p = np.diag(C) + var_qbar - 2.0 / F * Cu
    wCw_over_V2 = var_q0 - 1.0 / V                # _eliminate gave 1/V + w^T C w / V^2
    wCu = np.bincount(c, w * Cu[r], F)
    var_q = (1 - 2.0 / F) / V + s_inv_v / F**2 + wCw_over_V2 - 2.0 / (F * V) * wCu + uCu / F**2
    return p, q, var_p, var_q


# -- helpers of the iteration -------------------------------------------------------------


def _prune(keep, star, frame, n_s, n_f, min_frames, min_stars):
    """Drop stars with too few frames and frames with too few stars, until stable."""
    keep = keep.copy()
    while True:
        cs = np.bincount(star[keep], minlength=n_s)
        cf = np.bincount(frame[keep], minlength=n_f)
        bad = keep & ((cs[star] < min_frames) | (cf[frame] < min_stars))
        if not bad.any():
            return keep
        keep &= ~bad


def _components(keep, star, frame, n_s, n_f):
    """Connected components of the kept star-frame graph, largest first; -1 elsewhere."""
    s, f = star[keep], frame[keep]
    graph = sparse.coo_matrix((np.ones(s.size), (s, n_s + f)), shape=(n_s + n_f, n_s + n_f))
    _, labels = connected_components(graph, directed=False)
    present = np.zeros(n_s + n_f, dtype=bool)
    present[s] = True
    present[n_s + f] = True
    labels = np.where(present, labels, -1)
    comps, sizes = np.unique(labels[present], return_counts=True)
    order = comps[np.argsort(-sizes, kind="stable")]
    remap = np.full(labels.max() + 2 if labels.size else 1, -1)
    remap[order] = np.arange(order.size)
    out = np.where(labels >= 0, remap[labels], -1)
    return out[:n_s], out[n_s:], order.size


def _solve_components(keep, star, frame, y, w, star_comp, frame_comp, n_comp, n_s, n_f, want_cov):
    p = np.full(n_s, np.nan)
    q = np.full(n_f, np.nan)
    var_p = np.full(n_s, np.nan)
    var_q = np.full(n_f, np.nan)
    obs_comp = np.where(keep, star_comp[star], -1)
    for k in range(n_comp):
        sel = obs_comp == k
        stars_k = np.flatnonzero(star_comp == k)
        frames_k = np.flatnonzero(frame_comp == k)
        ls = np.searchsorted(stars_k, star[sel])
        lf = np.searchsorted(frames_k, frame[sel])
        pk, qk, vpk, vqk = solve_two_way(ls, lf, y[sel], w[sel], stars_k.size, frames_k.size, want_cov=want_cov)
        p[stars_k], q[frames_k] = pk, qk
        if want_cov:
            var_p[stars_k], var_q[frames_k] = vpk, vqk
    return p, q, var_p, var_q


def _frame_excess(resid, err, w, frame, star, keep, n_f, n_s, clip_sigma):
    """Per-frame extra scatter s_j, by maximum likelihood over the frame's kept residuals.

    Solves sum_i (r_i^2 - E_i) / v_i^2 = 0 with v_i = err_i^2 + s_j^2 and
    E_i = (1 - h_i) v_i times the clipped-normal variance, where h_i ~ w/W_star + w/W_frame
    is the observation's leverage in the two-way model. The 1/v^2 weights let the bright
    stars, whose scatter the extra term actually changes, set it; matching the plain
    chi^2 sum instead lets the chi^2 noise of hundreds of faint stars swamp it.
    """
    r, e, f = resid[keep], err[keep], frame[keep]
    wk = w[keep]
    lev = wk / np.bincount(star[keep], wk, n_s)[star[keep]] + wk / np.bincount(f, wk, n_f)[f]
    expect = np.clip(1 - lev, 0, 1) * clipped_variance(clip_sigma)
    r2, e2 = r * r, e * e

    def score(s):
        v = e2 + s[f] ** 2
        return np.bincount(f, (r2 - expect * v) / (v * v), n_f)

    out = np.zeros(n_f)
    need = score(out) > 0
    if not need.any():
        return out, (e2, f)
    # Bisection in log s on all frames at once: 20 halvings of a range of at most ~e^16
    # leave a relative error below 2e-5.
    rmax = np.zeros(n_f)
    np.maximum.at(rmax, f, np.abs(r))
    lo = np.full(n_f, 1e-6)
    hi = np.maximum(10 * rmax, 1e-5)
    for _ in range(20):
        mid = np.sqrt(lo * hi)
        above = score(mid) > 0
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    out[need] = np.sqrt(lo * hi)[need]
    return out, (e2, f)


def _excess_variance(s, e2, f, n_f):
    """Sampling variance of each frame's s^2 (Fisher information of the likelihood)."""
    v = e2 + s[f] ** 2
    info = 0.5 * np.bincount(f, 1.0 / (v * v), n_f)
    with np.errstate(divide="ignore"):
        return np.where(info > 0, 1.0 / info, np.inf)


def _shrink_excess(s, errors, airmass):
    """Empirical-Bayes shrinkage of the per-frame s^2 towards what the other frames say.

    A frame's own estimate rests on its few bright stars (25 % noise in s^2 from 30 of
    them), and noisy weights make the errors of the weighted means too small. The prior
    mean is a constant, or ``a + b X^3.5`` given the airmass X (a flat-field floor plus
    scintillation, whose variance grows as X^3.5); the spread tau^2 of the true values
    about it comes from the excess of the estimates' scatter over their sampling noise,
    and each frame moves towards the prior by V / (V + tau^2). V is evaluated at the
    prior, not at the frame's own estimate: a low estimate has a small V of its own and
    would otherwise pull the prior down.
    """
    e2, f = errors
    n_f = s.shape[0]
    s2 = s * s
    ok = np.bincount(f, minlength=n_f) >= 3
    if ok.sum() < 5:
        return s
    design = np.ones((int(ok.sum()), 1))
    if airmass is not None and np.all(np.isfinite(airmass[ok])) and np.ptp(airmass[ok]) > 0.05:
        design = np.column_stack([design, airmass[ok] ** 3.5])
    y = s2[ok]
    mu = np.full(y.shape, float(np.median(y)))
    tau2 = 0.0
    for _ in range(5):
        prior = np.zeros(n_f)
        prior[ok] = np.sqrt(np.maximum(mu, 0.0))
        V = _excess_variance(prior, e2, f, n_f)[ok]
        w = 1.0 / (tau2 + V)
        beta = np.linalg.lstsq(design * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
        mu = np.maximum(design @ beta, 0.0)
        tau2 = max(float(np.sum(w * ((y - mu) ** 2 - V)) / np.sum(w)), 0.0)
    out = s2.copy()
    out[ok] = np.maximum(mu + tau2 / (tau2 + V) * (y - mu), 0.0)
    return np.sqrt(out)


def _flux_z(resid, sigma):
    """Residual ``inst - model`` (mag) as a deviation in flux, in units of sigma (mag).

    Flux noise is what is normal; in magnitudes a bright excursion is compressed by the
    logarithm, so a cosmic ray on a faint star (0.55 mag brighter at S/N 7: 5 sigma in
    flux) would look like 3.8 sigma. Identical to resid / sigma for small residuals.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(_MAG_PER_LN * np.expm1(-resid / _MAG_PER_LN)) / sigma


def _own_means(star, y, w, inst_ok, start, n_s, clip_sigma, rounds=3):
    """Each star's weighted mean of y over its observations, clipped about itself.

    Returns mean, kept mask (over observations) and chi^2 of the kept.
    """
    mean = start.copy()
    missing = ~np.isfinite(mean)
    if missing.any():
        sel = inst_ok & missing[star]
        mean[missing] = _group_median(y[sel], star[sel], n_s)[missing]
    sw = np.sqrt(w)
    kept = inst_ok.copy()
    for _ in range(rounds):
        kept = inst_ok & (_flux_z(y - mean[star], 1.0 / sw) <= clip_sigma)
        W = np.bincount(star[kept], w[kept], n_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            new = np.bincount(star[kept], (w * y)[kept], n_s) / W
        mean = np.where(W > 0, new, mean)
    kept = inst_ok & (_flux_z(y - mean[star], 1.0 / sw) <= clip_sigma)
    z = (y - mean[star]) * sw
    chi2 = np.bincount(star[kept], (z * z)[kept], n_s)
    return mean, kept, chi2


def _find_variables(chi2, n_kept, n_all, candidate, fap):
    """Candidates whose chi^2 (scaled by the bulk) or outlier count is improbable.

    A large-amplitude variable may have almost every point clipped about its own mean,
    leaving no chi^2 to judge: the count of clipped points catches it, against the
    binomial expectation at the field's outlier rate.
    """
    variable = np.zeros(candidate.shape, dtype=bool)
    dof = n_kept - 1
    has_dof = candidate & (dof >= 1)
    if has_dof.sum() < 5:
        return variable
    # Scale by the bulk: median of chi^2 over its expected median, so that an error model
    # a little off for every star does not flag them all.
    scale = max(float(np.median(chi2[has_dof] / stats.chi2.median(dof[has_dof]))), 0.5)
    variable[has_dof] = stats.chi2.sf(chi2[has_dof] / scale, dof[has_dof]) < fap
    clipped = n_all - n_kept
    rate = max(float(clipped[candidate].sum()) / max(float(n_all[candidate].sum()), 1.0), 1e-4)
    many = candidate & (clipped > 0)
    variable[many] |= stats.binom.sf(clipped[many] - 1, n_all[many], rate) < fap
    # An eclipse or a transit is a run of points far off the star's mean; in a field whose
    # outlier rate is high (blends, crowding) the binomial test forgives it. Three or more
    # clipped points, a fifth of the star's, are not cosmic rays.
    variable |= candidate & (clipped >= np.maximum(3, 0.2 * n_all))
    return variable


def _validate(star_idx, frame_idx, inst, inst_err, n_stars, n_frames):
    star = np.asarray(star_idx)
    frame = np.asarray(frame_idx)
    inst = np.asarray(inst, dtype=float)
    err = np.asarray(inst_err, dtype=float)
    if not (star.ndim == frame.ndim == inst.ndim == err.ndim == 1):
        raise ValueError("star_idx, frame_idx, inst and inst_err must be one-dimensional")
    if not (star.shape == frame.shape == inst.shape == err.shape):
        raise ValueError(f"star_idx, frame_idx, inst and inst_err must have the same length, got "
                         f"{star.size}, {frame.size}, {inst.size}, {err.size}")
    for name, a in (("star_idx", star), ("frame_idx", frame)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must be >= 0")
    star = star.astype(np.int64)
    frame = frame.astype(np.int64)
    n_s = int(star.max()) + 1 if n_stars is None and star.size else int(n_stars or 0)
    n_f = int(frame.max()) + 1 if n_frames is None and frame.size else int(n_frames or 0)
    if star.size and star.max() >= n_s:
        raise ValueError(f"star_idx goes up to {star.max()} but n_stars is {n_s}")
    if frame.size and frame.max() >= n_f:
        raise ValueError(f"frame_idx goes up to {frame.max()} but n_frames is {n_f}")
    return star, frame, inst, err, n_s, n_f


def _per_star(name, value, n_s):
    if value is None:
        return None
    a = np.asarray(value, dtype=float)
    if a.shape != (n_s,):
        raise ValueError(f"{name} must have one value per star ({n_s}), got shape {a.shape}")
    return a


# -- the solve ----------------------------------------------------------------------------


def solve_ensemble(
    star_idx,
    frame_idx,
    inst,
    inst_err,
    *,
    n_stars: int | None = None,
    n_frames: int | None = None,
    cat_mag=None,
    cat_err=None,
    colour=None,
    colour_term: float | None = None,
    colour_term_err: float = 0.0,
    fit_colour: bool = False,
    clip_sigma: float = 4.0,
    max_iter: int = 5,
    variable_fap: float = 1e-3,
    min_frames_per_star: int = 3,
    min_stars_per_frame: int = 3,
    min_catalog_stars: int = 5,
    catalog_clip_sigma: float = 3.0,
    debias: bool = True,
    airmass=None,
    shrink_excess: bool = True,
) -> EnsembleSolution:
    """Solve star magnitudes and frame zero points of one field and filter together.

    See the module docstring for the model (``M_i = inst_ij + Z_j + c colour_i``), the
    solver, the noise model, the clipping and the tie to the catalog.

    Parameters
    ----------
    star_idx, frame_idx : array_like of int, shape (n_obs,)
        Star and frame of each observation (0-based).
    inst, inst_err : array_like, shape (n_obs,)
        Instrumental magnitudes and their quoted errors; non-finite values and
        non-positive errors are ignored.
    n_stars, n_frames : int, optional
        Sizes of the outputs (default: largest index + 1).
    cat_mag, cat_err : array_like, shape (n_stars,), optional
        Catalog magnitude and error per star, NaN where none (a missing error is taken
        as the median of the others).
    colour : array_like, shape (n_stars,), optional
        Catalog colour per star, NaN where unknown.
    colour_term : float, optional
        Apply this fixed colour term (with ``colour_term_err``); exclusive with
        ``fit_colour``.
    fit_colour : bool
        Fit the colour term in the catalog tie (needs ``colour`` and catalog stars).
    clip_sigma : float
        Observation rejection threshold, in units of the observation's full error.
    max_iter : int
        Most clip / re-weight / variable-search iterations.
    variable_fap : float
        False-alarm probability per star of each variability test.
    min_frames_per_star, min_stars_per_frame : int
        Stars and frames with fewer kept observations leave the solve (pruned until
        stable). Pruned frames get no zero point (NaN).
    min_catalog_stars : int
        Fewest catalog stars a component needs to be tied to the catalog.
    catalog_clip_sigma : float
        Rejection threshold of the catalog tie.
    debias : bool
        Correct each instrumental magnitude for the second-order bias of the logarithm,
        ``-err^2 / (2 * 1.0857)``, before averaging (matters below S/N ~ 20: 4.6 mmag
        at S/N 10). :func:`calibrate` does not: one measurement's bias is far below its
        error.
    airmass : array_like, shape (n_frames,), optional
        Airmass of each frame: the frames' excess scatter is then shrunk towards
        ``a + b X^3.5`` (floor plus scintillation) rather than towards a constant.
    shrink_excess : bool
        Shrink each frame's excess scatter towards the other frames' (empirical Bayes);
        off, each frame's own estimate is used.

    Returns
    -------
    EnsembleSolution

    Raises
    ------
    ValueError
        On inconsistent inputs.
    """
    star, frame, inst, err, n_s, n_f = _validate(star_idx, frame_idx, inst, inst_err, n_stars, n_frames)
    cat_mag = _per_star("cat_mag", cat_mag, n_s)
    cat_err = _per_star("cat_err", cat_err, n_s)
    col = _per_star("colour", colour, n_s)
    airmass_arr = None
    if airmass is not None:
        airmass_arr = np.asarray(airmass, dtype=float)
        if airmass_arr.shape != (n_f,):
            raise ValueError(f"airmass must have one value per frame ({n_f}), got shape {airmass_arr.shape}")
    if cat_err is not None and cat_mag is None:
        raise ValueError("cat_err given without cat_mag")
    if fit_colour and colour_term is not None:
        raise ValueError("give either fit_colour=True or a fixed colour_term, not both")
    if (fit_colour or colour_term is not None) and col is None:
        raise ValueError("a colour per star is needed to fit or apply a colour term")
    if clip_sigma <= 0 or max_iter < 1 or min_frames_per_star < 1 or min_stars_per_frame < 1:
        raise ValueError("clip_sigma must be > 0; max_iter, min_frames_per_star and min_stars_per_frame >= 1")

    valid = np.isfinite(inst) & np.isfinite(err) & (err > 0)
    err = np.where(valid, np.maximum(err, _MIN_ERROR), 1.0)
    y = np.where(valid, inst, 0.0)

    # Robust start: median polish, and one global excess scatter from the median residual.
    p = _group_median(y[valid], star[valid], n_s)
    q = np.zeros(n_f)
    for _ in range(3 if valid.any() else 0):
        q = _group_median((y - np.nan_to_num(p[star]))[valid], frame[valid], n_f)
        q -= np.nanmedian(q)
        p = _group_median((y - np.nan_to_num(q[frame]))[valid], star[valid], n_s)
    resid = y - p[star] - q[frame]
    start_ok = valid & np.isfinite(resid)
    r0, e0 = resid[start_ok], err[start_ok]
    excess0 = 0.0
    if r0.size and np.median(r0**2 / e0**2) > stats.chi2.median(1):
        lo, hi = 0.0, 10 * float(np.max(np.abs(r0)))
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.median(r0**2 / (e0**2 + mid**2)) > stats.chi2.median(1) else (lo, mid)
        excess0 = 0.5 * (lo + hi)
    excess = np.full(n_f, excess0)
    err_w = err.copy()
    # The mean of magnitudes is biased faint by err^2 / (2 * 1.0857) at low S/N (the
    # logarithm's curvature); subtracted with the error at the model flux.
    log_bias = 0.5 / _MAG_PER_LN if debias else 0.0
    y_fit = y - log_bias * err_w**2
    variable = np.zeros(n_s, dtype=bool)
    prev = None
    n_iter = 0

    def select(resid, err_w, excess, variable):
        sig2 = err_w**2 + excess[frame] ** 2
        with np.errstate(invalid="ignore"):
            keep = valid & (_flux_z(resid, np.sqrt(sig2)) <= clip_sigma) & ~variable[star]
        keep = _prune(keep, star, frame, n_s, n_f, min_frames_per_star, min_stars_per_frame)
        return keep, sig2

    for n_iter in range(1, max_iter + 1):
        keep, sig2 = select(resid, err_w, excess, variable)
        if not keep.any():
            break
        star_comp, frame_comp, n_comp = _components(keep, star, frame, n_s, n_f)
        w = 1.0 / sig2
        p, q, _, _ = _solve_components(keep, star, frame, y_fit, w, star_comp, frame_comp, n_comp, n_s, n_f, False)
        model = p[star] + q[frame]
        # Errors re-evaluated at the model flux (see the module docstring).
        with np.errstate(invalid="ignore", over="ignore"):
            factor = np.clip(10 ** (-0.4 * (y - model)), *_ERROR_FACTOR_RANGE)
        err_w = np.where(np.isfinite(factor), err * factor, err)
        y_fit = y - log_bias * err_w**2
        resid = y_fit - model
        w = 1.0 / (err_w**2 + excess[frame] ** 2)
        raw, errors = _frame_excess(resid, err_w, w, frame, star, keep, n_f, n_s, clip_sigma)
        new_excess = _shrink_excess(raw, errors, airmass_arr) if shrink_excess else raw
        # Variability of every candidate, members or not, about its own mean with the
        # current zero points.
        solved_f = np.isfinite(q)
        obs_ok = valid & solved_f[frame]
        w_own = 1.0 / (err_w**2 + new_excess[frame] ** 2)
        yq = y_fit - np.where(solved_f, q, 0.0)[frame]
        _, kept_own, chi2_own = _own_means(star, yq, w_own, obs_ok, p, n_s, clip_sigma)
        n_all = np.bincount(star[obs_ok], minlength=n_s)
        n_kept = np.bincount(star[kept_own], minlength=n_s)
        candidate = n_all >= min_frames_per_star
        new_variable = _find_variables(chi2_own, n_kept, n_all, candidate, variable_fap)
        state = (keep, new_variable)
        converged = (prev is not None and np.array_equal(prev[0], keep) and np.array_equal(prev[1], new_variable)
                     and np.allclose(new_excess, excess, rtol=0.02, atol=1e-4))
        excess, variable, prev = new_excess, new_variable, state
        if converged:
            break

    keep, sig2 = select(resid, err_w, excess, variable)
    return _finish(star, frame, y_fit, err, err_w, valid, keep, excess, variable, n_s, n_f, n_iter, cat_mag, cat_err,
                   col, colour_term, colour_term_err, fit_colour, clip_sigma, min_catalog_stars,
                   catalog_clip_sigma, min_frames_per_star)


def _finish(star, frame, y, err, err_w, valid, keep, excess, variable, n_s, n_f, n_iter, cat_mag, cat_err, col,
            colour_term, colour_term_err, fit_colour, clip_sigma, min_catalog_stars, catalog_clip_sigma,
            min_frames_per_star):
    sig2 = err_w**2 + excess[frame] ** 2
    if keep.any():
        star_comp, frame_comp, n_comp = _components(keep, star, frame, n_s, n_f)
        p, q, var_p, var_q = _solve_components(keep, star, frame, y, 1.0 / sig2, star_comp, frame_comp, n_comp,
                                               n_s, n_f, True)
    else:
        star_comp, frame_comp, n_comp = np.full(n_s, -1), np.full(n_f, -1), 0
        p, var_p = np.full(n_s, np.nan), np.full(n_s, np.nan)
        q, var_q = np.full(n_f, np.nan), np.full(n_f, np.nan)
    member = star_comp >= 0

    # ---- tie to the catalog
    tie = _tie(p, var_p, star_comp, n_comp, member, cat_mag, cat_err, col, colour_term, colour_term_err, fit_colour,
               min_catalog_stars, catalog_clip_sigma)
    offset = tie["offset"]
    c = tie["c"]
    Z = np.where(frame_comp >= 0, offset[np.clip(frame_comp, 0, None)] - q, np.nan) if n_comp else np.full(n_f, np.nan)
    Z_err = np.sqrt(var_q)
    colour_for = (np.where(np.isfinite(col), col, tie["pivot"] if np.isfinite(tie["pivot"]) else 0.0)
                  if col is not None else np.zeros(n_s))

    # ---- every star's magnitude from the calibrated observations
    solved_f = np.isfinite(Z)
    obs_ok = valid & solved_f[frame]
    cal = y + np.where(solved_f, Z, 0.0)[frame]
    w_own = 1.0 / (sig2 + np.where(solved_f, Z_err, 0.0)[frame] ** 2)
    # Non-members use the component holding most of their observations: never mix gauges.
    obs_comp = np.where(solved_f, frame_comp, -1)[frame]
    own_comp = np.full(n_s, -1)
    if obs_ok.any():
        counts = sparse.coo_matrix((np.ones(int(obs_ok.sum())), (star[obs_ok], obs_comp[obs_ok])),
                                   shape=(n_s, max(n_comp, 1))).toarray()
        has = counts.sum(axis=1) > 0
        own_comp[has] = np.argmax(counts[has], axis=1)
    own_comp = np.where(member, star_comp, own_comp)
    in_own = obs_ok & (obs_comp == own_comp[star])
    start = np.where(member, p + offset[np.clip(star_comp, 0, None)] if n_comp else np.nan, np.nan)
    # A variable's excursions are signal, not outliers: its points are clipped only
    # beyond clip_sigma times its own robust scatter (cosmic rays still go).
    scale = np.ones(n_s)
    if (variable & (own_comp >= 0)).any():
        sel = in_own & variable[star]
        med = _group_median(cal[sel], star[sel], n_s)
        z = np.abs(cal[sel] - med[star[sel]]) * np.sqrt(w_own[sel])
        scale = np.fmax(1.0, 1.4826 * _group_median(z, star[sel], n_s))
    clip_obs = clip_sigma * scale[star]
    mean_own, kept_own, chi2_own = _own_means(star, cal, w_own, in_own, start, n_s, clip_obs)
    W_own = np.bincount(star[kept_own], w_own[kept_own], n_s)
    n_kept = np.bincount(star[kept_own], minlength=n_s)
    n_obs = np.bincount(star[in_own], minlength=n_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        M = np.where(member, p + offset[np.clip(star_comp, 0, None)] if n_comp else np.nan, mean_own)
        M = np.where(n_kept > 0, M, np.nan) + c * colour_for
        M_err = np.where(member, np.sqrt(var_p), 1.0 / np.sqrt(W_own))
        M_err = np.where(n_kept > 0, M_err, np.nan)
    # Members: chi^2 about the ensemble model with the ensemble's kept observations.
    model_resid = y - p[star] - q[frame]
    chi2_mem = np.bincount(star[keep], model_resid[keep] ** 2 / sig2[keep], n_s)
    n_mem = np.bincount(star[keep], minlength=n_s)
    chi2 = np.where(member, chi2_mem, chi2_own)
    n_used = np.where(member, n_mem, n_kept)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2_dof = np.where(n_used >= 2, chi2 / (n_used - 1), np.nan)
    clipped = in_own & ~kept_own
    clipped |= valid & member[star] & solved_f[frame] & ~keep & (star_comp[star] == frame_comp[frame])

    # ---- per frame and global statistics
    wk = 1.0 / sig2[keep]
    rk = model_resid[keep]
    fk = frame[keep]
    frame_n = np.bincount(fk, minlength=n_f)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame_rms = np.sqrt(np.bincount(fk, wk * rk**2, n_f) / np.bincount(fk, wk, n_f))
        rms = float(np.sqrt(np.sum(wk * rk**2) / np.sum(wk))) if wk.size else float("nan")
    frame_excess = np.where(solved_f, excess, np.nan)

    return EnsembleSolution(
        M=M, M_err=M_err, chi2_dof=chi2_dof, n_used=n_used.astype(np.int64), n_obs=n_obs.astype(np.int64),
        variable=variable.copy(), member=member, star_component=np.where(n_kept > 0, own_comp, -1),
        catalog_used=tie["used"], Z=Z, Z_err=Z_err, frame_excess=frame_excess, frame_n_stars=frame_n,
        frame_rms=np.where(frame_n > 0, frame_rms, np.nan), frame_component=frame_comp, used_obs=keep,
        clipped_obs=clipped, n_components=int(n_comp), component_tied=tie["tied"], component_offset=offset,
        component_offset_err=tie["offset_err"], component_colour_cov=tie["cov_c"],
        tied_to_catalog=bool(n_comp > 0 and tie["tied"].all()), colour_term=float(c), colour_term_err=tie["c_err"],
        pivot_colour=tie["pivot"], colour_spread=tie["spread"], catalog_sigma_int=tie["sigma_int"],
        catalog_chi2_dof=tie["chi2_dof"], rms=rms, n_iter=int(n_iter),
    )


def _tie(p, var_p, star_comp, n_comp, member, cat_mag, cat_err, col, colour_term, colour_term_err, fit_colour,
         min_catalog_stars, clip_sigma):
    """Offsets per component (and the colour term) from ``cat - p = offset + c colour``."""
    n_s = p.shape[0]
    c_fixed = 0.0 if colour_term is None else float(colour_term)
    out = dict(offset=np.zeros(n_comp), offset_err=np.full(n_comp, np.nan), cov_c=np.zeros(n_comp),
               tied=np.zeros(n_comp, dtype=bool), c=c_fixed,
               c_err=float(colour_term_err) if colour_term is not None else (float("nan") if fit_colour else 0.0),
               used=np.zeros(n_s, dtype=bool), sigma_int=float("nan"), chi2_dof=float("nan"),
               pivot=float("nan"), spread=float("nan"))
    if cat_mag is None or n_comp == 0:
        return out
    need_colour = fit_colour or colour_term is not None
    usable = member & np.isfinite(cat_mag) & np.isfinite(p)
    if need_colour:
        usable &= np.isfinite(col)
    counts = np.bincount(star_comp[usable], minlength=n_comp)
    tiable = np.flatnonzero(counts >= min_catalog_stars)
    if tiable.size == 0:
        return out
    usable &= np.isin(star_comp, tiable)
    idx = np.flatnonzero(usable)
    col_of = np.searchsorted(tiable, star_comp[idx])
    design = np.zeros((idx.size, tiable.size + (1 if fit_colour else 0)))
    design[np.arange(idx.size), col_of] = 1.0
    yt = cat_mag[idx] - p[idx]
    if fit_colour:
        design[:, -1] = col[idx]
    elif colour_term is not None:
        yt = yt - c_fixed * col[idx]
    ce = np.zeros(idx.size) if cat_err is None else fill_missing_errors(cat_err[idx], np.ones(idx.size, bool))
    et = np.sqrt(ce**2 + var_p[idx])
    try:
        fit = fit_linear_robust(design, yt, et, clip_sigma=clip_sigma, min_points=min_catalog_stars,
                                what="catalog stars")
    except CalibrationError as exc:
        warnings.warn(f"ensemble not tied to the catalog: {exc}", RuntimeWarning, stacklevel=3)
        return out
    # A component may have lost all its stars to clipping: untie it rather than guess.
    kept_per = np.bincount(col_of[fit.used[: idx.size]], minlength=tiable.size)
    good = kept_per >= 1
    out["offset"][tiable[good]] = fit.coef[: tiable.size][good]
    out["offset_err"][tiable[good]] = np.sqrt(np.diag(fit.cov)[: tiable.size][good])
    out["tied"][tiable[good]] = True
    out["used"][idx[fit.used]] = True
    out["sigma_int"], out["chi2_dof"] = fit.sigma_int, fit.chi2_dof
    if need_colour:
        cu = col[idx[fit.used]]
        wu = 1.0 / (et[fit.used] ** 2 + fit.sigma_int**2)
        out["pivot"] = float(np.sum(wu * cu) / np.sum(wu))
        out["spread"] = float(np.sqrt(np.sum(wu * (cu - out["pivot"]) ** 2) / np.sum(wu)))
    if fit_colour:
        out["c"] = float(fit.coef[-1])
        out["c_err"] = float(np.sqrt(fit.cov[-1, -1]))
        out["cov_c"][tiable[good]] = fit.cov[: tiable.size, -1][good]
    return out


def calibrate(inst, inst_err, frame_idx, solution: EnsembleSolution, colour=None, *,
              include_systematic: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated magnitudes of any measurements of the ensemble's frames.

    ``mag = inst + Z[frame] + colour_term * colour``; the error adds in quadrature the
    quoted error, the frame's excess scatter, the frame's zero-point error and, with
    ``include_systematic``, the calibration error shared by all measurements of a star
    (catalog offset of the component, colour-term error at the star's colour, and for an
    unknown colour ``|c| * colour_spread``). Leave it out to compare measurements within
    one light curve, where a shared error does not scatter the points.

    Parameters
    ----------
    inst, inst_err : array_like
        Instrumental magnitudes and quoted errors.
    frame_idx : array_like of int
        Frame of each measurement, as given to :func:`solve_ensemble`.
    solution : EnsembleSolution
    colour : array_like, optional
        Colour of each measurement's star (NaN: unknown, calibrated at the pivot colour).
    include_systematic : bool
        Add the shared calibration error.

    Returns
    -------
    mag, mag_err : ndarray
        NaN for measurements of unsolved frames or with invalid inputs.
    """
    inst = np.asarray(inst, dtype=float)
    inst_err = np.asarray(inst_err, dtype=float)
    f = np.asarray(frame_idx)
    if not (inst.shape == inst_err.shape == f.shape):
        raise ValueError(f"inst, inst_err and frame_idx must have the same shape, got "
                         f"{inst.shape}, {inst_err.shape}, {f.shape}")
    if f.size and not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"frame_idx must be integers, got dtype {f.dtype}")
    n_f = solution.Z.shape[0]
    ok = (f >= 0) & (f < n_f)
    fi = np.clip(f, 0, max(n_f - 1, 0)).astype(np.int64)
    Z = np.where(ok, solution.Z[fi], np.nan)
    Z_err = np.where(ok, solution.Z_err[fi], np.nan)
    excess = np.where(ok, solution.frame_excess[fi], np.nan)
    if colour is None:
        col = np.full(inst.shape, np.nan)
    else:
        col = np.broadcast_to(np.asarray(colour, dtype=float), inst.shape)
    pivot = solution.pivot_colour if np.isfinite(solution.pivot_colour) else 0.0
    x = np.where(np.isfinite(col), col, pivot)
    mag = inst + Z + solution.colour_term * x
    var = inst_err**2 + excess**2 + Z_err**2
    if include_systematic:
        var = var + np.where(ok, solution.systematic_error(np.where(ok, f, -1), col), np.nan) ** 2
    with np.errstate(invalid="ignore"):
        bad = ~(inst_err > 0)
    return np.where(bad, np.nan, mag), np.where(bad, np.nan, np.sqrt(var))
