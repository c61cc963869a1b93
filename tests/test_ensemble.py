"""Ensemble photometry (obsdb.photometry.ensemble) against a simulated field with truth.

The simulated field: magnitudes 10-20 (counts rising towards faint stars), g-r colours
-0.2..1.5 and a colour term of -0.08, zero points that wander by up to 1 mag through
cloud and with airmass, a CCD-equation noise model whose quoted errors leave out a 2 mmag
flat-field floor and scintillation (0.0012 X^1.75), 20 % of the observations missing, 1 %
hit by cosmic rays (0.1-1 mag brighter), three variables among the candidate comparison
stars, and a catalog 0.03 mag off with 5 % of its errors quoted four times too small.
"""

from __future__ import annotations

import numpy as np
import pytest

from obsdb.photometry.ensemble import EnsembleSolution, calibrate, solve_ensemble, solve_two_way

COLOUR_TERM = -0.08
CAT_OFFSET = 0.03
SEEDS = (11, 12, 13, 14, 15)


def simulate_field(seed, n_stars=300, n_frames=60, *, catalog=True, n_variables=3, cr_rate=0.01, missing=0.2):
    """Observations and truth of one field; the observation arrays go to solve_ensemble."""
    rng = np.random.default_rng(seed)
    a = 0.1 * np.log(10)  # dN/dm ~ 10^(0.1 m)
    mag = 10 + np.log1p(rng.uniform(size=n_stars) * np.expm1(a * 10)) / a
    colour = rng.uniform(-0.2, 1.5, n_stars)
    t = np.sort(rng.uniform(0, 1, n_frames))
    airmass = 1.0 + 1.2 * (2 * t - 1) ** 2
    cloud = np.where(rng.uniform(size=n_frames) < 0.35, rng.uniform(0, 1, n_frames),
                     np.abs(rng.normal(0, 0.005, n_frames)))
    zp = 26.3 - 0.15 * airmass - cloud
    variables = rng.choice(np.flatnonzero((mag > 11.5) & (mag < 16)), n_variables, replace=False)
    mag_ij = np.repeat(mag[:, None], n_frames, axis=1)
    for v, amp in zip(variables, np.linspace(0.05, 0.3, n_variables)):
        mag_ij[v] += amp * np.sin(2 * np.pi * t / rng.uniform(0.05, 0.5) + rng.uniform(0, 2 * np.pi))
    inst_true = mag_ij - COLOUR_TERM * colour[:, None] - zp[None, :]
    gain, sky_var = 2.0, 2000.0  # electrons/ADU; sky + read noise in the aperture (e^2)
    electrons = gain * 10 ** (-0.4 * inst_true)
    relative = rng.normal(0, 0.002, electrons.shape) + rng.normal(0, 1, electrons.shape) * 0.0012 * airmass**1.75
    measured = electrons * (1 + relative) + rng.normal(0, 1, electrons.shape) * np.sqrt(electrons + sky_var)
    seen = (rng.uniform(size=electrons.shape) > missing) & (measured > 0)
    si, fj = np.nonzero(seen)
    m = measured[si, fj]
    inst = -2.5 * np.log10(m / gain)
    inst_err = 1.0857 * np.sqrt(m + sky_var) / m  # the CCD equation, from the measured flux
    cr = rng.uniform(size=si.size) < cr_rate
    inst[cr] -= rng.uniform(0.1, 1.0, cr.sum())
    cat_mag = cat_err = None
    if catalog:
        has = (mag > 10.5) & (mag < 17) & (rng.uniform(size=n_stars) < 0.85)
        quoted = 0.008 + 0.015 * 10 ** (0.4 * (mag - 17))
        actual = np.where(rng.uniform(size=n_stars) < 0.05, 4 * quoted, quoted)
        cat_mag = np.where(has, mag + CAT_OFFSET + rng.normal(0, 1, n_stars) * actual, np.nan)
        cat_err = np.where(has, quoted, np.nan)
    obs = dict(star_idx=si, frame_idx=fj, inst=inst, inst_err=inst_err, n_stars=n_stars, n_frames=n_frames,
               cat_mag=cat_mag, cat_err=cat_err, colour=colour)
    # The full error of each observation: quoted plus the floor and scintillation.
    full_err = np.sqrt(inst_err**2 + 1.0857**2 * (0.002**2 + (0.0012 * airmass[fj] ** 1.75) ** 2))
    truth = dict(mag=mag, colour=colour, zp=zp, variables=variables, cr=cr, mag_obs=mag_ij[si, fj], full_err=full_err,
                 airmass=airmass, excess=1.0857 * np.sqrt(0.002**2 + (0.0012 * airmass**1.75) ** 2))
    return obs, truth


