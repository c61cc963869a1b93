"""Sigma-clipped, memory-bounded combination (obsdb.calibration.combine)."""

from __future__ import annotations

import tracemalloc
from functools import partial

import ccdproc
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.stats import mad_std

from obsdb.calibration.combine import FrameStack, combine_frames, load_frame


def _noise_frames(n, shape=(48, 64), sigma=10.0, level=1000.0, seed=0):
    rng = np.random.default_rng(seed)
    return [(level + rng.normal(0, sigma, shape)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize(("center", "deviation", "cenfunc", "devfunc"), [
    ("mean", "std", np.ma.mean, np.ma.std),          # ccdproc's defaults
    ("median", "std", np.ma.median, np.ma.std),
    ("median", "mad_std", "median", mad_std),
])
def test_matches_ccdproc_sigma_clipped_average(center, deviation, cenfunc, devfunc):
    frames = _noise_frames(9, seed=1)
    frames[2][5, 5] = 5000.0
    frames[3][7, 9] = -300.0
    frames[4][10, :] = 2000.0  # a bad row in one frame
    expected = ccdproc.combine([CCDData(f, unit="adu") for f in frames], method="average", sigma_clip=True,
                               sigma_clip_func=cenfunc, sigma_clip_dev_func=devfunc)
    # ccdproc clips once (astropy sigma_clip with maxiters=1)
    result = combine_frames(frames, center=center, deviation=deviation, maxiters=1)
    np.testing.assert_allclose(result.data, expected.data, rtol=0, atol=1e-3)
    # ccdproc's uncertainty is the ddof=0 std of the kept values over sqrt(n).
    n = result.n_used.astype(float)
    np.testing.assert_allclose(result.error * np.sqrt((n - 1) / n), expected.uncertainty.array, rtol=1e-4)
    # With 9 frames a single outlier is at most (n-1)/sqrt(n) = 2.7 standard deviations
    # from the mean it inflates, so a mean-centred 3-sigma clip can never drop it; about
    # the median it is 3.2 and goes.
    assert result.n_used[10, 3] == (9 if center == "mean" else 8)


def test_default_combine_agrees_with_ccdproc_on_clean_data():
    frames = _noise_frames(12, seed=2)
    expected = ccdproc.combine([CCDData(f, unit="adu") for f in frames], method="average", sigma_clip=True)
    result = combine_frames(frames)
    # Iterating and a median centre change which rare (3-sigma) values are clipped: at a
    # few pixels by about one error of the mean, on average by almost nothing.
    diff = result.data - expected.data
    assert np.abs(diff).max() < 2.0 * np.median(result.error)
    assert np.abs(diff).mean() < 0.02 * np.median(result.error)


def test_clipping_rejects_injected_outliers():
    rng = np.random.default_rng(3)
    truth = 1000.0
    frames = _noise_frames(12, shape=(64, 64), seed=3)
    hit_pixels = rng.choice(64 * 64, 300, replace=False)
    hit_frames = rng.integers(0, 12, 300)
    for p, f in zip(hit_pixels, hit_frames):
        frames[f].flat[p] += rng.uniform(500, 20000) * rng.choice([-1, 1]) if p % 2 else rng.uniform(500, 20000)
    result = combine_frames(frames)
    hit = np.zeros(64 * 64, bool)
    hit[hit_pixels] = True
    hit = hit.reshape(64, 64)
    # Every outlier is gone: hit pixels look like clean ones.
    assert np.all(result.n_used[hit] <= 11)
    assert np.all(np.abs(result.data[hit] - truth) < 5 * result.error[hit])
    plain = np.mean(frames, axis=0)
    assert np.abs(plain[hit] - truth).min() > 30  # the unclipped mean would be far off


def test_error_matches_scatter_of_repeated_combines():
    sigma, n = 10.0, 10
    repeats = [combine_frames(_noise_frames(n, shape=(40, 40), sigma=sigma, seed=100 + k)) for k in range(40)]
    data = np.stack([r.data for r in repeats])
    error = np.stack([r.error for r in repeats])
    measured = data.std(axis=0, ddof=1)  # scatter of the same pixel over repeats
    ratio = np.sqrt(np.mean(error**2)) / np.sqrt(np.mean(measured**2))
    assert ratio == pytest.approx(1.0, abs=0.04)
    # The noise-model error (read noise only, bias-free frames at 0) says the same.
    frames = [f - 1000.0 for f in _noise_frames(n, shape=(40, 40), sigma=sigma, seed=7)]
    modelled = combine_frames(frames, gain=2.0, read_noise=sigma * 2.0)
    assert np.median(modelled.error) == pytest.approx(sigma / np.sqrt(n), rel=0.02)


def test_paths_loaders_and_tiles_give_the_same_answer(tmp_path):
    frames = _noise_frames(7, shape=(50, 30), seed=4)
    frames[1][3, 4] = 9000.0
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"f{i}.fits")
        fits.PrimaryHDU(frame).writeto(paths[-1])
    from_arrays = combine_frames(frames)
    # A tiny memory limit forces tiles of one or two rows.
    from_paths = combine_frames(paths, memory_limit=7 * 30 * 48, tmpdir=tmp_path)
    from_loaders = combine_frames([partial(np.array, f) for f in frames], memory_limit=7 * 30 * 200)
    for other in (from_paths, from_loaders):
        np.testing.assert_array_equal(other.data, from_arrays.data)
        np.testing.assert_array_equal(other.n_used, from_arrays.n_used)
        np.testing.assert_allclose(other.error, from_arrays.error, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".fits")] == []  # stack file gone


