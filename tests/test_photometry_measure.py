"""obsdb.photometry pixel-level measurement against truth.

Frames are seeded synthetic images: Moffat beta=3 stars rendered by the project's
simulator (``obsdb.simulate.psf.render_stars``, pixel-integrated) with known fluxes, on a
sky with a gradient, with Poisson noise at gain 1.5 e-/ADU and 10 e- read noise, and an
ERR plane built like the calibrated frame's, sqrt((sky + star) / gain + rn^2).

"True" aperture fluxes are the same measurement on the noise-free image: the exact
aperture sum minus the aperture area times the mean of the noise-free annulus. That is
what an ideal local-sky measurement returns; it includes the (tiny, same for every star)
part of the star's own wing that falls in the annulus, and any neighbour's light.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import sep
from scipy.spatial import cKDTree

from obsdb.photometry import flags as F
from obsdb.photometry.apertures import ApertureResult, measure_apertures
from obsdb.photometry.background import SkyModel, estimate_background
from obsdb.photometry.detect import detect_stars, measure_psf
from obsdb.photometry.growth import choose_aperture, default_annulus, default_radii
from obsdb.photometry.limits import limiting_magnitudes
from obsdb.photometry.scintillation import scintillation_sigma
from obsdb.simulate.psf import moffat_alpha, render_stars

GAIN = 1.5
READ_NOISE_ADU = 10.0 / GAIN
BETA = 3.0


@dataclass
class Synth:
    sci: np.ndarray
    err: np.ndarray
    mask: np.ndarray
    clean: np.ndarray      # noise-free sky + stars
    sky: np.ndarray        # noise-free sky alone
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    fwhm: float


def make_frame(seed: int, size: int, x, y, flux, fwhm: float, *, sky_level: float = 300.0,
               slope: tuple[float, float] = (0.02, -0.015)) -> Synth:
    """Noisy calibrated-like frame of Moffat stars on a tilted sky."""
    rng = np.random.default_rng(seed)
    x, y, flux = (np.asarray(v, dtype=float) for v in (x, y, flux))
    yy, xx = np.mgrid[0:size, 0:size]
    sky = sky_level + slope[0] * (xx - size / 2) + slope[1] * (yy - size / 2)
    clean = render_stars((size, size), x, y, flux, fwhm, BETA, oversample=5, image=sky)
    sci = rng.poisson(clean * GAIN) / GAIN + rng.normal(0.0, READ_NOISE_ADU, clean.shape)
    err = np.sqrt(clean / GAIN + READ_NOISE_ADU**2)
    return Synth(sci.astype(np.float32), err.astype(np.float32), np.zeros((size, size), np.uint8), clean, sky,
                 x, y, flux, fwhm)


def jittered_grid(size: int, spacing: float, margin: float, rng: np.random.Generator):
    """Star positions on a grid (isolated by ``spacing``) with random sub-pixel phases."""
    centres = np.arange(margin, size - margin + 1e-9, spacing)
    gx, gy = np.meshgrid(centres, centres)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    return x, y


def true_in_aperture(clean: np.ndarray, x, y, radii, annulus) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free aperture fluxes (n, k) and local sky (n,), measured like obsdb does."""
    data = np.ascontiguousarray(clean, dtype=np.float64)
    n, k = len(x), len(radii)
    xs, ys, rs = np.repeat(x, k), np.repeat(y, k), np.tile(radii, n)
    total, _, _ = sep.sum_circle(data, xs, ys, rs, subpix=0)
    ann, _, _ = sep.sum_circann(data, x, y, annulus[0], annulus[1], subpix=0)
    area, _, _ = sep.sum_circann(np.ones_like(data), x, y, annulus[0], annulus[1], subpix=0)
    sky = ann / area
    return total.reshape(n, k) - np.pi * np.asarray(radii)[None, :] ** 2 * sky[:, None], sky


def snr_truth(flux, fwhm, sky_sigma):
    """Expected S/N of a star in an aperture of radius 1 FWHM."""
    alpha = float(moffat_alpha(fwhm, BETA))
    inside = flux * (1.0 - (1.0 + fwhm**2 / alpha**2) ** (1.0 - BETA))
    return inside / np.sqrt(inside / GAIN + np.pi * fwhm**2 * sky_sigma**2)


def run_chain(frame: Synth, radii=None, neighbours=True):
    sky = estimate_background(frame.sci, frame.mask)
    stars = detect_stars(frame.sci, sky, frame.mask, err=frame.err)
    psf = measure_psf(frame.sci, stars, sky, frame.mask, err=frame.err)
    if radii is None:
        radii = default_radii(psf.fwhm)
    annulus = default_annulus(psf.fwhm, radii[-1])
    res = measure_apertures(frame.sci, frame.err, frame.mask, stars["x"], stars["y"], radii=radii, annulus=annulus,
                            neighbours_xy=np.column_stack([stars["x"], stars["y"]]) if neighbours else None)
    return sky, stars, psf, res