@pytest.fixture(scope="module")
def solved():
    out = []
    for seed in SEEDS:
        obs, truth = simulate_field(seed)
        out.append((obs, truth, solve_ensemble(**obs, fit_colour=True)))
    return out


def _offset(sol, truth):
    """The one global offset the catalog imposes (its systematic plus the tie's error)."""
    return float(np.mean(sol.Z - truth["zp"]))


def _constant(truth, n):
    return ~np.isin(np.arange(n), truth["variables"])


def test_frame_zero_points_match_truth_and_their_errors(solved):
    pulls = []
    for obs, truth, sol in solved:
        res = sol.Z - truth["zp"] - _offset(sol, truth)
        bright = _constant(truth, obs["n_stars"]) & (truth["mag"] < 15)
        n_bright = np.bincount(obs["frame_idx"][sol.used_obs & bright[obs["star_idx"]]], minlength=obs["n_frames"])
        good = n_bright >= 10
        assert good.sum() >= 50
        assert np.sqrt(np.mean(res[good] ** 2)) < 0.003
        pulls.append(res / sol.Z_err)
    ratio = np.sqrt(np.mean(np.concatenate(pulls) ** 2))
    assert 0.8 < ratio < 1.25


def test_catalog_offset_recovered(solved):
    for _, truth, sol in solved:
        assert sol.tied_to_catalog and sol.n_components == 1
        assert abs(_offset(sol, truth) - CAT_OFFSET) < 0.01
        # The offset's reported error covers the tie's actual error.
        assert abs(_offset(sol, truth) - CAT_OFFSET) < 4 * sol.component_offset_err[0]
        # Under-quoted catalog errors show up as intrinsic scatter or clipped stars.
        assert sol.catalog_sigma_int > 0 or sol.catalog_used.sum() < np.isfinite(sol.catalog_used).sum()


def test_star_magnitude_pulls_in_every_magnitude_bin(solved):
    pulls, mags = [], []
    for obs, truth, sol in solved:
        const = _constant(truth, obs["n_stars"])
        # Remove the realisation of the tie (global offset and colour-term error): M_err
        # is the error relative to it.
        expected = truth["mag"] + _offset(sol, truth) + (sol.colour_term - COLOUR_TERM) * truth["colour"]
        pull = (sol.M - expected) / sol.M_err
        assert np.isfinite(pull[const]).all()
        pulls.append(pull[const])
        mags.append(truth["mag"][const])
    pulls, mags = np.concatenate(pulls), np.concatenate(mags)
    for lo, hi in [(10, 13.5), (13.5, 15.5), (15.5, 17), (17, 18.5), (18.5, 20)]:
        sel = (mags >= lo) & (mags < hi)
        assert sel.sum() > 100
        assert 0.9 < np.std(pulls[sel]) < 1.15, (lo, hi, np.std(pulls[sel]))
        # No bias worth a quarter of the error, faint stars included (log bias corrected).
        assert abs(np.mean(pulls[sel])) < 0.25, (lo, hi, np.mean(pulls[sel]))


def test_colour_term_recovered(solved):
    for _, _, sol in solved:
        assert abs(sol.colour_term - COLOUR_TERM) < 0.01
        assert abs(sol.colour_term - COLOUR_TERM) < 4 * sol.colour_term_err
        assert -0.2 < sol.pivot_colour < 1.5 and sol.colour_spread > 0.2


def test_variables_flagged_and_excluded(solved):
    n_false, n_const = 0, 0
    for obs, truth, sol in solved:
        assert sol.variable[truth["variables"]].all()
        assert not sol.member[truth["variables"]].any()
        assert not sol.used_obs[np.isin(obs["star_idx"], truth["variables"])].any()
        # Variables still get a magnitude: the mean of their calibrated points.
        assert np.isfinite(sol.M[truth["variables"]]).all()
        const = _constant(truth, obs["n_stars"])
        n_false += int(sol.variable[const].sum())
        n_const += int(const.sum())
    assert n_false <= 0.01 * n_const