def test_memory_stays_bounded_with_many_frames():
    shape, n = (256, 256), 24
    frame_bytes = shape[0] * shape[1] * 4
    loaders = [partial(lambda s: (1000 + np.random.default_rng(s).normal(0, 5, shape)).astype(np.float32), s)
               for s in range(n)]
    tracemalloc.start()
    try:
        result = combine_frames(loaders, memory_limit=frame_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.data.shape == shape
    # Holding all frames would take 24 frames; the bound is a few frames (one loaded frame
    # and its scaled copy, one tile's working set, the four outputs).
    assert peak < 8 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames"


def test_frame_stack_tiles_round_trip(tmp_path):
    frames = _noise_frames(3, shape=(10, 7), seed=5)
    with FrameStack((10, 7), 4, memory_limit=4 * 7 * 24 * 3, tmpdir=tmp_path) as stack:
        assert stack.tile_rows == 3
        for f in frames:
            stack.append(f, scale=2.0)
        blocks = list(stack.tiles())
    assert [b.shape for _, b in blocks] == [(3, 3, 7)] * 3 + [(3, 1, 7)]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks], axis=1), 2 * np.stack(frames))


def test_scale_and_masks():
    rng = np.random.default_rng(6)
    flat = rng.uniform(0.9, 1.1, (32, 32))
    levels = [5000.0, 10000.0, 20000.0, 15000.0, 8000.0]
    frames = [(level * flat * rng.normal(1, 0.002, flat.shape)).astype(np.float32) for level in levels]
    masks = [np.zeros(flat.shape, bool) for _ in frames]
    masks[0][0, 0] = True
    for m in masks:
        m[1, 1] = True
    result = combine_frames(frames, scale=lambda a: 1 / np.median(a), masks=masks)
    np.testing.assert_allclose(result.scales, [1 / np.median(f) for f in frames])
    good = np.isfinite(result.data)
    ratio = result.data[good] / flat[good]
    assert np.std(ratio / np.median(ratio)) < 0.002
    assert result.n_used[0, 0] == 4 and result.n_used[1, 1] == 0
    assert np.isnan(result.data[1, 1]) and np.isnan(result.error[1, 1])


@pytest.mark.parametrize(("frames", "kwargs", "match"), [
    ([], {}, "no frames"),
    ([np.zeros((4, 4)), np.zeros((4, 5))], {}, r"frame 1 has shape \(4, 5\)"),
    ([np.zeros((4, 4))] * 2, {"masks": [None]}, "got 1 masks for 2 frames"),
    ([np.zeros((4, 4))] * 2, {"scale": [1.0]}, "got 1 scales for 2 frames"),
    ([np.zeros((4, 4, 2))], {}, "not a 2-D image"),
    ([np.zeros((4, 4))], {"center": "mode"}, "center must be"),
    ([np.zeros((4, 4))], {"deviation": "iqr"}, "deviation must be"),
    ([np.zeros((4, 4))], {"gain": 1.0}, "both gain and read_noise"),
    ([np.zeros((4, 4))], {"scale": lambda a: np.nan}, "scale of frame 0 is not finite"),
])
def test_input_checks(frames, kwargs, match):
    with pytest.raises(ValueError, match=match):
        combine_frames(frames, **kwargs)


def test_loader_shape_mismatch_and_bad_source(tmp_path):
    with pytest.raises(ValueError, match=r"frame 1 has shape \(3, 3\), expected \(4, 4\)"):
        combine_frames([lambda: np.zeros((4, 4)), lambda: np.zeros((3, 3))])
    with pytest.raises(TypeError, match="cannot load a frame from int"):
        load_frame(3)
    empty = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]).writeto(empty)
    with pytest.raises(ValueError, match="no 2-D image"):
        load_frame(empty)