def match(x_det, y_det, x_true, y_true, radius=1.5):
    """Index of the true star nearest each detection, -1 beyond ``radius``."""
    d, i = cKDTree(np.column_stack([x_true, y_true])).query(np.column_stack([x_det, y_det]))
    return np.where(d <= radius, i, -1)


# -- background ----------------------------------------------------------------------------

def test_background_follows_the_gradient_and_reports_the_noise():
    rng = np.random.default_rng(11)
    x, y = jittered_grid(512, 40, 20, rng)
    frame = make_frame(12, 512, x, y, 10 ** rng.uniform(3, 5, x.size), 3.0)
    sky = estimate_background(frame.sci)
    assert isinstance(sky, SkyModel) and sky.sky.shape == frame.sci.shape and sky.sky.dtype == np.float32
    inner = (slice(64, -64), slice(64, -64))
    sigma = np.sqrt(300.0 / GAIN + READ_NOISE_ADU**2)
    # The mesh mode sits on the sky: well below the pixel noise everywhere inside.
    assert np.median(np.abs(sky.sky[inner] - frame.sky[inner])) < 0.05 * sigma
    assert sky.level == pytest.approx(300.0, abs=1.0)
    assert sky.rms_level == pytest.approx(sigma, rel=0.05)


# -- detection -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crowd():
    """1024^2 frame, 700 stars from S/N ~3 to ~2000 at random positions, FWHM 3 px."""
    rng = np.random.default_rng(21)
    n = 700
    x, y = rng.uniform(8, 1016, n), rng.uniform(8, 1016, n)
    flux = 10 ** rng.uniform(2.3, 5.7, n)
    return make_frame(22, 1024, x, y, flux, 3.0)


def test_detection_is_complete_above_snr_10(crowd):
    sky = estimate_background(crowd.sci)
    stars = detect_stars(crowd.sci, sky, err=crowd.err)
    assert np.all(np.diff(stars["flux"]) <= 0), "brightest first"
    sigma = np.sqrt(300.0 / GAIN + READ_NOISE_ADU**2)
    expected = snr_truth(crowd.flux, crowd.fwhm, sigma)
    # A star whose neighbour is within 2 FWHM can be merged into it: not a completeness failure.
    nn = cKDTree(np.column_stack([crowd.x, crowd.y])).query(np.column_stack([crowd.x, crowd.y]), k=2)[0][:, 1]
    d, _ = cKDTree(np.column_stack([stars["x"], stars["y"]])).query(np.column_stack([crowd.x, crowd.y]))
    target = (expected > 10) & (nn > 2 * crowd.fwhm)
    found = d[target] < 1.5
    assert target.sum() > 300
    assert found.mean() >= 0.98, f"completeness {found.mean():.3f} above S/N 10"
    # Reported S/N follows the expected one (aperture radius ~ FWHM) for matched stars.
    idx = match(stars["x"], stars["y"], crowd.x, crowd.y)
    ok = (idx >= 0) & (expected[np.maximum(idx, 0)] > 10)
    ratio = stars["snr"][ok] / expected[idx[ok]]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.15)


def test_no_spurious_detections_on_pure_noise():
    """1 Mpix of sky noise with a gradient. At threshold 3 (filtered-image sigma) sep
    finds a few noise bumps per Mpix, all below S/N 5 in the S/N aperture; the chance of
    a 5-sigma noise fluctuation in ~1e5 independent apertures is ~0.03."""
    frame = make_frame(31, 1024, [], [], [], 3.0)
    sky = estimate_background(frame.sci)
    stars = detect_stars(frame.sci, sky, err=frame.err)
    assert len(stars) <= 20
    assert np.all(stars["snr"] < 5.0)


def test_adaptive_moments_are_the_same_in_batches(crowd, monkeypatch):
    """Stars measured a few at a time (as broad stamps on a crowded frame are, to bound
    memory) get exactly the moments they get all at once."""
    from obsdb.photometry import detect

    sky = estimate_background(crowd.sci)
    data = crowd.sci - sky.sky
    x, y = crowd.x[:300], crowd.y[:300]
    whole = detect._adaptive_moments(data, sky.rms, None, x, y, 1.0, half=8)
    monkeypatch.setattr(detect, "_MOMENT_BATCH_PIXELS", 17 * 17 * 7)  # 7 stars a batch
    batched = detect._adaptive_moments(data, sky.rms, None, x, y, 1.0, half=8)
    for name in ("x", "y", "fwhm", "ellipticity", "snr", "ok"):
        np.testing.assert_array_equal(getattr(batched, name), getattr(whole, name), err_msg=name)
    good = whole.ok & (crowd.flux[:300] > 1e4)
    assert good.sum() > 50
    # The Gaussian matched to a beta = 3 Moffat is 1.1-1.2 times as wide (its wings).
    assert 1.05 < np.median(whole.fwhm[good]) / 3.0 < 1.25