def test_cosmic_rays_clipped(solved):
    for obs, truth, sol in solved:
        cr = truth["cr"]
        shift = truth["mag_obs"] - (obs["inst"] + truth["zp"][obs["frame_idx"]]
                                    + COLOUR_TERM * truth["colour"][obs["star_idx"]])
        # Deviation in flux, in units of the flux noise (errors scale with the model flux).
        z_flux = 1.0857 * -np.expm1(-shift / 1.0857) / truth["full_err"]
        loud = cr & (z_flux > 6) & ~np.isin(obs["star_idx"], truth["variables"])
        assert loud.sum() > 50
        assert not sol.used_obs[loud].any()
        assert sol.clipped_obs[loud].mean() > 0.97
        # Few clean observations are thrown away.
        assert (sol.clipped_obs & ~cr).mean() < 0.005


def test_calibrated_measurements_pulls(solved):
    stat, full = [], []
    for obs, truth, sol in solved:
        s = obs["star_idx"]
        colour = truth["colour"][s]
        mag, err = calibrate(obs["inst"], obs["inst_err"], obs["frame_idx"], sol, colour=colour,
                             include_systematic=False)
        clean = ~truth["cr"] & _constant(truth, obs["n_stars"])[s]
        expected = truth["mag_obs"] + _offset(sol, truth) + (sol.colour_term - COLOUR_TERM) * colour
        stat.append(((mag - expected) / err)[clean])
        # With the shared calibration error included, against the catalog's system.
        mag_s, err_s = calibrate(obs["inst"], obs["inst_err"], obs["frame_idx"], sol, colour=colour)
        assert np.all(err_s[clean] >= err[clean])
        np.testing.assert_array_equal(mag_s, mag)
        full.append(((mag_s - truth["mag_obs"] - CAT_OFFSET) / err_s)[clean])
    stat = np.concatenate(stat)
    assert np.isfinite(stat).all()
    assert 0.9 < np.std(stat) < 1.15
    assert 0.9 < np.std(np.concatenate(full)) < 1.15


def test_disconnected_groups_are_solved_with_their_own_gauges():
    obs, truth = simulate_field(21, n_variables=0)
    s, f = obs["star_idx"], obs["frame_idx"]
    keep = (s < 150) == (f < 30)  # stars 0-149 only on frames 0-29, the others only on 30-59
    split = {k: (v[keep] if isinstance(v, np.ndarray) and v.shape == s.shape else v) for k, v in obs.items()}
    sol = solve_ensemble(**split, fit_colour=True)
    assert sol.n_components == 2 and sol.tied_to_catalog and sol.component_tied.all()
    groups = [np.arange(30), np.arange(30, 60)]
    comps = {int(sol.frame_component[g][0]) for g in groups}
    assert comps == {0, 1}
    for g in groups:
        assert len(set(sol.frame_component[g])) == 1
        assert abs(np.mean(sol.Z[g] - truth["zp"][g]) - CAT_OFFSET) < 0.01

    # The second group without catalog stars: relative only, mean Z = 0 there.
    cat = split["cat_mag"].copy()
    cat[150:] = np.nan
    sol = solve_ensemble(**{**split, "cat_mag": cat}, fit_colour=True)
    second = int(sol.frame_component[45])
    assert not sol.tied_to_catalog
    assert sol.component_tied.tolist() == [second != 0, second != 1]
    assert sol.frame_tied[:30].all() and not sol.frame_tied[30:].any()
    assert abs(np.mean(sol.Z[30:])) < 1e-9
    assert abs(np.mean(sol.Z[:30] - truth["zp"][:30]) - CAT_OFFSET) < 0.01
    # Relative zero points of the untied group are still right.
    rel = sol.Z[30:] - truth["zp"][30:]
    assert np.std(rel) < 0.003
    # Untied: no shared calibration error to report.
    np.testing.assert_array_equal(sol.systematic_error(np.arange(30, 60), np.zeros(30)), 0.0)


def test_frame_excess_scatter_found_and_guided_by_airmass(solved):
    obs, truth, sol = solved[0]
    ratio = sol.frame_excess / truth["excess"]
    assert 0.9 < np.median(ratio) < 1.1
    with_airmass = solve_ensemble(**obs, fit_colour=True, airmass=truth["airmass"])
    ratio_x = with_airmass.frame_excess / truth["excess"]
    assert 0.9 < np.median(ratio_x) < 1.1
    assert np.std(ratio_x) < 0.7 * np.std(ratio)
    with pytest.raises(ValueError, match="airmass must have one value per frame"):
        solve_ensemble(**obs, airmass=truth["airmass"][:-1])


