"""Reduction steps, cosmic rays and calibrated products (obsdb.calibration.reduce, cosmics, products)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from calibration_synth import GAIN, READ_NOISE, SATURATION, cosmic_rays, expose, make_detector, star_field
from scipy import ndimage

from obsdb.calibration import badpixels
from obsdb.calibration.cosmics import CosmicRayDetector, mask_cosmics
from obsdb.calibration.masters import make_master_bias, make_master_dark, make_master_flat
from obsdb.calibration.products import read_product, write_product, write_reduced
from obsdb.calibration.reduce import (
    MASK_BAD,
    MASK_COSMIC,
    MASK_SATURATED,
    dark_for_exposure,
    flat_correct,
    parse_section,
    reduce_frame,
    subtract_bias,
    subtract_dark,
    subtract_overscan,
    trim,
)

SHAPE = (128, 160)
EXPTIME = 120.0


@pytest.fixture(scope="module")
def detector():
    return make_detector(SHAPE, seed=21)


@pytest.fixture(scope="module")
def masters(detector):
    rng = np.random.default_rng(22)
    noise = {"gain": GAIN, "read_noise": READ_NOISE}
    bias = make_master_bias([expose(detector, 0, 0, rng) for _ in range(20)], **noise)
    dark, rate = make_master_dark([expose(detector, 0, 300.0, rng) for _ in range(20)], bias, 300.0, **noise)
    flat = make_master_flat([expose(detector, 25000, 2.0, rng) for _ in range(20)], bias, rate, 2.0, **noise)
    return {"bias": bias, "dark": dark, "dark_rate": rate, "flat": flat}


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(23)
    image, _ = star_field(SHAPE, rng, n_stars=12, sky=300.0, peak_max=20000.0)
    return image


def _flat_norm(detector, masters):
    """The master flat has median 1; the detector's true flat does not (vignetting)."""
    good = masters["flat"].mask == 0
    return float(np.median(detector.flat[good] / masters["flat"].data[good]))


# -- sections, overscan, trim --------------------------------------------------------------

def test_parse_section():
    assert parse_section("[1:2048,1:4096]") == (slice(0, 4096), slice(0, 2048))
    assert parse_section("[ 10:20 , 5:6 ]") == (slice(4, 6), slice(9, 20))
    assert parse_section("[20:10,6:5]") == (slice(4, 6), slice(9, 20))  # readout direction
    with pytest.raises(ValueError, match="not a FITS section"):
        parse_section("1:20,1:5")
    with pytest.raises(ValueError, match="1-based"):
        parse_section("[0:20,1:5]")
    with pytest.raises(ValueError, match="outside an image"):
        parse_section("[1:30,1:5]", shape=(10, 20))


def test_overscan_and_trim():
    rng = np.random.default_rng(24)
    science = rng.normal(500, 5, (40, 50))
    raw = np.hstack([science, np.zeros((40, 10))]) + 1000 + rng.normal(0, 3, (40, 60))
    raw = raw.astype(np.float32)
    before = raw.copy()
    out = trim(subtract_overscan(raw, "[52:60,1:40]"), "[1:50,1:40]")
    np.testing.assert_array_equal(raw, before)  # input untouched
    assert out.shape == (40, 50) and out.dtype == np.float32
    assert np.median(out) == pytest.approx(500, abs=1)
    # A bias drifting along the rows needs the per-line model.
    drift = np.linspace(0, 50, 40)[:, None].astype(np.float32)
    drifting = raw + drift
    flat_model = trim(subtract_overscan(drifting, "[52:60,1:40]"), "[1:50,1:40]")
    per_line = trim(subtract_overscan(drifting, "[52:60,1:40]", per_line=True), "[1:50,1:40]")
    assert np.ptp(np.median(flat_model, axis=1)) > 40
    assert np.ptp(np.median(per_line, axis=1)) < 10
    with pytest.raises(ValueError, match="must span all rows"):
        subtract_overscan(raw, "[52:60,1:20]", per_line=True)


# -- single steps ---------------------------------------------------------------------------