def test_masked_pixels_are_found_word_by_word():
    from obsdb.photometry.apertures import _flat_true

    rng = np.random.default_rng(3)
    for shape in ((2048, 2048), (7, 3), (1, 1), (13, 17), (0, 5)):
        for p in (0.0, 1e-4, 0.3, 1.0):
            hide = rng.random(shape) < p
            np.testing.assert_array_equal(_flat_true(hide), np.flatnonzero(hide))
    strided = (rng.random((64, 64)) < 0.1)[:, ::2]
    np.testing.assert_array_equal(_flat_true(strided), np.flatnonzero(strided))


def test_centroids_match_the_truth_within_the_noise(crowd):
    sky = estimate_background(crowd.sci)
    stars = detect_stars(crowd.sci, sky, err=crowd.err)
    idx = match(stars["x"], stars["y"], crowd.x, crowd.y)
    nn = cKDTree(np.column_stack([crowd.x, crowd.y])).query(np.column_stack([crowd.x, crowd.y]), k=2)[0][:, 1]
    ok = idx >= 0
    ok[ok] &= nn[idx[ok]] > 6 * crowd.fwhm  # isolated: no neighbour pulls the window
    dx = stars["x"][ok] - crowd.x[idx[ok]]
    dy = stars["y"][ok] - crowd.y[idx[ok]]
    snr = stars["snr"][ok]
    bright = snr > 200
    assert bright.sum() > 30
    assert np.sqrt(np.mean(dx[bright] ** 2 + dy[bright] ** 2) / 2) < 0.05
    # Noise-limited: the error per axis scales as FWHM / S/N (about 0.5 FWHM / S/N for a
    # windowed centroid); no floor from the method, no bias.
    mid = (snr > 10) & (snr < 200)
    scaled = np.concatenate([dx[mid], dy[mid]]) * np.tile(snr[mid], 2) / crowd.fwhm
    assert np.sqrt(np.mean(scaled**2)) < 1.0
    assert abs(np.median(dx)) < 0.01 and abs(np.median(dy)) < 0.01


# -- PSF -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fwhm", [2.0, 3.0, 4.5])
def test_fwhm_is_accurate_to_3_percent(fwhm):
    rng = np.random.default_rng(int(fwhm * 10))
    x, y = jittered_grid(512, 42, 24, rng)
    frame = make_frame(int(fwhm * 100), 512, x, y, 10 ** rng.uniform(3.5, 5.5, x.size), fwhm)
    sky = estimate_background(frame.sci)
    stars = detect_stars(frame.sci, sky, err=frame.err)
    psf = measure_psf(frame.sci, stars, sky, err=frame.err)
    assert psf.n_used >= 15
    assert psf.fwhm == pytest.approx(fwhm, rel=0.03)
    assert psf.ellipticity < 0.05
    assert psf.beta == pytest.approx(BETA, rel=0.2)


def test_measure_psf_skips_saturated_and_masked_stars():
    rng = np.random.default_rng(5)
    x, y = jittered_grid(512, 42, 24, rng)
    frame = make_frame(6, 512, x, y, 10 ** rng.uniform(3.5, 5.5, x.size), 3.0)
    sky = estimate_background(frame.sci)
    stars = detect_stars(frame.sci, sky, err=frame.err)
    # Clip the image at a level that flattens the brightest stars: they must not widen the PSF.
    level = float(np.percentile(frame.sci[frame.clean > 3000], 50))
    clipped = np.minimum(frame.sci, level)
    psf = measure_psf(clipped, stars, sky, err=frame.err, saturation=level)
    assert psf.fwhm == pytest.approx(3.0, rel=0.03)
    empty = measure_psf(frame.sci, stars[:0], sky)
    assert empty.n_used == 0 and np.isnan(empty.fwhm)


# -- aperture photometry: flux and error model ---------------------------------------------

FLUX_GROUPS = {"S/N~8": 1.2e3, "S/N~35": 6e3, "S/N~200": 5e4, "S/N~900": 6e5}


@pytest.fixture(scope="module")
def isolated_runs():
    """Three 1024^2 realisations of 784 isolated stars in four flux groups, measured at
    fixed (true) positions with radii 1, 1.5, 2, 3 FWHM."""
    fwhm = 3.0
    radii = default_radii(fwhm)
    annulus = default_annulus(fwhm, radii[-1])
    rows = []
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        x, y = jittered_grid(1024, 36, 22, rng)
        group = rng.integers(0, len(FLUX_GROUPS), x.size)
        flux = np.array(list(FLUX_GROUPS.values()))[group]
        frame = make_frame(200 + seed, 1024, x, y, flux, fwhm)
        res = measure_apertures(frame.sci, frame.err, frame.mask, x, y, radii=radii, annulus=annulus)
        truth, true_sky = true_in_aperture(frame.clean, x, y, radii, annulus)
        rows.append((group, res, truth, true_sky))
    return radii, annulus, rows


