"""Zero points, colour terms and extinction (obsdb.photometry.zeropoint) against truth."""

from __future__ import annotations

import numpy as np
import pytest

from obsdb.photometry import flags as F
from obsdb.photometry.zeropoint import (
    CalibrationError,
    ZeroPoint,
    fit_extinction,
    fit_linear_robust,
    fit_zero_point,
    select_calibrators,
)

TRUE_ZP = 25.3
COLOUR_TERM = -0.08


def simulate_calibrators(rng, n=40, *, zp=TRUE_ZP, colour_term=COLOUR_TERM, under_quoted=0.05, n_outliers=0):
    """Catalog stars on one frame: instrumental mags, catalog mags with quoted errors.

    Instrumental errors follow the CCD equation (2 mmag floor); catalog errors grow from
    8 mmag at 11 to 25 mmag at 17, and ``under_quoted`` of them are really four times
    larger than quoted. Outliers (blends, bad matches) are 0.2-1 mag bright with small
    quoted errors.
    """
    mag = rng.uniform(11, 17, n)
    colour = rng.uniform(-0.2, 1.5, n)
    electrons = 10 ** (-0.4 * (mag - 26.0)) * 2.0
    inst_err = np.hypot(1.0857 * np.sqrt(electrons + 2000.0) / electrons, 0.002)
    inst = mag - zp - colour_term * colour + rng.normal(0, 1, n) * inst_err
    cat_err = 0.008 + 0.017 * 10 ** (0.4 * (mag - 17))
    actual = np.where(rng.uniform(size=n) < under_quoted, 4 * cat_err, cat_err)
    cat_mag = mag + rng.normal(0, 1, n) * actual
    outlier = np.zeros(n, dtype=bool)
    if n_outliers:
        outlier[rng.choice(n, n_outliers, replace=False)] = True
        inst[outlier] -= rng.uniform(0.2, 1.0, n_outliers)
        inst_err[outlier] = 0.003
    return inst, inst_err, cat_mag, cat_err, colour, outlier


def test_zero_point_recovered_within_its_error():
    rng = np.random.default_rng(1)
    inst, inst_err, cat_mag, cat_err, colour, _ = simulate_calibrators(rng, 60)
    zp = fit_zero_point(inst, inst_err, cat_mag, cat_err, colour=colour, colour_term=COLOUR_TERM)
    assert isinstance(zp, ZeroPoint)
    assert abs(zp.zp - TRUE_ZP) < 3 * zp.zp_err
    assert 0.0005 < zp.zp_err < 0.01
    assert zp.colour_term == COLOUR_TERM and zp.colour_term_err == 0.0
    assert zp.used.shape == (60,) and zp.n_stars == zp.used.sum() >= 55
    assert 0.005 < zp.rms < 0.05


@pytest.mark.parametrize("fit_colour", [False, True])
def test_errors_calibrated_over_many_realisations(fit_colour):
    rng = np.random.default_rng(2 + fit_colour)
    pulls, c_pulls = [], []
    for _ in range(300):
        inst, inst_err, cat_mag, cat_err, colour, _ = simulate_calibrators(rng, 40, n_outliers=2)
        kw = dict(fit_colour=True) if fit_colour else dict(colour_term=COLOUR_TERM)
        zp = fit_zero_point(inst, inst_err, cat_mag, cat_err, colour=colour, **kw)
        pulls.append((zp.zp - TRUE_ZP) / zp.zp_err)
        if fit_colour:
            c_pulls.append((zp.colour_term - COLOUR_TERM) / zp.colour_term_err)
    assert abs(np.mean(pulls)) < 0.2
    assert 0.85 < np.std(pulls) < 1.15
    if fit_colour:
        assert 0.85 < np.std(c_pulls) < 1.15


def test_clipping_removes_outliers():
    rng = np.random.default_rng(4)
    inst, inst_err, cat_mag, cat_err, colour, outlier = simulate_calibrators(rng, 50, n_outliers=6)
    zp = fit_zero_point(inst, inst_err, cat_mag, cat_err, colour=colour, colour_term=COLOUR_TERM)
    assert not zp.used[outlier].any()
    assert zp.used[~outlier].mean() > 0.9
    assert abs(zp.zp - TRUE_ZP) < 3 * zp.zp_err
    # An unclipped weighted mean is dragged far off by the outliers' small errors.
    y = cat_mag - inst - COLOUR_TERM * colour
    w = 1 / (inst_err**2 + cat_err**2)
    assert abs(np.sum(w * y) / np.sum(w) - TRUE_ZP) > 10 * zp.zp_err


