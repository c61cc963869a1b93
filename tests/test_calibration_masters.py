"""Master bias, dark, flat and the bad pixels found in them (obsdb.calibration.masters)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from calibration_synth import GAIN, READ_NOISE, SATURATION, expose, make_detector

from obsdb.calibration import badpixels
from obsdb.calibration.masters import MasterFrame, make_master_bias, make_master_dark, make_master_flat
from obsdb.calibration.products import read_product, write_master

SHAPE = (96, 128)


@pytest.fixture(scope="module")
def detector():
    return make_detector(SHAPE, seed=11)


@pytest.fixture(scope="module")
def master_bias(detector):
    rng = np.random.default_rng(12)
    return make_master_bias([expose(detector, 0, 0, rng) for _ in range(15)])


@pytest.fixture(scope="module")
def dark_masters(detector, master_bias):
    rng = np.random.default_rng(13)
    return make_master_dark([expose(detector, 0, 600.0, rng) for _ in range(15)], master_bias, 600.0)


def test_master_bias_recovers_the_bias_pattern(detector, master_bias):
    residual = master_bias.data - detector.bias
    assert abs(np.median(residual)) < 0.5
    # The column pattern (3 ADU sine) is recovered to well within 0.5 ADU.
    assert np.abs(residual.mean(axis=0)).max() < 0.5
    # Per pixel, the residual is the propagated error: chi ~ 1.
    assert np.std(residual / master_bias.error) == pytest.approx(1.0, abs=0.1)
    assert master_bias.stats["n_inputs"] == 15
    assert master_bias.stats["read_noise_adu"] == pytest.approx(READ_NOISE / GAIN, rel=0.05)
    assert master_bias.data.dtype == np.float32 and master_bias.mask.dtype == np.uint8


def test_master_bias_error_from_the_noise_model(detector):
    rng = np.random.default_rng(14)
    master = make_master_bias([expose(detector, 0, 0, rng) for _ in range(4)], gain=GAIN, read_noise=READ_NOISE)
    assert np.median(master.error) == pytest.approx(READ_NOISE / GAIN / 2, rel=1e-5)


def test_master_dark_recovers_the_dark_rate(detector, dark_masters):
    dark, rate = dark_masters
    assert dark.kind == "dark" and rate.kind == "dark_rate"
    assert dark.stats["exptime"] == 600.0
    np.testing.assert_allclose(rate.data, dark.data / 600.0, rtol=1e-6)
    normal = ~detector.hot
    # The typical rate (0.02 ADU/s, 12 ADU in 600 s) within 5 %.
    assert np.mean(rate.data[normal]) == pytest.approx(np.mean(detector.dark_rate[normal]), rel=0.05)
    # Hot pixels are bright enough to be recovered one by one within 5 %.
    np.testing.assert_allclose(rate.data[detector.hot], detector.dark_rate[detector.hot], rtol=0.05)
    chi = (rate.data - detector.dark_rate) / rate.error
    assert np.std(chi[normal]) == pytest.approx(1.0, abs=0.1)


def test_hot_pixels_flagged(detector, dark_masters):
    _, rate = dark_masters
    hot = (rate.mask & badpixels.HOT) != 0
    assert hot[detector.hot].all()
    assert np.count_nonzero(hot & ~detector.hot) <= 2
    assert rate.stats["n_hot"] == np.count_nonzero(hot)


def test_master_flat_recovers_the_flat(detector, master_bias, dark_masters):
    _, rate = dark_masters
    rng = np.random.default_rng(15)
    flats = [expose(detector, level, 3.0, rng) for level in (18000, 22000, 26000, 20000, 24000, 21000, 19000)]
    before = [f.copy() for f in flats]
    flat = make_master_flat(flats, master_bias, rate, 3.0, gain=GAIN, read_noise=READ_NOISE)
    for f, b in zip(flats, before):
        np.testing.assert_array_equal(f, b)  # inputs untouched
    good = flat.mask == 0
    assert np.median(flat.data[good]) == pytest.approx(1.0, abs=1e-6)
    truth = detector.flat / np.median(detector.flat[good])
    residual = flat.data[good] / truth[good] - 1
    assert np.std(residual) < 0.005
    chi = (flat.data - truth)[good] / flat.error[good]
    assert np.std(chi) == pytest.approx(1.0, abs=0.1)
    assert flat.stats["rejected"] == [] and flat.stats["n_inputs"] == 7
    # Without the noise model the error is the scatter of 7 values: right on average,
    # but too noisy per pixel for chi (a t distribution with 6 degrees of freedom).
    scatter = make_master_flat(flats, master_bias, rate, 3.0)
    rms_error = np.sqrt(np.mean(scatter.error[good] ** 2))
    assert rms_error == pytest.approx(np.std((scatter.data - truth)[good]), rel=0.1)


def test_dead_pixels_flagged(detector, master_bias):
    rng = np.random.default_rng(16)
    flat = make_master_flat([expose(detector, 25000, 1.0, rng) for _ in range(5)], master_bias, None, 1.0)
    low = (flat.mask & badpixels.LOW_RESPONSE) != 0
    assert low[detector.dead].all()
    assert np.count_nonzero(low & ~detector.dead) == 0
    assert flat.stats["n_low_response"] == detector.dead.sum()


def test_flats_out_of_level_range_are_rejected(detector, master_bias):
    rng = np.random.default_rng(17)
    flats = [expose(detector, 20000, 2.0, rng) for _ in range(4)]
    flats.insert(1, expose(detector, 200, 2.0, rng))          # twilight too dark
    flats.append(expose(detector, 90000, 2.0, rng))           # saturated
    flats.append(expose(detector, 45000, 2.0, rng))           # above max_level
    flat = make_master_flat(flats, master_bias, None, 2.0, min_level=1000, max_level=40000,
                            saturation=SATURATION)
    reasons = {r["index"]: r["reason"] for r in flat.stats["rejected"]}
    assert sorted(reasons) == [1, 5, 6]
    assert reasons[1].startswith("too faint")
    assert reasons[5].startswith("saturated")
    assert reasons[6].startswith("too bright")
    assert flat.stats["n_inputs"] == 4 and len(flat.stats["levels"]) == 7
    with pytest.raises(ValueError, match="every flat was rejected: #0 too faint"):
        make_master_flat(flats[1:2], master_bias, None, 2.0)
    # Without max_level, 80 % of the saturation level is the limit.
    bright = [expose(detector, 50000, 2.0, rng), flats[0], flats[2]]
    flat = make_master_flat(bright, master_bias, None, 2.0, saturation=SATURATION)
    assert [r["index"] for r in flat.stats["rejected"]] == [0]
    assert flat.stats["rejected"][0]["reason"].endswith("> max_level 48000")


def test_unstable_pixels_flagged(detector):
    rng = np.random.default_rng(18)
    frames = [expose(detector, 0, 0, rng) for _ in range(12)]
    # A flickering pixel: random telegraph noise of +-40 ADU between frames.
    for f in frames:
        f[20, 30] += rng.choice([-40.0, 40.0])
    master = make_master_bias(frames)
    unstable = (master.mask & badpixels.UNSTABLE) != 0
    assert unstable[20, 30]
    assert np.count_nonzero(unstable) == 1


def test_masters_from_fits_with_overscan_and_trim(tmp_path, detector):
    rng = np.random.default_rng(19)
    paths = []
    for i in range(5):
        frame = expose(detector, 0, 0, rng)
        raw = np.hstack([frame, 1000 + rng.normal(0, READ_NOISE / GAIN, (SHAPE[0], 16))]).astype(np.float32)
        paths.append(tmp_path / f"bias{i}.fits")
        fits.PrimaryHDU(raw).writeto(paths[-1])
    master = make_master_bias(paths, overscan=f"[{SHAPE[1] + 3}:{SHAPE[1] + 16},1:{SHAPE[0]}]",
                              trim=f"[1:{SHAPE[1]},1:{SHAPE[0]}]", tmpdir=tmp_path)
    assert master.data.shape == SHAPE
    # Overscan at 1000 ADU removed: what is left is the bias structure above 1000.
    assert np.median(master.data - (detector.bias - 1000)) == pytest.approx(0, abs=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"bias{i}.fits" for i in range(5)]


def test_master_product_round_trip(tmp_path, master_bias):
    path = write_master(tmp_path / "bias.fits", master_bias, inputs=["a.fits", "b.fits"])
    data, error, mask, header = read_product(path)
    np.testing.assert_array_equal(data, master_bias.data)
    np.testing.assert_array_equal(error, master_bias.error)
    np.testing.assert_array_equal(mask, master_bias.mask)
    assert header["PRODTYPE"] == "bias" and header["NINPUTS"] == 2 and header["INPUT2"] == "b.fits"
    assert header["N_INPUTS"] == 15


@pytest.mark.parametrize(("call", "match"), [
    (lambda: make_master_bias([]), "no frames given"),
    (lambda: make_master_bias([np.zeros((4, 4))], gain=1.0), "both gain and read_noise"),
    (lambda: make_master_dark([np.zeros((4, 4))] * 2, None, [10.0, 20.0]), "different exposure times"),
    (lambda: make_master_dark([np.zeros((4, 4))] * 2, None, [10.0, 10.0, 10.0]), "3 exposure times for 2 darks"),
    (lambda: make_master_dark([np.zeros((4, 4))], np.zeros((3, 3)), 10.0), r"master bias has shape \(3, 3\)"),
    (lambda: make_master_dark([np.zeros((4, 4))], None, 0.0), "must be positive"),
    (lambda: make_master_flat([np.ones((4, 4))], None, None, [1.0, 2.0]), "2 exposure times for 1 flats"),
    (lambda: make_master_flat([np.ones((4, 4))], np.zeros((3, 3)), None, 1.0), "master bias has shape"),
    (lambda: make_master_flat([np.ones((4, 4))], None, None, 1.0, norm_region=0), "norm_region"),
])
def test_input_checks(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_master_frame_is_plain_data():
    master = MasterFrame("bias", np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    assert master.stats == {}
    assert badpixels.describe_flags(badpixels.HOT | badpixels.UNSTABLE) == ["hot", "unstable"]