def test_aperture_flux_is_unbiased_and_the_error_model_is_right(isolated_runs):
    radii, _, rows = isolated_runs
    group = np.concatenate([g for g, _, _, _ in rows])
    flux = np.vstack([r.flux for _, r, _, _ in rows])
    err = np.vstack([r.flux_err for _, r, _, _ in rows])
    truth = np.vstack([t for _, _, t, _ in rows])
    flags = np.vstack([r.flags for _, r, _, _ in rows])
    pull = (flux - truth) / err
    for g, name in enumerate(FLUX_GROUPS):
        sel = group == g
        n = sel.sum()
        assert n > 450
        for j in range(len(radii)):
            p = pull[sel, j]
            assert 0.9 < np.std(p) < 1.1, f"{name}, r={radii[j]:.1f}: pull std {np.std(p):.3f}"
            # Unbiased: the median pull within 3 sigma of its sampling error.
            assert abs(np.median(p)) < 3 * 1.2533 / np.sqrt(n), f"{name}, r={radii[j]:.1f}: median pull"
        if name == "S/N~900":
            assert np.abs(np.median(flux[sel] / truth[sel] - 1, axis=0)).max() < 5e-4
    # The faint group is LOW_SNR at the large radii only; nothing else is flagged.
    assert np.all((flags & ~F.LOW_SNR) == 0)
    assert np.all(flags[group == 3] == 0)


def test_local_sky_and_its_error_are_right(isolated_runs):
    _, _, rows = isolated_runs
    bkg = np.concatenate([r.bkg for _, r, _, _ in rows])
    bkg_err = np.concatenate([r.bkg_err for _, r, _, _ in rows])
    true_sky = np.concatenate([s for _, _, _, s in rows])
    pull = (bkg - true_sky) / bkg_err
    assert 0.9 < np.std(pull) < 1.1
    assert abs(np.median(pull)) < 0.1


def test_scintillation_enters_the_error_model():
    rng = np.random.default_rng(41)
    x, y = jittered_grid(512, 36, 22, rng)
    mean_flux = np.full(x.size, 4e5)
    scint = 0.01
    frame = make_frame(42, 512, x, y, mean_flux * (1 + rng.normal(0, scint, x.size)), 3.0)
    radii, annulus = [4.5, 9.0], default_annulus(3.0, 9.0)
    expected, _ = true_in_aperture(make_frame(0, 512, x, y, mean_flux, 3.0).clean, x, y, radii, annulus)
    with_scint = measure_apertures(frame.sci, frame.err, frame.mask, x, y, radii=radii, annulus=annulus,
                                   scintillation=scint)
    without = measure_apertures(frame.sci, frame.err, frame.mask, x, y, radii=radii, annulus=annulus)
    assert 0.85 < np.std((with_scint.flux - expected) / with_scint.flux_err) < 1.15
    assert np.std((without.flux - expected) / without.flux_err) > 2.0
    # Per-star values broadcast the same way.
    per_star = measure_apertures(frame.sci, frame.err, frame.mask, x, y, radii=radii, annulus=annulus,
                                 scintillation=np.full(x.size, scint))
    np.testing.assert_allclose(per_star.flux_err, with_scint.flux_err)


def test_annulus_sky_is_robust_to_a_neighbour_and_a_cosmic_ray():
    """Each target has a 3x brighter neighbour and an unmasked cosmic-ray track in its
    annulus. Clipping removes the track and the neighbour's core, the exclusion around
    detected stars its wings: the sky stays on the truth where a plain mean would not."""
    rng = np.random.default_rng(51)
    fwhm = 3.0
    radii = np.array([3.0, 4.5, 6.0])
    annulus = default_annulus(fwhm, radii[-1])
    x, y = jittered_grid(768, 64, 32, rng)
    angle = rng.uniform(0, 2 * np.pi, x.size)
    r_mid = 0.5 * sum(annulus)
    nx_, ny_ = x + r_mid * np.cos(angle), y + r_mid * np.sin(angle)
    flux = np.full(x.size, 2e4)
    frame = make_frame(52, 768, np.r_[x, nx_], np.r_[y, ny_], np.r_[flux, 3 * flux], fwhm)
    sci = frame.sci.copy()
    for xi, yi, a in zip(x, y, angle + np.pi):
        cx, cy = int(round(xi + r_mid * np.cos(a))), int(round(yi + r_mid * np.sin(a)))
        sci[cy, cx - 1:cx + 2] += 3000.0
    sky = estimate_background(sci)
    stars = detect_stars(sci, sky)
    detected = np.column_stack([stars["x"], stars["y"]])
    res = measure_apertures(sci, frame.err, frame.mask, x, y, radii=radii, annulus=annulus, neighbours_xy=detected)
    # The truth: the sky plane plus the target's own faint wing in the annulus.
    truth, true_sky = true_in_aperture(make_frame(0, 768, x, y, flux, fwhm).clean, x, y, radii, annulus)
    pull = (res.bkg - true_sky) / res.bkg_err
    assert abs(np.median(pull)) < 0.5
    assert np.all(np.abs(pull) < 4)
    # What clipping and exclusion saved us from: the plain annulus mean is far off.
    ann, _, _ = sep.sum_circann(np.ascontiguousarray(sci, dtype=np.float64), x, y, *annulus, subpix=0)
    plain = ann / (np.pi * (annulus[1] ** 2 - annulus[0] ** 2))
    assert np.median((plain - true_sky) / res.bkg_err) > 10
    # The flux stays unbiased within its errors.
    assert abs(np.median((res.flux - truth) / res.flux_err)) < 0.3
    # Masking the cosmic-ray pixels removes them from the annulus altogether.
    mask = np.zeros_like(frame.mask)
    mask[(sci - frame.sci) > 0] = 4
    masked = measure_apertures(sci, frame.err, mask, x, y, radii=radii, annulus=annulus, neighbours_xy=detected)
    assert np.all(masked.n_sky <= res.n_sky)
    assert np.all(masked.flags == res.flags)