def test_colour_term_recovered():
    rng = np.random.default_rng(5)
    inst, inst_err, cat_mag, cat_err, colour, _ = simulate_calibrators(rng, 120, n_outliers=4)
    zp = fit_zero_point(inst, inst_err, cat_mag, cat_err, colour=colour, fit_colour=True)
    assert abs(zp.colour_term - COLOUR_TERM) < 0.01
    assert abs(zp.colour_term - COLOUR_TERM) < 3 * zp.colour_term_err
    assert abs(zp.zp - TRUE_ZP) < 3 * zp.zp_err
    # Zero point and colour term are correlated; the error at a colour uses the covariance.
    assert zp.covariance[0, 1] != 0
    np.testing.assert_allclose(zp.error_at(0.0), zp.zp_err)
    pivot = -zp.covariance[0, 1] / zp.covariance[1, 1]
    assert zp.error_at(pivot) < zp.zp_err
    # Without the colour term, the colour-dependent residuals turn into scatter.
    plain = fit_zero_point(inst, inst_err, cat_mag, cat_err)
    assert plain.sigma_int > zp.sigma_int


def test_intrinsic_scatter_covers_under_quoted_catalog_errors():
    rng = np.random.default_rng(6)
    pulls, sigmas = [], []
    for _ in range(100):
        inst, inst_err, cat_mag, cat_err, colour, _ = simulate_calibrators(rng, 50, under_quoted=0.0)
        mag = cat_mag + rng.normal(0, 0.02, 50)  # a catalog 0.02 mag worse than it says
        zp = fit_zero_point(inst, inst_err, mag, cat_err, colour=colour, colour_term=COLOUR_TERM)
        pulls.append((zp.zp - TRUE_ZP) / zp.zp_err)
        sigmas.append(zp.sigma_int)
        assert zp.chi2_dof > 1.5
    assert 0.85 < np.std(pulls) < 1.15
    assert 0.015 < np.median(sigmas) < 0.025


def test_too_few_stars_raise_with_a_clear_message():
    rng = np.random.default_rng(7)
    inst, inst_err, cat_mag, cat_err, _, _ = simulate_calibrators(rng, 4)
    with pytest.raises(CalibrationError, match=r"only 4 of 4 stars have finite values; at least 5"):
        fit_zero_point(inst, inst_err, cat_mag, cat_err)
    assert issubclass(CalibrationError, ValueError)
    # Enough stars, but clipping leaves too few.
    inst, inst_err, cat_mag, cat_err, colour, _ = simulate_calibrators(rng, 8)
    inst[:3] -= 1.0
    with pytest.raises(CalibrationError, match="only 5 of 8 stars survive 3-sigma clipping; at least 6"):
        fit_zero_point(inst, inst_err, cat_mag, cat_err, colour=colour, colour_term=COLOUR_TERM, min_stars=6)
    # NaNs do not count.
    inst, inst_err, cat_mag, cat_err, _, _ = simulate_calibrators(rng, 6)
    cat_mag[:2] = np.nan
    with pytest.raises(CalibrationError, match="only 4 of 6 stars"):
        fit_zero_point(inst, inst_err, cat_mag, cat_err)


def test_nan_stars_are_left_out():
    rng = np.random.default_rng(8)
    inst, inst_err, cat_mag, cat_err, colour, _ = simulate_calibrators(rng, 30)
    inst[0], cat_err[1], colour[2] = np.nan, np.nan, np.nan
    zp = fit_zero_point(inst, inst_err, cat_mag, cat_err, colour=colour, fit_colour=True)
    assert not zp.used[0] and not zp.used[2]
    assert zp.used[1]  # a missing catalog error is taken as typical