def test_single_steps_return_new_arrays():
    data = np.full((4, 5), 100.0, np.float32)
    bias = np.full((4, 5), 10.0, np.float32)
    assert subtract_bias(data, bias)[0, 0] == 90
    assert subtract_dark(data, exptime=10, dark_rate=np.full((4, 5), 0.5))[0, 0] == 95
    assert subtract_dark(data, exptime=10, dark=np.full((4, 5), 20.0), dark_exptime=40)[0, 0] == 95
    flat = np.full((4, 5), 2.0, np.float32)
    flat[0, 0] = 0.0
    out = flat_correct(data, flat)
    assert out[1, 1] == 50 and np.isfinite(out[0, 0])
    assert data[0, 0] == 100 and bias[0, 0] == 10  # inputs untouched
    with pytest.raises(ValueError, match=r"bias has shape \(2, 2\)"):
        subtract_bias(data, np.zeros((2, 2)))


def test_dark_choice():
    same, rate = np.ones((2, 2)), np.full((2, 2), 0.1)
    assert dark_for_exposure(60, dark=same, dark_exptime=60, dark_rate=rate)[1:] == (1.0, "same exptime")
    assert dark_for_exposure(30, dark=same, dark_exptime=60, dark_rate=rate)[1:] == (30.0, "rate")
    assert dark_for_exposure(30, dark=same, dark_exptime=60)[1:] == (0.5, "scaled")
    with pytest.raises(ValueError, match="needs the frame's exposure time"):
        dark_for_exposure(None, dark_rate=rate)
    with pytest.raises(ValueError, match="needs its exposure time"):
        dark_for_exposure(30, dark=same)


# -- the whole reduction --------------------------------------------------------------------

def test_reduce_recovers_the_scene_with_consistent_errors(detector, masters, scene):
    rng = np.random.default_rng(25)
    raw = expose(detector, scene, EXPTIME, rng)
    raw_before = raw.copy()
    bias_before = masters["bias"].data.copy()
    reduced = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, saturation=SATURATION, exptime=EXPTIME,
                           **masters)
    np.testing.assert_array_equal(raw, raw_before)
    np.testing.assert_array_equal(masters["bias"].data, bias_before)
    assert reduced.steps_applied == ["saturation", "bias", "dark", "flat", "cosmics"]
    assert reduced.missing == []
    assert reduced.stats["dark_method"] == "rate"  # 120 s frame, 300 s master
    assert reduced.sci.dtype == np.float32 and reduced.err.dtype == np.float32 and reduced.mask.dtype == np.uint8
    good = reduced.mask == 0
    chi = (reduced.sci - scene * _flat_norm(detector, masters))[good] / reduced.err[good]
    # The Poisson term comes from the measured value, so low pixels get smaller errors:
    # mean chi is about -sigma/(2 sky) = -0.025 here, not a bias of the image.
    assert abs(np.mean(chi)) < 0.05
    assert np.std(chi) == pytest.approx(1.0, abs=0.05)
    # Master bad pixels carry into bit 1.
    assert np.all(reduced.mask[detector.hot | detector.dead] & MASK_BAD)


def test_same_exptime_dark_is_preferred(detector, masters, scene):
    rng = np.random.default_rng(26)
    raw = expose(detector, scene, 300.0, rng)
    reduced = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, exptime=300.0, steps=["bias", "dark", "flat"],
                           **masters)
    assert reduced.stats["dark_method"] == "same exptime"
    good = reduced.mask == 0
    expected = scene * _flat_norm(detector, masters)
    assert np.std((reduced.sci - expected)[good] / reduced.err[good]) == pytest.approx(1.0, abs=0.05)


def test_missing_flat_still_reduces(detector, masters, scene):
    rng = np.random.default_rng(27)
    raw = expose(detector, scene, EXPTIME, rng)
    reduced = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, exptime=EXPTIME, bias=masters["bias"],
                           dark_rate=masters["dark_rate"], steps=["bias", "dark", "flat"])
    assert reduced.missing == ["flat"]
    assert reduced.steps_applied == ["bias", "dark"]
    # Not flat-fielded: the scene still carries the flat.
    good = reduced.mask == 0
    expected = detector.flat * scene
    assert np.std((reduced.sci - expected)[good] / reduced.err[good]) == pytest.approx(1.0, abs=0.05)
    nothing = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, steps=["bias", "dark", "flat"])
    assert nothing.missing == ["bias", "dark", "flat"] and nothing.steps_applied == []
    np.testing.assert_array_equal(nothing.sci, raw)