# -- flags ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flag_frame():
    """256^2 frame of 5e4 ADU stars, one per constructed case (a name -> position)."""
    pos = {
        "clean": (60.0, 60.0), "edge": (2.2, 140.0), "bad": (140.3, 60.2), "cosmic": (200.4, 60.6),
        "saturated_mask": (60.2, 200.1), "saturated_value": (140.1, 200.3), "blend_a": (200.0, 200.0),
        "blend_b": (205.0, 200.0), "faint": (200.0, 130.0), "bad_annulus": (60.0, 130.0),
    }
    flux = {"saturated_value": 4e6, "faint": 150.0}
    names = list(pos)
    x = np.array([pos[n][0] for n in names])
    y = np.array([pos[n][1] for n in names])
    f = np.array([flux.get(n, 5e4) for n in names])
    frame = make_frame(61, 256, x, y, f, 3.0)
    sci, mask = frame.sci.copy(), frame.mask.copy()
    sci[60, 140] = 0.0                      # a dead pixel at the star's centre
    mask[60, 140] |= 1
    sci[61, 201] += 20000.0                 # a hit one pixel off the centre
    mask[61, 201] |= 4
    mask[200, 60] |= 2                      # saturated according to the calibration
    mask[130, 75] |= 1                      # a bad pixel in an annulus, in no aperture
    return names, x, y, f, Synth(sci, frame.err, mask, frame.clean, frame.sky, x, y, f, 3.0)


def test_each_flag_bit_is_set_by_its_case(flag_frame):
    names, x, y, f, frame = flag_frame
    radii = np.array([3.0, 6.0])
    annulus = (10.0, 16.0)
    saturation = 30000.0
    res = measure_apertures(frame.sci, frame.err, frame.mask, x, y, radii=radii, annulus=annulus,
                            neighbours_xy=np.column_stack([x, y]), saturation=saturation)
    assert isinstance(res, ApertureResult)
    fl = {n: res.flags[i] for i, n in enumerate(names)}
    assert fl["clean"].tolist() == [0, 0]
    assert fl["bad_annulus"].tolist() == [0, 0]
    assert np.all(fl["edge"] & F.EDGE)
    assert np.all(fl["bad"] & F.BAD_PIXEL)
    assert np.all(fl["cosmic"] & F.COSMIC_RAY)
    assert np.all(fl["saturated_mask"] & F.SATURATED)
    assert np.all(fl["saturated_value"] & F.SATURATED)
    # The neighbour 5 px away is inside the 6 px aperture but not the 3 px one.
    assert fl["blend_a"].tolist() == [0, F.BLENDED] and fl["blend_b"].tolist() == [0, F.BLENDED]
    assert np.all(fl["faint"] & F.LOW_SNR)
    for name in ("bad", "cosmic", "clean"):
        assert fl[name][0] & ~(F.BAD_PIXEL | F.COSMIC_RAY) == 0
    # Interpolated pixels keep the flux unbiased: within 3 sigma of the clean star.
    truth, _ = true_in_aperture(frame.clean, x, y, radii, annulus)
    for name in ("bad", "cosmic"):
        i = names.index(name)
        assert abs(res.flux[i, 1] - truth[i, 1]) < 3 * res.flux_err[i, 1], name
    # Without the interpolation the dead pixel would cost ~10 % of the flux.
    i = names.index("bad")
    assert frame.clean[60, 140] - 300 > 0.05 * truth[i, 1]