def test_degenerate_colours_raise():
    rng = np.random.default_rng(9)
    inst, inst_err, cat_mag, cat_err, _, _ = simulate_calibrators(rng, 20)
    with pytest.raises(CalibrationError, match="degenerate"):
        fit_zero_point(inst, inst_err, cat_mag, cat_err, colour=np.full(20, 0.5), fit_colour=True)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(cat_mag=np.zeros(3)), "same length"),
    (dict(fit_colour=True), "colour per star is needed"),
    (dict(colour_term=0.1), "colour per star is needed"),
    (dict(fit_colour=True, colour_term=0.1, colour=np.zeros(10)), "either fit_colour"),
    (dict(colour=np.zeros(3), fit_colour=True), "colour has 3 values, expected 10"),
    (dict(inst=np.zeros((2, 5))), "one-dimensional"),
    (dict(min_stars=0), "min_stars must be at least 1"),
])
def test_input_checks(kwargs, match):
    args = dict(inst=np.zeros(10), inst_err=np.full(10, 0.01), cat_mag=np.full(10, 25.0), cat_err=np.full(10, 0.01))
    args.update(kwargs)
    inst, inst_err, cat_mag, cat_err = (args.pop(k) for k in ("inst", "inst_err", "cat_mag", "cat_err"))
    with pytest.raises(ValueError, match=match):
        fit_zero_point(inst, inst_err, cat_mag, cat_err, **args)


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(10)
    arrays = simulate_calibrators(rng, 30, n_outliers=3)[:5]
    copies = [a.copy() for a in arrays]
    fit_zero_point(*arrays[:4], colour=arrays[4], fit_colour=True)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


def test_robust_linear_fit_recovers_a_line_with_outliers():
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 10, 80)
    err = rng.uniform(0.05, 0.2, 80)
    y = 1.5 + 0.3 * x + rng.normal(0, 1, 80) * err
    y[:8] += 5.0
    fit = fit_linear_robust(np.column_stack([np.ones(80), x]), y, err)
    assert not fit.used[:8].any() and fit.used[8:].mean() > 0.95
    assert np.all(np.abs(fit.coef - [1.5, 0.3]) < 3 * np.sqrt(np.diag(fit.cov)))
    assert fit.sigma_int < 0.05


def test_extinction_fit():
    rng = np.random.default_rng(12)
    ks = []
    for _ in range(100):
        airmass = rng.uniform(1.0, 2.3, 30)
        zp_err = rng.uniform(0.002, 0.006, 30)
        transparency = rng.normal(0, 0.01, 30)  # thin cirrus: more scatter than zp_err says
        zp = 25.5 - 0.18 * airmass + transparency + rng.normal(0, 1, 30) * zp_err
        zp[:3] -= rng.uniform(0.3, 1.0, 3)  # clouds
        ext = fit_extinction(zp, airmass, zp_err)
        k, k_err, zp0 = ext
        assert ext.k == k and abs(zp0 - 25.5) < 0.1
        ks.append((k - 0.18) / k_err)
    # The core of the pull distribution is calibrated; with 30 frames, clipping at 3 sigma
    # now and then also cuts a good frame, which leaves a thin tail.
    ks = np.array(ks)
    assert 0.85 < 1.4826 * np.median(np.abs(ks - np.median(ks))) < 1.15
    assert np.mean(np.abs(ks) < 3) > 0.97
    with pytest.raises(CalibrationError, match="airmass range 0.010 is too small"):
        fit_extinction(np.full(5, 25.0), np.linspace(1.2, 1.21, 5), np.full(5, 0.01))
    with pytest.raises(CalibrationError, match="only 2 of 2 frames"):
        fit_extinction([25.0, 24.9], [1.0, 2.0], [0.01, 0.01])


def test_select_calibrators():
    snr = np.array([50, 50, 10, 50, 50, 50, 50, np.nan])
    flags = np.array([0, F.SATURATED, 0, F.BLENDED, F.UNCALIBRATED, 0, 0, 0])
    cat_err = np.array([0.01, 0.01, 0.01, 0.01, 0.01, 0.2, np.nan, 0.01])
    colour = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 3.0])
    ok = select_calibrators(snr, flags, cat_err=cat_err)
    assert ok.tolist() == [True, False, False, False, True, False, False, False]
    ok = select_calibrators(snr, flags, min_snr=5, colour=colour, colour_range=(-0.5, 2.0))
    assert ok.tolist() == [True, False, True, False, True, True, True, False]
    with pytest.raises(ValueError, match="flags must be integers"):
        select_calibrators(snr, flags.astype(float))
    with pytest.raises(ValueError, match="colour_range needs colour"):
        select_calibrators(snr, flags, colour_range=(0, 1))