def test_saturation_and_overscan_in_reduce(detector, masters):
    rng = np.random.default_rng(28)
    scene = np.full(SHAPE, 300.0)
    scene[50:53, 60:63] = 1e6
    frame = expose(detector, scene, EXPTIME, rng)
    raw = np.hstack([frame, 1000 + rng.normal(0, READ_NOISE / GAIN, (SHAPE[0], 8))]).astype(np.float32)
    reduced = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, saturation=SATURATION, exptime=EXPTIME,
                           overscan=f"[{SHAPE[1] + 1}:{SHAPE[1] + 8},1:{SHAPE[0]}]", trim=f"[1:{SHAPE[1]},1:{SHAPE[0]}]",
                           steps=["saturation", "overscan", "trim", "dark", "flat", "cosmics"],
                           dark_rate=masters["dark_rate"], flat=masters["flat"])
    assert reduced.sci.shape == SHAPE
    assert reduced.steps_applied == ["saturation", "overscan", "trim", "dark", "flat", "cosmics"]
    saturated = (reduced.mask & MASK_SATURATED) != 0
    assert saturated[50:53, 60:63].all() and saturated.sum() == 9
    assert not (reduced.mask[50:53, 60:63] & MASK_COSMIC).any()
    good = reduced.mask == 0
    # Overscan (1000 ADU) instead of the bias master: the bias structure remains.
    residual = reduced.sci - (300 * _flat_norm(detector, masters) + (detector.bias - 1000) / masters["flat"].data)
    assert abs(np.median(residual[good])) < 1