def test_recentering_and_centroid_shift(flag_frame):
    names, x, y, f, frame = flag_frame
    i = names.index("clean")
    radii, annulus = np.array([3.0, 6.0]), (10.0, 16.0)
    near = measure_apertures(frame.sci, frame.err, frame.mask, [x[i] + 0.7], [y[i] - 0.4], radii=radii,
                             annulus=annulus, recenter=True, fwhm=3.0)
    assert np.hypot(near.x[0] - x[i], near.y[0] - y[i]) < 0.05
    assert near.flags[0].tolist() == [0, 0]
    assert near.shift[0] == pytest.approx(np.hypot(0.7, 0.4), abs=0.05)
    far = measure_apertures(frame.sci, frame.err, frame.mask, [x[i] + 3.0], [y[i]], radii=radii, annulus=annulus,
                            recenter=True, fwhm=3.0, max_shift=1.0)
    assert np.all(far.flags[0] & F.CENTROID_SHIFT)
    assert far.x[0] == x[i] + 3.0  # kept where it was asked for
    # Forced photometry (no re-centring) never moves or flags a position.
    forced = measure_apertures(frame.sci, frame.err, frame.mask, [x[i] + 3.0], [y[i]], radii=radii,
                               annulus=annulus)
    assert forced.x[0] == x[i] + 3.0 and not np.any(forced.flags & F.CENTROID_SHIFT)


def test_describe_names_the_bits():
    assert F.describe(0) == []
    assert F.describe(F.SATURATED | F.BLENDED) == ["SATURATED", "BLENDED"]
    assert F.describe(np.int32(F.FORCED | F.NOT_CATALOG_TIED)) == ["FORCED", "NOT_CATALOG_TIED"]
    assert F.describe(1024) == ["BIT_1024"]
    with pytest.raises(ValueError, match="flags must be >= 0"):
        F.describe(-1)


# -- inputs --------------------------------------------------------------------------------

def test_inputs_are_not_modified_and_big_endian_data_work(flag_frame):
    names, x, y, f, frame = flag_frame
    sci, err, mask = frame.sci.copy(), frame.err.copy(), frame.mask.copy()
    radii, annulus = np.array([3.0, 6.0]), (10.0, 16.0)
    native = measure_apertures(sci, err, mask, x, y, radii=radii, annulus=annulus)
    big = measure_apertures(sci.astype(">f4"), err.astype(">f4"), mask, x, y, radii=radii, annulus=annulus)
    np.testing.assert_array_equal(sci, frame.sci)
    np.testing.assert_array_equal(err, frame.err)
    np.testing.assert_array_equal(mask, frame.mask)
    np.testing.assert_allclose(big.flux, native.flux)
    sky = estimate_background(sci.astype(">f4"))
    assert sky.level == pytest.approx(estimate_background(sci).level)
    assert len(detect_stars(sci.astype(">f4"), sky)) == len(detect_stars(sci, sky))


def test_input_checks_raise_clear_errors(flag_frame):
    names, x, y, f, frame = flag_frame
    sci, err, mask = frame.sci, frame.err, frame.mask
    ok = dict(radii=[3.0, 6.0], annulus=(10.0, 16.0))
    with pytest.raises(ValueError, match="err has shape"):
        measure_apertures(sci, err[:-1], mask, x, y, **ok)
    with pytest.raises(ValueError, match="mask has shape"):
        measure_apertures(sci, err, mask[:, :-1], x, y, **ok)
    with pytest.raises(ValueError, match="radii must be a non-empty"):
        measure_apertures(sci, err, mask, x, y, radii=[], annulus=(10.0, 16.0))
    with pytest.raises(ValueError, match="radii must be strictly increasing"):
        measure_apertures(sci, err, mask, x, y, radii=[6.0, 3.0], annulus=(10.0, 16.0))
    with pytest.raises(ValueError, match="inside the largest aperture"):
        measure_apertures(sci, err, mask, x, y, radii=[3.0, 6.0], annulus=(5.0, 16.0))
    with pytest.raises(ValueError, match="outer radius"):
        measure_apertures(sci, err, mask, x, y, radii=[3.0, 6.0], annulus=(10.0, 10.0))
    with pytest.raises(ValueError, match="same length"):
        measure_apertures(sci, err, mask, x, y[:-1], **ok)
    with pytest.raises(ValueError, match="must be finite"):
        measure_apertures(sci, err, mask, [np.nan], [3.0], **ok)
    with pytest.raises(ValueError, match="scintillation must be a scalar or one value per star"):
        measure_apertures(sci, err, mask, x, y, scintillation=[0.01, 0.02], **ok)
    with pytest.raises(ValueError, match="2-D image"):
        estimate_background(sci.ravel())
    with pytest.raises(ValueError, match="mask has shape"):
        estimate_background(sci, mask[:-1])
    with pytest.raises(ValueError, match="box must be"):
        estimate_background(sci, box=1000)
    sky = estimate_background(sci)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        detect_stars(sci, sky, threshold=0)
    with pytest.raises(ValueError, match="sky.sky has shape"):
        detect_stars(sci[:-1], sky)
    with pytest.raises(ValueError, match="stars lacks the fields"):
        measure_psf(sci, np.zeros(3, dtype=[("x", "f8"), ("y", "f8")]), sky)
    with pytest.raises(ValueError, match="fwhm must be a positive"):
        default_radii(0.0)
    with pytest.raises(ValueError, match="max_radius must be"):
        default_annulus(3.0, -1.0)
    with pytest.raises(ValueError, match="must have shape"):
        choose_aperture(np.ones((5, 3)), np.ones((5, 3)), [1.0, 2.0], np.zeros((5, 3)))


