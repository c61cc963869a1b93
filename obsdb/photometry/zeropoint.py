"""Zero point (and colour term) of one frame against a reference catalog.

Convention, shared with :mod:`obsdb.photometry.ensemble`::

    inst = -2.5 log10(flux_adu)                  (per exposure, not per second)
    mag  = inst + zp + colour_term * colour      (colour from the catalog, e.g. g - r)

so that a frame through cloud has a *smaller* zero point, and an extinction coefficient
``k`` (mag per airmass) enters as ``zp = zp0 - k * airmass``.

Why an intrinsic scatter: catalog errors are often under-quoted (and instrumental
errors leave out flat-field residuals and scintillation), so the residuals scatter more
than the quoted errors say. A plain weighted mean would then give the brightest star with
the smallest quoted error almost all the weight and report an error far too small. The
fit adds one scatter term ``sigma_int`` in quadrature to every star's error, chosen so
that chi^2 per degree of freedom is what a clipped normal sample gives; the zero-point
error then follows from the weights actually used.

Why the robust start: a single bad calibrator (a blend, a variable, a wrong match) with
a small quoted error drags an ordinary weighted mean far enough that every *good* star
looks deviant, and clipping then removes the wrong ones. The first solution is a weighted
L1 fit (for a zero point alone, the weighted median), and the first scale the one that
makes the median normalised residual that of a normal distribution.

Choosing calibrators is left to the caller, with :func:`select_calibrators` as the usual
rule (clean flags, S/N above a floor, a catalog error below a ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats

from obsdb.photometry import flags as F

__all__ = [
    "CALIBRATOR_REJECT_FLAGS", "CalibrationError", "Extinction", "RobustFit", "ZeroPoint",
    "fill_missing_errors", "fit_extinction", "fit_linear_robust", "fit_zero_point", "select_calibrators",
]

#: Flags that keep a measurement out of a zero-point fit: anything that biases its flux.
#: UNCALIBRATED (no master) and NOT_CATALOG_TIED are frame-level facts and do not.
CALIBRATOR_REJECT_FLAGS = (F.SATURATED | F.EDGE | F.BAD_PIXEL | F.COSMIC_RAY | F.BLENDED
                           | F.CENTROID_SHIFT | F.LOW_SNR | F.FORCED)

# Quoted errors below this (mag) are raised to it: a zero error would give one star
# infinite weight before the intrinsic scatter is known.
_MIN_ERROR = 1e-4
# Median of chi^2 with one degree of freedom: the robust first scale matches it.
_CHI2_1_MEDIAN = float(stats.chi2.median(1))


class CalibrationError(ValueError):
    """The data cannot give a calibration (too few stars survive, degenerate colours)."""


@dataclass(frozen=True)
class ZeroPoint:
    """One frame's photometric calibration: ``mag = inst + zp + colour_term * colour``.

    Attributes
    ----------
    zp, zp_err : float
        Zero point (mag) and its 1-sigma error; the error already includes the intrinsic
        scatter, and is further inflated by sqrt(chi2/expected) if that exceeds 1.
    colour_term, colour_term_err : float
        The colour coefficient used: fitted (with its error), given (error 0), or 0.0
        when no colour was used (error 0).
    rms : float
        Unweighted rms (mag) of the residuals ``cat - inst - zp - c * colour`` of the
        stars used.
    chi2_dof : float
        chi^2 per degree of freedom of the stars used, with the *quoted* errors only
        (inst_err and cat_err, no intrinsic scatter): how far the quoted errors are off.
    n_stars : int
        Number of stars used.
    used : ndarray of bool
        Over the inputs: True for the stars kept in the final fit.
    sigma_int : float
        Intrinsic scatter (mag) added in quadrature to every star's error.
    covariance : ndarray, shape (2, 2)
        Covariance of (zp, colour_term); zeros in the colour row/column unless fitted.
    """

    zp: float
    zp_err: float
    colour_term: float
    colour_term_err: float
    rms: float
    chi2_dof: float
    n_stars: int
    used: np.ndarray
    sigma_int: float = 0.0
    covariance: np.ndarray | None = None

    def error_at(self, colour: float | np.ndarray) -> np.ndarray:
        """Error (mag) of ``zp + colour_term * colour``: the calibration error of a star.

        Parameters
        ----------
        colour : float or array_like
            The star's colour.

        Returns
        -------
        ndarray
            sqrt(var(zp) + colour^2 var(c) + 2 colour cov(zp, c)).
        """
        x = np.asarray(colour, dtype=float)
        cov = self.covariance if self.covariance is not None else np.diag([self.zp_err**2, self.colour_term_err**2])
        return np.sqrt(np.maximum(cov[0, 0] + x * x * cov[1, 1] + 2 * x * cov[0, 1], 0.0))


@dataclass(frozen=True)
class RobustFit:
    """Result of :func:`fit_linear_robust`.

    Attributes
    ----------
    coef : ndarray, shape (p,)
        Fitted parameters.
    cov : ndarray, shape (p, p)
        Their covariance (intrinsic scatter included, inflated if chi^2 is high).
    sigma_int : float
        Intrinsic scatter added in quadrature to every error.
    used : ndarray of bool
        Over the input points: kept in the final fit.
    residuals : ndarray
        ``y - design @ coef`` for every input point (NaN where the input was not finite).
    chi2_dof : float
        chi^2 per degree of freedom of the used points with the quoted errors only.
    rms : float
        Unweighted rms of the used residuals.
    n_used : int
        Number of points used.
    n_iter : int
        Clipping iterations run.
    """

    coef: np.ndarray
    cov: np.ndarray
    sigma_int: float
    used: np.ndarray
    residuals: np.ndarray
    chi2_dof: float
    rms: float
    n_used: int
    n_iter: int


class Extinction(NamedTuple):
    """Extinction over a night: ``zp = zp0 - k * airmass``.

    Attributes
    ----------
    k : float
        Extinction coefficient (mag per airmass; positive).
    k_err : float
        Its 1-sigma error (frame-to-frame transparency scatter included).
    zp0 : float
        Zero point above the atmosphere (airmass 0).
    """

    k: float
    k_err: float
    zp0: float


def clipped_variance(clip_sigma: float | None) -> float:
    """Variance of a unit normal truncated at +-clip_sigma (1 without clipping).

    Sigma clipping removes the tails of good data too, so chi^2 of a clipped sample is
    below its degrees of freedom: at 3 sigma by 2.7 %. Scatter terms solved for
    "chi^2 = dof" would otherwise come out too small.
    """
    if clip_sigma is None or not np.isfinite(clip_sigma):
        return 1.0
    k = float(clip_sigma)
    mass = 2 * stats.norm.cdf(k) - 1
    return float(1 - 2 * k * stats.norm.pdf(k) / mass)


def _wls(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares: coefficients and their covariance inv(X^T W X)."""
    normal = design.T @ (design * w[:, None])
    try:
        # Cholesky both solves and proves the normal matrix positive definite.
        chol = np.linalg.cholesky(normal)
    except np.linalg.LinAlgError:
        raise CalibrationError("the fit is degenerate (e.g. all calibrators have the same colour)") from None
    inv_chol = np.linalg.inv(chol)
    cov = inv_chol.T @ inv_chol
    if not np.all(np.isfinite(cov)) or np.linalg.cond(normal) > 1e12:
        raise CalibrationError("the fit is degenerate (e.g. all calibrators have the same colour)")
    return cov @ (design.T @ (w * y)), cov