def test_float64_masters_give_float32_products():
    raw = np.full((8, 8), 1100, np.uint16)
    ones = np.ones((8, 8))  # float64
    reduced = reduce_frame(raw, gain=2.0, read_noise=5.0, exptime=10.0, bias=1000 * ones, dark_rate=0.5 * ones,
                           flat=ones, steps=["bias", "dark", "flat"])
    assert reduced.sci.dtype == np.float32 and reduced.err.dtype == np.float32
    np.testing.assert_allclose(reduced.sci, 95.0)
    np.testing.assert_allclose(reduced.err, np.sqrt((5.0 / 2.0) ** 2 + 100 / 2.0), rtol=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": ["bias", "debias"]}, r"unknown reduction steps \['debias'\]"),
    ({"steps": ["bias", "bias"]}, "listed twice"),
    ({"gain": 0}, "gain must be positive"),
    ({"read_noise": -1}, "read_noise must be"),
    ({"bias": np.zeros((3, 3))}, r"bias has shape \(3, 3\)"),
    ({"dark_rate": np.zeros((8, 8))}, "exposure time"),
])
def test_reduce_input_checks(kwargs, match):
    args = {"gain": 1.0, "read_noise": 5.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        reduce_frame(np.zeros((8, 8), np.float32), **args)


# -- cosmic rays ----------------------------------------------------------------------------

def _cosmic_scene(seed, shape=(512, 512)):
    rng = np.random.default_rng(seed)
    image, centres = star_field(shape, rng, n_stars=150, sky=300.0, peak_max=50000.0)
    hits_image, hit_mask, hits = cosmic_rays(shape, rng, n_hits=400)
    electrons = rng.poisson(image * GAIN) + rng.normal(0, READ_NOISE, shape)
    data = (electrons / GAIN + hits_image).astype(np.float32)
    variance = ((np.maximum(data, 0) * GAIN + READ_NOISE**2) / GAIN**2).astype(np.float32)
    return data, variance, hit_mask, hits, centres


@pytest.mark.parametrize("seed", [31, 32])
def test_cosmic_rays_recovered_without_star_cores(seed):
    data, variance, hit_mask, hits, centres = _cosmic_scene(seed)
    before = data.copy()
    flagged = mask_cosmics(data, gain=GAIN, read_noise=READ_NOISE, variance=variance)
    np.testing.assert_array_equal(data, before)
    recovered = np.count_nonzero(flagged & hit_mask) / np.count_nonzero(hit_mask)
    assert recovered > 0.9
    # Pixels next to a hit share its charge in real detectors and are flagged on purpose;
    # false pixels are those flagged away from every hit.
    near_hit = ndimage.binary_dilation(hit_mask, np.ones((3, 3), bool))
    false_fraction = np.count_nonzero(flagged & ~near_hit) / np.count_nonzero(~near_hit)
    assert false_fraction < 0.01
    # As the simulated-night acceptance counts them: of the flagged pixels (0.01 % here;
    # 1.4 % before the growth limit, from hits on stars).
    assert np.count_nonzero(flagged & ~near_hit) < 0.01 * np.count_nonzero(flagged)
    assert np.mean([flagged[h[:, 0], h[:, 1]].any() for h in hits]) > 0.97
    cores = 0
    for x, y in centres:
        xi, yi = int(round(x)), int(round(y))
        if hit_mask[yi - 4:yi + 5, xi - 4:xi + 5].any():
            continue  # a hit on the star: flagging near the core is right there
        cores += flagged[yi - 1:yi + 2, xi - 1:xi + 2].any()
    assert cores == 0


@pytest.mark.parametrize("candidate_sigma", [5.0, None])
def test_star_guard_unflags_star_cores(candidate_sigma):
    # An undersampled, very bright star is what fools L.A.Cosmic; with a permissive
    # objlim astroscrappy alone flags its core, the guard takes it back. Its core is sharp
    # enough to be a candidate, so windows or whole frame, the result is the same.
    rng = np.random.default_rng(33)
    image, _ = star_field((64, 64), rng, n_stars=0, sky=300.0)
    from calibration_synth import moffat
    image += moffat((64, 64), 32.3, 31.8, 3e6, 2.0, 4.0)
    data = ((rng.poisson(image * GAIN) + rng.normal(0, READ_NOISE, image.shape)) / GAIN).astype(np.float32)
    loose = CosmicRayDetector(objlim=0.5, sigclip=4.5, star_ratio=None, candidate_sigma=candidate_sigma)
    assert loose(data, gain=GAIN, read_noise=READ_NOISE)[30:34, 30:34].any()
    guarded = CosmicRayDetector(objlim=0.5, sigclip=4.5, candidate_sigma=candidate_sigma)
    assert not guarded(data, gain=GAIN, read_noise=READ_NOISE)[30:34, 30:34].any()


def _sparse_scene(seed, shape=(768, 768), n_stars=170, n_hits=60):
    """A frame at a normal cosmic-ray rate (~2.5e-4 of the pixels hit), where the
    detector runs astroscrappy on windows around candidates only."""
    rng = np.random.default_rng(seed)
    image, centres = star_field(shape, rng, n_stars=n_stars, sky=300.0, peak_max=50000.0)
    hits_image, hit_mask, hits = cosmic_rays(shape, rng, n_hits=n_hits)
    electrons = rng.poisson(image * GAIN) + rng.normal(0, READ_NOISE, shape)
    data = (electrons / GAIN + hits_image).astype(np.float32)
    variance = ((np.maximum(data, 0) * GAIN + READ_NOISE**2) / GAIN**2).astype(np.float32)
    return data, variance, hit_mask, hits


@pytest.mark.parametrize("scene", ["sparse", "dense"])
def test_candidate_windows_give_the_whole_frame_mask(scene):
    # The windows around candidates hold every pixel astroscrappy flags in the whole frame.
    if scene == "sparse":
        data, variance, hit_mask, hits = _sparse_scene(36)
        windowed = CosmicRayDetector()
    else:  # 400 hits on 512x512: by default the whole frame runs; force the windows
        data, variance, hit_mask, hits, _ = _cosmic_scene(31)
        windowed = CosmicRayDetector(max_tile_fraction=np.inf)
    whole = CosmicRayDetector(max_tile_fraction=0)  # the whole frame, the same growth limit
    unlimited = CosmicRayDetector(candidate_sigma=None)  # astroscrappy's mask as it is
    near_hit = ndimage.binary_dilation(hit_mask, np.ones((3, 3), bool))
    for var in (variance, None):
        got = windowed(data, gain=GAIN, read_noise=READ_NOISE, variance=var)
        np.testing.assert_array_equal(got, whole(data, gain=GAIN, read_noise=READ_NOISE, variance=var))
        # The growth limit only takes away, and only pixels that are not hit.
        raw = unlimited(data, gain=GAIN, read_noise=READ_NOISE, variance=var)
        assert not (got & ~raw).any()
        np.testing.assert_array_equal(got & hit_mask, raw & hit_mask)
        assert np.count_nonzero(got & ~near_hit) <= np.count_nonzero(raw & ~near_hit)
    assert np.count_nonzero(got & hit_mask) / np.count_nonzero(hit_mask) > 0.95
    assert np.mean([got[h[:, 0], h[:, 1]].any() for h in hits]) > 0.97
    assert np.count_nonzero(got & ~near_hit) <= 0.002 * np.count_nonzero(got)


def test_hits_on_the_frame_edge_and_nan_pixels():
    rng = np.random.default_rng(37)
    shape = (200, 240)
    data = ((rng.poisson(np.full(shape, 300.0 * GAIN)) + rng.normal(0, READ_NOISE, shape)) / GAIN).astype(np.float32)
    edge = [(0, 50), (120, 0), (199, 100), (60, 239), (1, 1), (198, 120)]
    for y, x in edge:
        data[y, x] += 3000.0
    data[100, 100:103] = np.nan
    data[150, 150] += 3000.0
    for detector in (CosmicRayDetector(), CosmicRayDetector(candidate_sigma=None)):
        flagged = detector(data, gain=GAIN, read_noise=READ_NOISE)
        assert all(flagged[y, x] for y, x in edge) and flagged[150, 150]
        assert not flagged[100, 100:103].any()
        assert np.count_nonzero(flagged) <= 4 * (len(edge) + 1)


def test_cosmic_rays_in_reduce_frame(detector, masters):
    rng = np.random.default_rng(34)
    hits_image, hit_mask, _ = cosmic_rays(SHAPE, rng, n_hits=40)
    raw = expose(detector, np.full(SHAPE, 300.0), EXPTIME, rng) + hits_image.astype(np.float32)
    reduced = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, exptime=EXPTIME, **masters)
    flagged = (reduced.mask & MASK_COSMIC) != 0
    assert np.count_nonzero(flagged & hit_mask) / np.count_nonzero(hit_mask) > 0.9
    assert reduced.stats["n_cosmic"] == np.count_nonzero(flagged)
    without = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, exptime=EXPTIME, steps=["bias", "dark", "flat"],
                           **masters)
    assert not (without.mask & MASK_COSMIC).any()