# -- aperture choice, radii, limits, scintillation -----------------------------------------

def _growth_table(fwhm, radii, fluxes, sky_sigma, rng):
    alpha = float(moffat_alpha(fwhm, BETA))
    enclosed = 1.0 - (1.0 + np.asarray(radii) ** 2 / alpha**2) ** (1.0 - BETA)
    mean = fluxes[:, None] * enclosed[None, :]
    err = np.sqrt(mean / GAIN + np.pi * np.asarray(radii)[None, :] ** 2 * sky_sigma**2)
    return mean + rng.normal(0, 1, mean.shape) * err, err


def test_choose_aperture_balances_snr_against_the_curve_of_growth():
    rng = np.random.default_rng(71)
    fwhm, sky_sigma = 3.0, 15.0
    radii = default_radii(fwhm, factors=(0.6, 1.0, 1.5, 2.0, 3.0))
    fluxes = np.r_[10 ** rng.uniform(2.8, 3.6, 300), 10 ** rng.uniform(5, 6, 40)]
    flux, err = _growth_table(fwhm, radii, fluxes, sky_sigma, rng)
    flags = np.zeros(flux.shape, dtype=np.int32)
    snr_best = int(np.argmax(np.median((flux / err)[:300], axis=0)))
    chosen = choose_aperture(flux, err, radii, flags)
    # 0.6 FWHM holds < 90 % of the light of the 3 FWHM aperture: the floor lifts the choice.
    alpha = float(moffat_alpha(fwhm, BETA))
    frac = (1 - (1 + radii**2 / alpha**2) ** (1 - BETA)) / (1 - (1 + radii[-1] ** 2 / alpha**2) ** (1 - BETA))
    floor = int(np.flatnonzero(frac >= 0.9)[0])
    assert chosen == max(snr_best, floor)
    assert chosen in (1, 2)
    # A flagged star does not vote; with no usable star the largest aperture is safe.
    assert choose_aperture(flux, err, radii, np.full(flux.shape, F.SATURATED)) == len(radii) - 1
    # The floor alone decides when the faint stars would prefer the smallest radius.
    assert choose_aperture(flux, err, radii, flags, growth_fraction=0.99) >= 3


def test_chain_picks_a_sensible_aperture(isolated_runs):
    radii, _, rows = isolated_runs
    _, res, _, _ = rows[0]
    j = choose_aperture(res.flux, res.flux_err, radii, res.flags)
    assert radii[j] / 3.0 in (1.0, 1.5)


def test_default_radii_and_annulus():
    np.testing.assert_allclose(default_radii(3.0), [3.0, 4.5, 6.0, 9.0])
    np.testing.assert_allclose(default_radii(2.0, factors=(1.0, 2.0), fixed=(4.0, 5.0)), [2.0, 4.0, 5.0])
    r_in, r_out = default_annulus(3.0, 9.0)
    assert r_in >= 9.0 + 2 and r_out - r_in >= 6.0
    assert default_annulus(1.0, 2.0) == (4.0, 10.0)


def test_limiting_magnitudes_match_the_measured_snr():
    rms, radius, zp = 15.0, 4.5, 25.0
    lim = limiting_magnitudes(rms, radius, zp)
    assert set(lim) == {3, 5, 10}
    assert lim[5] == pytest.approx(zp - 2.5 * np.log10(5 * rms * np.sqrt(np.pi) * radius))
    assert lim[3] - lim[10] == pytest.approx(2.5 * np.log10(10 / 3))
    per_second = limiting_magnitudes(rms, radius, zp - 2.5 * np.log10(60.0), exptime_s=60.0)
    assert per_second[5] == pytest.approx(lim[5])
    assert limiting_magnitudes(rms, radius, zp, aperture_correction=1.1)[5] == pytest.approx(
        lim[5] - 2.5 * np.log10(1.1))
    # Stars injected at the 5-sigma aperture flux come out at S/N ~5 (a little less: their
    # own Poisson noise and the annulus error add).
    sky_level = rms**2 * GAIN - READ_NOISE_ADU**2 * GAIN
    rng = np.random.default_rng(81)
    x, y = jittered_grid(512, 36, 22, rng)
    alpha = float(moffat_alpha(3.0, BETA))
    enclosed = 1 - (1 + radius**2 / alpha**2) ** (1 - BETA)
    f_lim = 10 ** (-0.4 * (lim[5] - zp)) / enclosed
    frame = make_frame(82, 512, x, y, np.full(x.size, f_lim), 3.0, sky_level=sky_level)
    res = measure_apertures(frame.sci, frame.err, frame.mask, x, y, radii=[radius], annulus=default_annulus(3, 4.5))
    assert np.median(res.snr[:, 0]) == pytest.approx(5.0, rel=0.15)
    with pytest.raises(ValueError, match="sky_rms_per_pixel must be > 0"):
        limiting_magnitudes(0.0, radius, zp)
    with pytest.raises(ValueError, match="exptime_s must be > 0"):
        limiting_magnitudes(rms, radius, zp, exptime_s=0.0)