def _l1_start(design: np.ndarray, y: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Minimise sum |residual| / err: the weighted median for a constant, else IRLS."""
    if design.shape[1] == 1 and np.all(design[:, 0] == 1.0):
        return np.array([_weighted_median(y, 1.0 / err)])
    coef, _ = _wls(design, y, 1.0 / err**2)
    floor = 1e-3 * float(np.median(err))
    for _ in range(50):
        r = np.abs(y - design @ coef)
        new, _ = _wls(design, y, 1.0 / (err * np.maximum(r, floor)))
        if np.max(np.abs(new - coef)) < 1e-7:
            return new
        coef = new
    return coef


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    half = 0.5 * cw[-1]
    i = int(np.searchsorted(cw, half))
    # Exactly half the weight below: the midpoint, as for an ordinary median.
    if i + 1 < len(cw) and np.isclose(cw[i], half, rtol=1e-12, atol=0):
        return float(0.5 * (values[order][i] + values[order][i + 1]))
    return float(values[order][i])


def _robust_scatter(r: np.ndarray, err: np.ndarray) -> float:
    """Scatter s with median(r^2 / (err^2 + s^2)) equal to that of a unit normal."""
    z2 = r**2
    if np.median(z2 / err**2) <= _CHI2_1_MEDIAN:
        return 0.0
    # At s = 10 max|r| every normalised residual is below 0.1, so the root is bracketed.
    hi = 10.0 * float(np.sqrt(np.max(z2)))
    return float(optimize.brentq(lambda s: np.median(z2 / (err**2 + s * s)) - _CHI2_1_MEDIAN, 0.0, hi, xtol=1e-7))


def _fit_with_scatter(design, y, err, target_ratio):
    """WLS with the intrinsic scatter that brings chi^2 to target_ratio * dof."""
    n, p = design.shape
    dof = n - p

    def chi2_at(s: float) -> float:
        w = 1.0 / (err**2 + s * s)
        coef, _ = _wls(design, y, w)
        return float(np.sum(w * (y - design @ coef) ** 2))

    target = target_ratio * dof
    sigma = 0.0
    if dof > 0 and chi2_at(0.0) > target:
        # chi^2 falls monotonically with s; bracket the root by doubling.
        hi = max(float(np.std(y)), float(np.max(err)), 1e-4)
        while chi2_at(hi) > target:
            hi *= 2.0
        sigma = float(optimize.brentq(lambda s: chi2_at(s) - target, 0.0, hi, xtol=1e-7, rtol=1e-6))
    w = 1.0 / (err**2 + sigma**2)
    coef, cov = _wls(design, y, w)
    chi2 = float(np.sum(w * (y - design @ coef) ** 2))
    if dof > 0 and chi2 > target:
        cov = cov * (chi2 / target)  # only when the root finder could not reach the target
    return coef, cov, sigma


def fit_linear_robust(
    design: np.ndarray,
    y: np.ndarray,
    err: np.ndarray,
    *,
    clip_sigma: float | None = 3.0,
    max_iter: int = 10,
    min_points: int = 5,
    what: str = "stars",
) -> RobustFit:
    """Sigma-clipped weighted linear fit with an intrinsic scatter term.

    Fits ``y = design @ coef`` with weights ``1 / (err^2 + sigma_int^2)``, where
    ``sigma_int >= 0`` is solved for so that chi^2 equals the degrees of freedom times the
    variance of a normal sample clipped at ``clip_sigma``. Starts from a weighted L1 fit
    and a median-based scale, then alternates fit and clipping (clipped points may come
    back) until the kept set stops changing.

    Parameters
    ----------
    design : ndarray, shape (n, p)
        Design matrix.
    y, err : ndarray, shape (n,)
        Data and 1-sigma errors; points with a non-finite value are ignored.
    clip_sigma : float or None
        Rejection threshold in units of sqrt(err^2 + sigma_int^2); None for no clipping.
    max_iter : int
        Most clipping iterations.
    min_points : int
        Fewest points that must survive.
    what : str
        Name of the points in error messages.

    Returns
    -------
    RobustFit

    Raises
    ------
    CalibrationError
        If fewer than ``min_points`` (or fewer than p + 1) points survive, or the design
        is degenerate.
    """
    design = np.asarray(design, dtype=float)
    y = np.asarray(y, dtype=float)
    err = np.maximum(np.asarray(err, dtype=float), _MIN_ERROR)
    n, p = design.shape
    finite = np.isfinite(y) & np.isfinite(err) & np.all(np.isfinite(design), axis=1)
    need = max(int(min_points), p + 1)

    def check(mask: np.ndarray, stage: str) -> None:
        if mask.sum() < need:
            raise CalibrationError(
                f"only {int(mask.sum())} of {n} {what} {stage}; at least {need} are needed "
                f"(min_stars={min_points}, {p} parameter(s))")

    check(finite, "have finite values")
    idx = np.flatnonzero(finite)
    X, yy, ee = design[idx], y[idx], err[idx]
    coef = _l1_start(X, yy, ee)
    r = yy - X @ coef
    sigma = _robust_scatter(r, ee)
    k = np.inf if clip_sigma is None else float(clip_sigma)
    # The first cut is already at clip_sigma: a lenient one would let a few moderate
    # outliers inflate the fitted scatter and hide behind it (masking). The price, in
    # samples of a few tens, is the rare opposite case: good points cut by a scale that
    # came out low stay out, as the scatter fitted without them is low too.
    keep = np.abs(r) <= k * np.sqrt(ee**2 + sigma**2)
    ratio = clipped_variance(clip_sigma)
    n_iter = 0
    for n_iter in range(1, max(int(max_iter), 1) + 1):
        check(keep, f"survive {k:g}-sigma clipping")
        coef, cov, sigma = _fit_with_scatter(X[keep], yy[keep], ee[keep], ratio)
        r = yy - X @ coef
        new = np.abs(r) <= k * np.sqrt(ee**2 + sigma**2)
        if np.array_equal(new, keep):
            break
        keep = new
    else:
        # Out of iterations with a changed set: fit once more so the result matches `used`.
        check(keep, f"survive {k:g}-sigma clipping")
        coef, cov, sigma = _fit_with_scatter(X[keep], yy[keep], ee[keep], ratio)
        r = yy - X @ coef
    used = np.zeros(n, dtype=bool)
    used[idx[keep]] = True
    residuals = np.full(n, np.nan)
    residuals[idx] = r
    dof = max(int(keep.sum()) - p, 1)
    return RobustFit(
        coef=coef, cov=cov, sigma_int=sigma, used=used, residuals=residuals,
        chi2_dof=float(np.sum((r[keep] / ee[keep]) ** 2) / dof),
        rms=float(np.sqrt(np.mean(r[keep] ** 2))), n_used=int(keep.sum()), n_iter=n_iter,
    )


def fill_missing_errors(err: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """NaN or non-positive errors replaced by the median of the valid ones among ``relevant``.

    Taken as zero, an unknown catalog error would make the star look precise and clip it
    (or let it dominate); the median says "typical" instead. All unknown: zero, and the
    intrinsic scatter of the fit carries the catalog's errors.
    """
    err = np.asarray(err, dtype=float)
    good = np.isfinite(err) & (err > 0)
    fill = float(np.median(err[good & relevant])) if (good & relevant).any() else 0.0
    return np.where(good, err, fill)


def _as_1d(name: str, value, n: int | None = None) -> np.ndarray:
    a = np.asarray(value, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} values, expected {n} (one per star)")
    return a


def fit_zero_point(
    inst,
    inst_err,
    cat_mag,
    cat_err,
    *,
    colour=None,
    fit_colour: bool = False,
    colour_term: float | None = None,
    min_stars: int = 5,
    clip_sigma: float | None = 3.0,
    max_iter: int = 10,
) -> ZeroPoint:
    """Fit a frame's zero point (and optionally a colour term) to catalog stars.

    Model: ``cat_mag = inst + zp + colour_term * colour``, weights
    ``1 / (inst_err^2 + cat_err^2 + sigma_int^2)``; see the module docstring for the
    intrinsic scatter, the robust start and the clipping.

    Parameters
    ----------
    inst, inst_err : array_like, shape (n,)
        Instrumental magnitudes ``-2.5 log10(flux_adu)`` of the calibrators and errors.
    cat_mag, cat_err : array_like, shape (n,)
        Catalog magnitudes and quoted errors of the same stars (a NaN or non-positive
        error is replaced by the median of the others: unknown is taken as typical).
    colour : array_like, shape (n,), optional
        Catalog colour of each star; needed with ``fit_colour`` or ``colour_term``.
        Stars with a NaN colour are then left out (pass NaN, not 0, for unknown).
    fit_colour : bool
        Fit the colour term jointly with the zero point (2-parameter WLS).
    colour_term : float, optional
        Apply this fixed colour term instead (exclusive with ``fit_colour``).
    min_stars : int
        Fewest stars that must survive clipping.
    clip_sigma : float or None
        Rejection threshold (sigma); None disables clipping.
    max_iter : int
        Most clipping iterations.

    Returns
    -------
    ZeroPoint

    Raises
    ------
    ValueError
        On inconsistent inputs (lengths, missing colours).
    CalibrationError
        If fewer than ``min_stars`` stars survive, or the colours cannot constrain a
        colour term. Subclass of ValueError.
    """
    inst = _as_1d("inst", inst)
    n = inst.shape[0]
    inst_err = _as_1d("inst_err", inst_err)
    cat_mag = _as_1d("cat_mag", cat_mag)
    cat_err = _as_1d("cat_err", cat_err)
    if not (inst_err.shape[0] == cat_mag.shape[0] == cat_err.shape[0] == n):
        raise ValueError(f"inst, inst_err, cat_mag and cat_err must have the same length, got "
                         f"{n}, {inst_err.shape[0]}, {cat_mag.shape[0]}, {cat_err.shape[0]}")
    if fit_colour and colour_term is not None:
        raise ValueError("give either fit_colour=True or a fixed colour_term, not both")
    if (fit_colour or colour_term is not None) and colour is None:
        raise ValueError("a colour per star is needed to fit or apply a colour term")
    col = None if colour is None else _as_1d("colour", colour)
    if col is not None and col.shape[0] != n:
        raise ValueError(f"colour has {col.shape[0]} values, expected {n}")
    if min_stars < 1:
        raise ValueError(f"min_stars must be at least 1, got {min_stars}")

    y = cat_mag - inst
    err = np.sqrt(inst_err**2 + fill_missing_errors(cat_err, np.isfinite(cat_mag)) ** 2)
    err = np.where(inst_err > 0, err, np.nan)  # a non-positive instrumental error is invalid
    c_fixed = 0.0
    if colour_term is not None:
        c_fixed = float(colour_term)
        y = y - c_fixed * col
    design = np.ones((n, 2 if fit_colour else 1))
    if fit_colour:
        design[:, 1] = col
        if not np.all(np.isfinite(col)):
            design[~np.isfinite(col), 1] = np.nan  # left out by the fit's finite check
    fit = fit_linear_robust(design, y, err, clip_sigma=clip_sigma, max_iter=max_iter, min_points=min_stars)
    cov = np.zeros((2, 2))
    if fit_colour:
        cov[:] = fit.cov
        c, c_err = float(fit.coef[1]), float(np.sqrt(fit.cov[1, 1]))
    else:
        cov[0, 0] = fit.cov[0, 0]
        c, c_err = c_fixed, 0.0
    return ZeroPoint(
        zp=float(fit.coef[0]), zp_err=float(np.sqrt(cov[0, 0])), colour_term=c, colour_term_err=c_err,
        rms=fit.rms, chi2_dof=fit.chi2_dof, n_stars=fit.n_used, used=fit.used, sigma_int=fit.sigma_int,
        covariance=cov,
    )


def select_calibrators(
    snr,
    flags,
    *,
    min_snr: float = 20.0,
    reject_flags: int = CALIBRATOR_REJECT_FLAGS,
    cat_mag=None,
    cat_err=None,
    max_cat_err: float = 0.1,
    colour=None,
    colour_range: tuple[float, float] | None = None,
    mag_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Which measurements may serve as zero-point calibrators.

    Parameters
    ----------
    snr : array_like, shape (n,)
        Signal-to-noise ratio of each measurement.
    flags : array_like of int, shape (n,)
        Measurement flag bits (:mod:`obsdb.photometry.flags`).
    min_snr : float
        Least S/N (20 by default: 0.05 mag, so the catalog errors dominate).
    reject_flags : int
        Any of these bits rejects a measurement (default: saturated, edge, bad pixel,
        cosmic ray, blended, centroid shift, low S/N, forced).
    cat_mag, cat_err : array_like, optional
        Catalog magnitude and error of the matched star: a finite magnitude is required
        when given, and an error at most ``max_cat_err`` when ``cat_err`` is given.
    max_cat_err : float
        Largest acceptable catalog error (mag).
    colour : array_like, optional
        Catalog colour; with ``colour_range`` (inclusive) required finite and inside it,
        to keep the colour-term fit where it is linear.
    colour_range, mag_range : (float, float), optional
        Inclusive ranges for colour and catalog magnitude.

    Returns
    -------
    ndarray of bool
        True for usable calibrators.
    """
    snr = np.asarray(snr, dtype=float)
    flags = np.asarray(flags)
    if snr.shape != flags.shape:
        raise ValueError(f"snr and flags must have the same shape, got {snr.shape} and {flags.shape}")
    if not np.issubdtype(flags.dtype, np.integer):
        raise ValueError(f"flags must be integers, got dtype {flags.dtype}")
    ok = np.isfinite(snr) & (snr >= min_snr) & ((flags & int(reject_flags)) == 0)
    if cat_mag is not None:
        m = np.asarray(cat_mag, dtype=float)
        ok &= np.isfinite(m)
        if mag_range is not None:
            ok &= (m >= mag_range[0]) & (m <= mag_range[1])
    if cat_err is not None:
        e = np.asarray(cat_err, dtype=float)
        ok &= np.isfinite(e) & (e <= max_cat_err)
    if colour_range is not None:
        if colour is None:
            raise ValueError("colour_range needs colour")
        c = np.asarray(colour, dtype=float)
        ok &= np.isfinite(c) & (c >= colour_range[0]) & (c <= colour_range[1])
    return ok


def fit_extinction(zp, airmass, zp_err, *, clip_sigma: float | None = 3.0, min_frames: int = 3) -> Extinction:
    """Extinction coefficient over a night's frames: ``zp = zp0 - k * airmass``.

    Weighted least squares on the frames' zero points, with an intrinsic scatter for
    transparency changes between frames (a zero point's own error says nothing about
    thin cloud) and clipping of the frames clouds pushed far off, as in
    :func:`fit_zero_point`. For reporting: the calibration itself never uses it.

    Parameters
    ----------
    zp, airmass, zp_err : array_like, shape (n,)
        Per-frame zero points, airmasses and zero-point errors (NaN frames ignored).
    clip_sigma : float or None
        Rejection threshold (sigma); None disables clipping.
    min_frames : int
        Fewest frames that must survive.

    Returns
    -------
    Extinction
        ``(k, k_err, zp0)``.

    Raises
    ------
    CalibrationError
        With too few frames or too small an airmass range (< 0.05) to separate k from zp0.
    """
    zp = _as_1d("zp", zp)
    airmass = _as_1d("airmass", airmass)
    zp_err = _as_1d("zp_err", zp_err)
    if not (zp.shape == airmass.shape == zp_err.shape):
        raise ValueError(f"zp, airmass and zp_err must have the same length, got "
                         f"{zp.shape[0]}, {airmass.shape[0]}, {zp_err.shape[0]}")
    good = np.isfinite(zp) & np.isfinite(airmass) & np.isfinite(zp_err)
    if good.sum() and np.ptp(airmass[good]) < 0.05:
        raise CalibrationError(f"airmass range {np.ptp(airmass[good]):.3f} is too small to fit an "
                               "extinction coefficient (need at least 0.05)")
    design = np.column_stack([np.ones_like(airmass), -airmass])
    fit = fit_linear_robust(design, zp, zp_err, clip_sigma=clip_sigma, min_points=min_frames, what="frames")
    return Extinction(k=float(fit.coef[1]), k_err=float(np.sqrt(fit.cov[1, 1])), zp0=float(fit.coef[0]))