def test_no_catalog_gives_relative_solution_with_mean_zero_point_zero():
    obs, truth = simulate_field(31, catalog=False)
    sol = solve_ensemble(**obs)
    assert not sol.tied_to_catalog and not sol.frame_tied.any()
    assert abs(np.mean(sol.Z)) < 1e-9
    assert sol.colour_term == 0.0
    res = sol.Z - truth["zp"] - np.mean(sol.Z - truth["zp"])
    assert np.sqrt(np.mean(res**2)) < 0.003
    mag, err = calibrate(obs["inst"], obs["inst_err"], obs["frame_idx"], sol)
    assert np.isfinite(mag).all() and np.isfinite(err).all()


def test_fixed_colour_term_is_applied():
    obs, truth = simulate_field(41)
    sol = solve_ensemble(**obs, colour_term=COLOUR_TERM, colour_term_err=0.002)
    assert sol.colour_term == COLOUR_TERM and sol.colour_term_err == 0.002
    assert abs(_offset(sol, truth) - CAT_OFFSET) < 0.01
    const = _constant(truth, obs["n_stars"]) & (truth["mag"] < 15)
    res = sol.M - truth["mag"] - _offset(sol, truth)
    assert np.std(res[const]) < 0.003


def test_unknown_colour_calibrated_at_the_pivot():
    obs, truth = simulate_field(51)
    sol = solve_ensemble(**obs, fit_colour=True)
    i = np.flatnonzero(obs["star_idx"] == 0)
    known, known_err = calibrate(obs["inst"][i], obs["inst_err"][i], obs["frame_idx"][i], sol,
                                 colour=np.full(i.size, sol.pivot_colour))
    unknown, unknown_err = calibrate(obs["inst"][i], obs["inst_err"][i], obs["frame_idx"][i], sol,
                                     colour=np.full(i.size, np.nan))
    np.testing.assert_allclose(unknown, known)
    extra = np.sqrt(unknown_err**2 - known_err**2)
    np.testing.assert_allclose(extra, abs(sol.colour_term) * sol.colour_spread, rtol=1e-6)


def test_stars_with_few_frames_and_frames_with_few_stars():
    obs, truth = simulate_field(61, n_variables=0, cr_rate=0.0)
    s, f = obs["star_idx"], obs["frame_idx"]
    # Star 5 keeps two observations; frame 7 keeps two stars (a bright and a faint one).
    drop = ((s == 5) & (np.cumsum(s == 5) > 2)) | ((f == 7) & ~np.isin(s, [0, 1]))
    kept = {k: (v[~drop] if isinstance(v, np.ndarray) and v.shape == s.shape else v) for k, v in obs.items()}
    sol = solve_ensemble(**kept)
    assert not sol.member[5] and sol.n_used[5] == 2
    offset = np.nanmean(sol.Z - truth["zp"])
    assert abs(sol.M[5] - truth["mag"][5] - offset + COLOUR_TERM * truth["colour"][5]) < 4 * sol.M_err[5]
    assert np.isnan(sol.Z[7]) and sol.frame_component[7] == -1 and sol.frame_n_stars[7] == 0
    mag, err = calibrate(kept["inst"], kept["inst_err"], kept["frame_idx"], sol)
    on7 = kept["frame_idx"] == 7
    assert np.isnan(mag[on7]).all() and np.isfinite(mag[~on7]).all()
    # A star seen nowhere has no magnitude.
    sol = solve_ensemble(**{**kept, "n_stars": 301, "cat_mag": None, "cat_err": None, "colour": None})
    assert np.isnan(sol.M[300]) and sol.star_component[300] == -1


def _dense_two_way(r, c, y, w, nr, nc):
    """Reference: q_last = -sum(other q) makes the design full rank; plain dense WLS."""
    n = y.size
    A = np.zeros((n, nr + nc - 1))
    A[np.arange(n), r] = 1.0
    last = c == nc - 1
    A[np.flatnonzero(~last), nr + c[~last]] = 1.0
    A[np.flatnonzero(last), nr:] = -1.0
    N = A.T @ (A * w[:, None])
    cov = np.linalg.inv(N)
    x = cov @ (A.T @ (w * y))
    T = np.zeros((nr + nc, nr + nc - 1))  # free parameters -> (p, q)
    T[:nr + nc - 1, :] = np.eye(nr + nc - 1)
    T[-1, nr:] = -1.0
    full, full_cov = T @ x, T @ cov @ T.T
    return full[:nr], full[nr:], np.diag(full_cov)[:nr], np.diag(full_cov)[nr:]