def test_scintillation_sigma_follows_young_and_osborn():
    # Young (1967): 0.09 D[cm]^-2/3 X^1.75 exp(-h/8000) / sqrt(2 t)
    expected = 0.09 * 35.6 ** (-2 / 3) * 1.3**1.75 * np.exp(-800 / 8000) / np.sqrt(2 * 120)
    assert scintillation_sigma(0.356, 1.3, 800.0, 120.0) == pytest.approx(expected)
    assert scintillation_sigma(0.356, 1.3, 800.0, 120.0, correction=1.5) == pytest.approx(1.5 * expected)
    assert scintillation_sigma(0.356, 2.0, 800.0, 120.0) > scintillation_sigma(0.356, 1.0, 800.0, 120.0)
    with pytest.raises(ValueError, match="airmass must be >= 1"):
        scintillation_sigma(0.356, 0.9, 800.0, 120.0)
    with pytest.raises(ValueError, match="aperture_diameter_m must be > 0"):
        scintillation_sigma(0.0, 1.3, 800.0, 120.0)


# -- one realistic frame from the project's simulator --------------------------------------

def test_simulated_night_frame_against_its_truth(tmp_path):
    from astropy.io import fits

    from obsdb.simulate import SimulationConfig, Truth, simulate

    cfg = SimulationConfig(size=512, n_fields=1, lights_per_field_per_filter=1, filters=("g",), n_bias=2,
                           n_darks_per_exptime=1, n_flats_per_filter=2, variables_per_type=0)
    simulate(tmp_path / "sim", cfg)
    truth = Truth.load(tmp_path / "sim")
    rec = truth.select(kind="light")[0]
    raw = fits.getdata(tmp_path / "sim" / rec.file).astype(np.float64)
    sci = truth.calibrate(raw, rec).astype(np.float32)
    err = np.sqrt(truth.variance_calibrated(rec)).astype(np.float32)
    mask = np.zeros(sci.shape, np.uint8)
    mask[truth.cosmic_mask(rec)] |= 4
    mask[raw >= 65535] |= 2
    frame = Synth(sci, err, mask, truth.noise_free_image(rec), None, None, None, None, rec.seeing_fwhm_px)
    sky, stars, psf, _ = run_chain(frame)
    assert psf.fwhm == pytest.approx(rec.seeing_fwhm_px, rel=0.03)
    assert sky.level == pytest.approx(np.median(frame.clean), rel=0.02)

    # Forced photometry at the true positions, against the noise-free frame: its aperture
    # sum minus the (uniform) true sky. Undetected neighbours inside an aperture are in
    # both; detected ones flag the measurement BLENDED.
    stars_true = truth.star_fluxes(rec)
    x, y = stars_true["x"], stars_true["y"]
    inside = (x > 5) & (y > 5) & (x < 506) & (y < 506)
    x, y = x[inside], y[inside]
    radii = default_radii(psf.fwhm)
    annulus = default_annulus(psf.fwhm, radii[-1])
    res = measure_apertures(sci, err, mask, x, y, radii=radii, annulus=annulus,
                            neighbours_xy=np.column_stack([stars["x"], stars["y"]]))
    n, k = x.size, radii.size
    total, _, _ = sep.sum_circle(np.ascontiguousarray(frame.clean), np.repeat(x, k), np.repeat(y, k),
                                 np.tile(radii, n), subpix=0)
    true_flux = total.reshape(n, k) - np.pi * radii**2 * rec.sky_adu_per_pix
    j = 1  # 1.5 FWHM: the star's own wing in the annulus is < 3e-4 of its flux there
    clean = (res.flags[:, j] & ~F.LOW_SNR) == 0
    assert clean.sum() > 50
    pull = (res.flux[clean, j] - true_flux[clean, j]) / res.flux_err[clean, j]
    # Calibrated with the true bias, dark and flat, the frame holds only its own noise:
    # the pulls must be standard normal.
    assert 0.85 < np.std(pull) < 1.15
    assert abs(np.median(pull)) < 0.3