# -- products -------------------------------------------------------------------------------

def test_reduced_product_round_trip(tmp_path, detector, masters, scene):
    rng = np.random.default_rng(35)
    raw = expose(detector, scene, EXPTIME, rng)
    reduced = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, exptime=EXPTIME, bias=masters["bias"],
                           dark_rate=masters["dark_rate"], steps=["bias", "dark", "flat"])
    header = fits.Header({"OBJECT": "M 67", "EXPTIME": EXPTIME, "NAXIS1": 999})
    path = write_reduced(tmp_path / "frame.fits", reduced, header=header, inputs=["raw/frame_0001.fits"])
    sci, err, mask, hdr = read_product(path)
    np.testing.assert_array_equal(sci, reduced.sci)
    np.testing.assert_array_equal(err, reduced.err)
    np.testing.assert_array_equal(mask, reduced.mask)
    assert hdr["OBJECT"] == "M 67" and hdr["PRODTYPE"] == "calibrated"
    assert hdr["STEPS"] == "bias,dark" and hdr["MISSING"] == "flat" and hdr["INPUT1"] == "raw/frame_0001.fits"
    assert "OBSDBVER" in hdr and "NAXIS1" not in hdr
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "MASK"]
        assert hdul["MASK"].header["MASKB4"] == "cosmic ray"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.fits"]


def test_failed_write_leaves_no_file(tmp_path):
    header = fits.Header()
    header.append(fits.Card.fromstring("BROKEN  = 'unterminated string"))
    target = tmp_path / "out.fits"
    with pytest.raises(fits.VerifyError):
        write_product(target, np.zeros((4, 4)), header=header)
    assert list(tmp_path.iterdir()) == []
    # A failed rewrite leaves the previous product whole.
    write_product(target, np.ones((4, 4)), np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(fits.VerifyError):
        write_product(target, np.zeros((4, 4)), header=header)
    assert [p.name for p in tmp_path.iterdir()] == ["out.fits"]
    sci, _, _, _ = read_product(target)
    assert np.all(sci == 1)


def test_write_product_checks(tmp_path):
    with pytest.raises(ValueError, match=r"ERR has shape \(3, 3\), SCI \(4, 4\)"):
        write_product(tmp_path / "x.fits", np.zeros((4, 4)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2-D image"):
        write_product(tmp_path / "x.fits", np.zeros(4))
    fits.PrimaryHDU(np.zeros((2, 2))).writeto(tmp_path / "plain.fits")
    with pytest.raises(ValueError, match="not an obsdb product"):
        read_product(tmp_path / "plain.fits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.fits"]


def test_mask_bits_are_documented():
    assert (MASK_BAD, MASK_SATURATED, MASK_COSMIC) == (1, 2, 4)
    assert badpixels.NO_DATA == 8