@pytest.mark.parametrize(("nr", "nc"), [(40, 12), (9, 30)])
def test_two_way_solver_matches_dense_least_squares(nr, nc):
    rng = np.random.default_rng(nr * nc)
    r, c = np.nonzero(rng.uniform(size=(nr, nc)) < 0.7)
    assert np.unique(r).size == nr and np.unique(c).size == nc
    y = rng.normal(0, 1, nr)[r] + rng.normal(0, 1, nc)[c] + rng.normal(0, 0.1, r.size)
    w = 1.0 / rng.uniform(0.01, 0.3, r.size) ** 2
    p, q, var_p, var_q = solve_two_way(r, c, y, w, nr, nc)
    p_ref, q_ref, vp_ref, vq_ref = _dense_two_way(r, c, y, w, nr, nc)
    np.testing.assert_allclose(q, q_ref, atol=1e-9)
    np.testing.assert_allclose(p, p_ref, atol=1e-9)
    np.testing.assert_allclose(var_p, vp_ref, rtol=1e-7)
    np.testing.assert_allclose(var_q, vq_ref, rtol=1e-7)


def test_inputs_are_not_mutated():
    obs, _ = simulate_field(71)
    copies = {k: v.copy() for k, v in obs.items() if isinstance(v, np.ndarray)}
    sol = solve_ensemble(**obs, fit_colour=True)
    calibrate(obs["inst"], obs["inst_err"], obs["frame_idx"], sol, colour=obs["colour"][obs["star_idx"]])
    for k, v in copies.items():
        np.testing.assert_array_equal(obs[k], v)
    assert isinstance(sol, EnsembleSolution)


@pytest.mark.parametrize(("change", "match"), [
    (dict(inst=np.zeros(3)), "same length"),
    (dict(star_idx=np.array([0.0, 1.0, 2.0, 0.0])), "star_idx must be integers"),
    (dict(frame_idx=np.array([0, -1, 2, 0])), "frame_idx must be >= 0"),
    (dict(n_stars=2), "star_idx goes up to 2 but n_stars is 2"),
    (dict(cat_mag=np.zeros(2)), "cat_mag must have one value per star"),
    (dict(fit_colour=True), "colour per star is needed"),
    (dict(fit_colour=True, colour_term=0.1, colour=np.zeros(3)), "either fit_colour"),
    (dict(clip_sigma=0.0), "clip_sigma must be > 0"),
])
def test_input_checks(change, match):
    args = dict(star_idx=np.array([0, 1, 2, 0]), frame_idx=np.array([0, 1, 2, 1]), inst=np.zeros(4),
                inst_err=np.full(4, 0.01))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        solve_ensemble(**args)


def test_calibrate_input_checks(solved):
    _, _, sol = solved[0]
    with pytest.raises(ValueError, match="same shape"):
        calibrate(np.zeros(3), np.zeros(2), np.zeros(3, int), sol)
    with pytest.raises(ValueError, match="frame_idx must be integers"):
        calibrate(np.zeros(3), np.ones(3), np.zeros(3), sol)
    mag, err = calibrate(np.zeros(2), np.full(2, 0.01), np.array([-1, 10**6]), sol)
    assert np.isnan(mag).all() and np.isnan(err).all()


def test_an_eclipse_clipped_away_still_marks_the_star_variable():
    """A few deep points of an eclipsing star are clipped as outliers about its mean; in a
    field with many outliers (cosmic rays here) the binomial test alone forgives them,
    the run of clipped points must not."""
    obs, truth = simulate_field(21, n_stars=150, n_frames=20, n_variables=0, cr_rate=0.05, missing=0.0)
    eclipsing = int(np.flatnonzero((truth["mag"] > 12) & (truth["mag"] < 13))[0])
    in_eclipse = (obs["star_idx"] == eclipsing) & np.isin(obs["frame_idx"], [8, 9, 10, 11])
    inst = obs["inst"].copy()
    inst[in_eclipse] += 0.3
    sol = solve_ensemble(**{**obs, "inst": inst})
    assert sol.variable[eclipsing] and not sol.member[eclipsing]
