"""Acceptance of the calibration pipeline, end to end: real ``obsdb`` subprocesses on a
real PostgreSQL, checked against an independent computation (real night) and against the
simulator's truth (simulated night).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy import ndimage
from sqlalchemy import select, text

from obsdb.calibration.products import read_product
from obsdb.models import Frame, Master, Reduction
from obsdb.simulate import SimulationConfig, Truth, camera, simulate, streams

from conftest import run_obsdb

pytestmark = pytest.mark.slow


def _robust_std(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float).ravel()
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _masters_csv(env) -> list[dict[str, str]]:
    out = run_obsdb("masters", "--format", "csv", env=env, check=True).stdout
    return list(csv.DictReader(io.StringIO(out)))


# -- 1. the real night ---------------------------------------------------------------------


def _raw(path: Path) -> np.ndarray:
    # astropy applies BZERO = 32768 of the 16-bit files.
    return fits.getdata(path).astype(np.float64)


def _clipped_mean(stack: np.ndarray) -> np.ndarray:
    # Not a median: with 7 integer frames the median of the biases sits 1.1 ADU from their
    # mean on a typical pixel (5 ADU at the 99th percentile), more than the 1 ADU asked.
    mean, _, _ = sigma_clipped_stats(stack, axis=0, sigma=3.0, maxiters=5)
    return np.asarray(mean, dtype=np.float64)


def test_real_night_builds_one_master_each_and_matches_an_independent_computation(ngc520_copy, cli_env, sessions):
    run_obsdb("ingest", ngc520_copy, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True)

    listed = _masters_csv(cli_env)
    summary = sorted((m["kind"], m["filter"], float(m["exptime"]) if m["exptime"] else None, m["is_bad"])
                     for m in listed)
    assert summary == [("bias", "", 0.0, "False"), ("dark", "", 300.0, "False"),
                       ("flat", "Sloan g'", None, "False")], listed
    with sessions() as session:
        masters = {m.kind: m for m in session.scalars(select(Master))}
        assert sorted(masters) == ["bias", "dark", "flat"]
        assert masters["dark"].exptime == pytest.approx(300.0)
        assert masters["flat"].filter == "Sloan g'"
        assert [masters[k].n_inputs for k in ("bias", "dark", "flat")] == [7, 7, 7]
        assert not any(m.is_bad for m in masters.values())
        lights = session.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        reductions = {r.frame_id: r for r in session.scalars(select(Reduction))}
    assert len(lights) == 7
    # Reduced, then the measure stage finds no WCS (none in the headers, FOCALLEN = 0, no
    # catalog): the lights wait for a plate solution, and say how to give one.
    assert {f.state for f in lights} == {"needs_wcs"}, [(f.path, f.state, f.state_reason) for f in lights]
    assert all("obsdb wcs attach" in f.state_reason for f in lights)
    assert sorted(reductions) == sorted(f.id for f in lights)
    for light in lights:
        red = reductions[light.id]
        assert (red.bias_id, red.dark_id, red.flat_id) == (masters["bias"].id, masters["dark"].id, masters["flat"].id)
        assert red.missing == []
        assert Path(red.path).is_file()
        with fits.open(red.path) as hdul:
            assert {"SCI", "ERR", "MASK"} <= {h.name for h in hdul}
            assert hdul["SCI"].data.dtype == np.dtype(">f4")
            assert hdul["SCI"].data.shape == (1020, 1530)

    # -- an independent computation with plain numpy, from the raw files
    biases = np.stack([_raw(p) for p in sorted(ngc520_copy.glob("calib-*-bi.fit.gz"))])
    darks = np.stack([_raw(p) for p in sorted(ngc520_copy.glob("calib-*-d.fit.gz"))])
    flat_paths = sorted(ngc520_copy.glob("flat-*-g.fit.gz"))
    flat_times = [float(fits.getheader(p)["EXPTIME"]) for p in flat_paths]
    assert len(biases) == len(darks) == len(flat_paths) == 7
    bias = _clipped_mean(biases)
    darks_minus_bias = darks - bias
    dark_rate = _clipped_mean(darks_minus_bias) / 300.0
    normalised = []
    for path, t in zip(flat_paths, flat_times):
        f = _raw(path) - bias - dark_rate * t
        normalised.append(f / np.median(f))
    flat = _clipped_mean(np.stack(normalised))
    flat /= np.median(flat)
    del biases, darks, normalised

    # a reduced light is (raw - bias - dark) / flat of these masters
    light = lights[0]
    sci, _, _, _ = read_product(reductions[light.id].path)
    expected = (_raw(Path(light.path)) - bias - dark_rate * float(light.exptime)) / flat
    light_diff = np.abs(sci - expected)[flat > 0.05]
    print(f"reduced light vs numpy: |diff| median {np.median(light_diff):.2e} ADU, max {light_diff.max():.2e} ADU")
    assert np.percentile(light_diff, 99.9) < 0.01

    # bias: within 1 ADU (median and 99th percentile of the absolute difference)
    obs_bias = read_product(masters["bias"].path)[0]
    bias_diff = np.abs(obs_bias - bias)
    print(f"bias |diff| median {np.median(bias_diff):.4f} ADU, p99 {np.percentile(bias_diff, 99):.4f} ADU")
    assert np.median(bias_diff) < 1.0
    assert np.percentile(bias_diff, 99) < 1.0

    # dark rate: within 10 %, on the median and per pixel where the dark is well exposed
    obs_rate = read_product(masters["dark"].path)[0] / 300.0
    ratio_median = float(np.median(obs_rate) / np.median(dark_rate))
    print(f"dark rate median: obsdb {np.median(obs_rate):.5f} ADU/s, numpy {np.median(dark_rate):.5f}, "
          f"ratio {ratio_median:.4f}")
    assert ratio_median == pytest.approx(1.0, abs=0.10)
    # Well exposed: the dark signal exceeds ten times the standard error of the mean of
    # the seven darks at that pixel, so the pixel's rate itself is known to 10 %.
    std_error = np.std(darks_minus_bias, axis=0, ddof=1) / np.sqrt(len(darks_minus_bias))
    well = dark_rate * 300.0 > 10.0 * std_error
    per_pixel = np.abs(obs_rate[well] / dark_rate[well] - 1.0)
    print(f"dark rate per pixel over {well.sum()} well-exposed pixels: |ratio - 1| median {np.median(per_pixel):.2e}, "
          f"p99 {np.percentile(per_pixel, 99):.2e}")
    assert well.sum() > 10_000
    assert np.median(per_pixel) < 0.10
    assert np.percentile(per_pixel, 99) < 0.10

    # flat: the ratio is flat to 0.5 % (robust std over pixels)
    obs_flat = read_product(masters["flat"].path)[0]
    flat_ratio = obs_flat / flat
    print(f"flat ratio median {np.median(flat_ratio):.5f}, robust std {_robust_std(flat_ratio):.5f}")
    assert _robust_std(flat_ratio) < 0.005


# -- 2.-6. a simulated night -----------------------------------------------------------------

SIM = SimulationConfig(size=256, n_fields=1, lights_per_field_per_filter=2, seed=7)
# Cosmic rays in the lights at 500x the default rate (about 330 hit pixels per light, 0.5 %
# of the pixels), so that the recovery fraction is measured on hundreds of hits. The
# calibrations come from the same night at the default rate: the random streams are keyed
# by purpose and frame, so both runs expose identical pixels and differ only in their
# cosmic rays, and a dark at this rate would not be a dark any observatory takes.
CR_RATE = 15.0


@dataclasses.dataclass(frozen=True)
class SimNight:
    truth: Truth  # of the lights' run; bias, dark and flats are those of both runs
    config: SimulationConfig  # the lights' run
    lights: Path  # the four lights (FIELD1, g' and r', two each)
    calibrations: Path  # 11 biases, 5 darks of 120 s and 5 of 300 s, 7 flats per filter


@pytest.fixture(scope="module")
def sim_night(tmp_path_factory: pytest.TempPathFactory) -> SimNight:
    root = tmp_path_factory.mktemp("simnight")
    cr_config = dataclasses.replace(SIM, cosmic_rate_per_cm2_s=CR_RATE)
    simulate(root / "cal", SIM)
    simulate(root / "cr", cr_config)
    cal, truth = Truth.load(root / "cal"), Truth.load(root / "cr")
    assert np.array_equal(cal.bias(), truth.bias()) and np.array_equal(cal.flat("g"), truth.flat("g"))
    lights, calibrations = root / "night" / "lights", root / "night" / "calibrations"
    lights.mkdir(parents=True)
    calibrations.mkdir(parents=True)
    for rec in truth.frames:
        source = root / ("cr" if rec.kind == "light" else "cal") / rec.file
        shutil.copy(source, (lights if rec.kind == "light" else calibrations) / source.name)
    assert len(list(lights.iterdir())) == 4 and len(list(calibrations.iterdir())) == 11 + 10 + 14
    return SimNight(truth, cr_config, lights, calibrations)


def _night_copy(sim_night: SimNight, target: Path) -> tuple[Path, Path]:
    """A writable copy of the night's two folders."""
    lights, calibrations = target / "lights", target / "calibrations"
    shutil.copytree(sim_night.lights, lights)
    shutil.copytree(sim_night.calibrations, calibrations)
    return lights, calibrations


def _state(session) -> dict:
    """Everything a run of the pipeline may change, to compare before and after."""
    return {
        "jobs": session.execute(text("SELECT id, status::text FROM procrastinate_jobs ORDER BY id")).all(),
        "masters": session.execute(select(Master.id, Master.version, Master.built_at, Master.path)
                                   .order_by(Master.id)).all(),
        "reductions": session.execute(select(Reduction.id, Reduction.frame_id, Reduction.created_at, Reduction.path)
                                      .order_by(Reduction.id)).all(),
        "frames": session.execute(select(Frame.id, Frame.state, Frame.state_reason, Frame.updated_at)
                                  .order_by(Frame.id)).all(),
    }


def _cosmic_charge(sim: SimNight, rec) -> np.ndarray:
    """Electrons each cosmic ray deposited in each pixel of a frame.

    The truth keeps only the hit mask; the charge is drawn again from the simulator's own
    stream for that frame (same seed, purpose and indices), and checked against the mask.
    """
    cfg = sim.config
    index, electrons, _ = camera.cosmic_rays(
        streams.stream(cfg.seed, streams.COSMICS, sim.truth.nights.index(rec.night), rec.index),
        (cfg.size, cfg.size), rec.exptime, cfg.cosmic_rate_per_cm2_s, cfg.detector_area_cm2)
    charge = np.zeros(cfg.size * cfg.size)
    charge[index] = electrons
    charge = charge.reshape(cfg.size, cfg.size)
    assert np.array_equal(charge > 0, sim.truth.cosmic_mask(rec)), "the simulator's cosmic-ray stream changed"
    return charge


def test_simulated_night_matches_the_truth(sim_night, cli_env, sessions):
    truth, gain = sim_night.truth, sim_night.truth.gain
    run_obsdb("ingest", sim_night.calibrations, sim_night.lights, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True)
    with sessions() as session:
        masters = {(m.kind, m.filter, m.exptime): m for m in session.scalars(select(Master))}
        rows = session.execute(select(Frame, Reduction).join(Reduction, Reduction.frame_id == Frame.id)
                               .where(Frame.imagetyp == "light").order_by(Frame.id)).all()
    assert sorted(masters) == sorted([("bias", None, 0.0), ("dark", None, 120.0), ("dark", None, 300.0),
                                      ("flat", "g'", None), ("flat", "r'", None)])
    assert len(rows) == 4 and all(f.state == "measured" and r.missing == [] for f, r in rows)
    n_bias = len(truth.select(kind="bias"))
    rn_adu = truth.read_noise_e / gain

    # -- master bias: the true bias (level, column pattern, row ramp) to within its noise
    bias_master = masters[("bias", None, 0.0)]
    obs_bias, bias_err, _, _ = read_product(bias_master.path)
    diff = obs_bias - truth.bias()
    expected_sd = np.sqrt(rn_adu**2 + 1 / 12) / np.sqrt(n_bias)  # per pixel, read noise and rounding
    print(f"bias - truth: mean {diff.mean():+.4f}, median {np.median(diff):+.4f}, robust std "
          f"{_robust_std(diff):.3f} ADU (noise model {expected_sd:.3f}); read noise "
          f"{bias_master.stats['read_noise_adu']:.3f} ADU (true {rn_adu:.3f})")
    assert abs(diff.mean()) < 0.5 and abs(np.median(diff)) < 0.5
    # the mean of 65536 pixels is known to expected_sd / 256 = 0.008 ADU
    assert abs(diff.mean()) < 10 * expected_sd / np.sqrt(diff.size)
    assert _robust_std(diff) == pytest.approx(expected_sd, rel=0.10)
    # the read noise the reductions use (from two biases, 65536 pixels: known to 0.3 %)
    assert bias_master.stats["read_noise_adu"] == pytest.approx(np.sqrt(rn_adu**2 + 1 / 12), rel=0.03)

    # -- master dark (120 s, the lights' exposure): level, and every hot pixel caught
    dark_master = masters[("dark", None, 120.0)]
    obs_dark, _, dark_mask, _ = read_product(dark_master.path)
    true_dark = truth.dark_adu(120.0)
    print(f"dark 120 s: median {np.median(obs_dark):.4f} ADU, truth {np.median(true_dark):.4f} ADU")
    # the median of 65536 pixels of 5 darks is known to ~0.005 ADU of 1.6
    assert np.median(obs_dark) == pytest.approx(np.median(true_dark), rel=0.05)
    hot = truth.dark_rate() > 5 * truth.camera["dark_current_e_per_s"]
    assert hot.sum() == truth.camera["n_hot_pixels"]
    # A hot pixel 10 noise sigmas of the master above the rest must be flagged HOT (bit 1);
    # ordinary pixels must not be (5 sigma threshold: 0.02 expected by chance).
    dark_sd = _robust_std(obs_dark - true_dark)
    clear = hot & (true_dark - np.median(true_dark) > 10 * dark_sd)
    flagged_hot = (dark_mask & 1) != 0
    print(f"hot pixels: {np.count_nonzero(flagged_hot & hot)}/{hot.sum()} flagged "
          f"({np.count_nonzero(flagged_hot & clear)}/{clear.sum()} of those > 10 sigma = {10 * dark_sd:.1f} ADU), "
          f"{np.count_nonzero(flagged_hot & ~hot)} ordinary pixels flagged")
    assert clear.sum() >= 10 and flagged_hot[clear].all()
    assert np.count_nonzero(flagged_hot & ~hot) <= 2

    # -- master flats: the true flat to within the photon noise of the flats combined
    for band in SIM.filters:
        flat_master = masters[("flat", SIM.filter_names[band], None)]
        obs_flat, _, flat_mask, _ = read_product(flat_master.path)
        ratio = (obs_flat / np.median(obs_flat)) / (truth.flat(band) / np.median(truth.flat(band)))
        inner = ratio[16:-16, 16:-16][flat_mask[16:-16, 16:-16] == 0]
        levels = np.array([r.sky_adu_per_pix for r in truth.select(kind="flat", band=band)])
        # photon noise of one normalised flat is 1/sqrt(level * gain); N of them are averaged
        expected = np.sqrt(np.mean(1.0 / (levels * gain)) / len(levels))
        blocks = ratio.reshape(SIM.size // 16, 16, SIM.size // 16, 16).mean(axis=(1, 3))
        print(f"flat {band}: master/true robust std {_robust_std(inner):.5f} (photon noise {expected:.5f}), "
              f"16x16-block rms {blocks.std():.6f} (noise {expected / 16:.6f})")
        assert _robust_std(inner) < 0.005
        assert _robust_std(inner) == pytest.approx(expected, rel=0.15)
        # no structure beyond pixel noise: 16x16-pixel block means scatter as noise / 16
        assert blocks.std() < 2 * expected / 16

    # -- calibrated lights against the noise-free sky and stars, and their cosmic rays
    recovered = total_hits = false_pixels = flagged_total = star_flags = bright_stars = 0
    for frame, reduction in rows:
        rec = truth.frame(Path(frame.path).name)
        sci, err, mask, _ = read_product(reduction.path)
        assert (reduction.bias_id, reduction.dark_id, reduction.flat_id) == (
            bias_master.id, dark_master.id, masters[("flat", frame.filter, None)].id)
        true_flat = truth.flat(rec.band)
        true_var = truth.variance_calibrated(rec)
        noise_free = truth.noise_free_image(rec)
        charge = _cosmic_charge(sim_night, rec)
        hit = charge > 0
        near_hit = ndimage.binary_dilation(hit, structure=np.ones((3, 3), dtype=bool))
        # Unmasked pixels away from the edges; cosmic rays the mask missed are the
        # detector's business (checked below), not the calibration's: left out too.
        good = (mask == 0) & ~near_hit
        good[:8] = good[-8:] = False
        good[:, :8] = good[:, -8:] = False
        pull = ((sci - noise_free) / err)[good]
        # ERR holds the masters' errors too; predict it from their ERR extensions
        _, dark_err, _, _ = read_product(dark_master.path)
        _, flat_err, _, _ = read_product(masters[("flat", frame.filter, None)].path)
        predicted = np.sqrt(true_var - 1 / 12 / true_flat**2 + (bias_err**2 + dark_err**2) / true_flat**2
                            + (noise_free * flat_err) ** 2)
        err_ratio = float(np.median((err / predicted)[good]))
        clipped_mean, _, _ = sigma_clipped_stats(pull, sigma=5.0)
        # Expected mean: ERR is computed from the noisy pixel itself, so a pixel that came
        # out high gets a larger ERR: mean pull ~ -1 / (2 gain sigma), -0.02 at this sky.
        sky_sigma = float(np.median(np.sqrt(true_var)))
        print(f"{rec.name}: (sci - truth)/ERR mean {pull.mean():+.4f} (clipped {clipped_mean:+.4f}, expected "
              f"{-1 / (2 * gain * sky_sigma):+.4f}), robust std {_robust_std(pull):.4f}, std {pull.std():.4f} "
              f"over {pull.size} px; ERR / noise model {err_ratio:.4f}")
        assert 0.9 < _robust_std(pull) < 1.15
        assert 0.9 < pull.std() < 1.1  # no tails: nothing left uncalibrated or unmasked
        assert abs(pull.mean()) < 0.05 and abs(clipped_mean) < 0.05
        assert pull.mean() == pytest.approx(-1 / (2 * gain * sky_sigma), abs=0.02)  # statistics: 0.004
        assert err_ratio == pytest.approx(1.0, abs=0.01)  # the masters add 1-2 % to ERR here

        # Cosmic rays. A hit pixel counts when its charge exceeds 5 sigma of the pixel's
        # noise (raw ADU), which every hit does on the sky (>= 400 e- against ~20 e-) but
        # not always on a bright star; pixels already flagged bad or saturated are left
        # out (the detector is told to ignore them and the mask rejects them anyway).
        detectable = (charge / gain > 5 * np.sqrt(true_var) * true_flat) & ((mask & 3) == 0)
        flagged = (mask & 4) != 0
        # False: flagged pixels neither hit nor touching a hit (a hit's neighbours share
        # its charge in a real detector and are flagged on purpose, see cosmics.py).
        false = flagged & ~near_hit
        print(f"  cosmics: {np.count_nonzero(flagged & detectable)}/{np.count_nonzero(detectable)} detectable hit "
              f"pixels flagged ({np.count_nonzero(hit)} hit); {np.count_nonzero(flagged & ~hit)} flagged neighbours; "
              f"{np.count_nonzero(false)} false of {np.count_nonzero(flagged)} flagged")
        recovered += np.count_nonzero(flagged & detectable)
        total_hits += np.count_nonzero(detectable)
        false_pixels += np.count_nonzero(false)
        flagged_total += np.count_nonzero(flagged)
        # Star cores taken for hits: flagged pixels within 2 px of a star whose noise-free
        # peak exceeds a tenth of saturation, with no hit within 2 px (a hit's neighbours are
        # flagged on purpose, on a star too).
        stars = truth.star_fluxes(rec)
        sx, sy = np.round(stars["x"]).astype(int), np.round(stars["y"]).astype(int)
        on_frame = (sx >= 0) & (sx < SIM.size) & (sy >= 0) & (sy < SIM.size)
        sx, sy = sx[on_frame], sy[on_frame]
        bright = noise_free[sy, sx] - rec.sky_adu_per_pix > truth.camera["saturation_adu"] / 10
        cores = np.zeros_like(hit)
        for x, y in zip(sx[bright], sy[bright]):
            cores[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = True
        cores &= ~ndimage.binary_dilation(hit, structure=np.ones((5, 5), dtype=bool))
        star_flags += np.count_nonzero(flagged & cores)
        bright_stars += int(bright.sum())
    print(f"cosmics, 4 lights: recovery {recovered / total_hits:.4f} of {total_hits}; false "
          f"{false_pixels / flagged_total:.4f} of {flagged_total} flagged; {star_flags} flagged pixels within "
          f"2 px of {bright_stars} stars brighter than saturation / 10")
    assert total_hits > 800
    assert recovered / total_hits > 0.90
    assert false_pixels / flagged_total < 0.01
    assert bright_stars > 0 and star_flags == 0


def _frames_json(env, *args: str) -> list[dict]:
    return json.loads(run_obsdb("frames", "--type", "light", "--format", "json", *args, env=env, check=True).stdout)


def _reductions(session) -> dict[int, Reduction]:
    return {r.frame_id: r for r in session.scalars(select(Reduction))}


def test_lights_without_calibrations_are_reduced_then_reduced_again_when_they_arrive(sim_night, cli_env, sessions):
    run_obsdb("ingest", sim_night.lights, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True)

    with sessions() as session:
        lights = session.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        before = _reductions(session)
        assert session.scalar(select(text("count(*)")).select_from(Master)) == 0
    assert len(lights) == 4 and sorted(before) == sorted(f.id for f in lights)
    for frame in lights:
        assert frame.state == "measured"  # then measured (header WCS, no catalog)
        assert frame.state_reason == "measured; reduced without bias, dark, flat"
        red = before[frame.id]
        assert red.missing == ["bias", "dark", "flat"]
        assert (red.bias_id, red.dark_id, red.flat_id) == (None, None, None)
    listed = _frames_json(cli_env)
    assert {f["state"] for f in listed} == {"measured"}
    assert {f["id"]: f["product"] for f in listed} == {i: r.path for i, r in before.items()}
    assert all(Path(f["product"]).is_file() for f in listed)
    uncalibrated = {i: float(np.median(read_product(r.path)[0])) for i, r in before.items()}
    # nothing subtracted: the bias level (1000 ADU) is still in
    assert all(v > sim_night.truth.camera["bias_level_adu"] for v in uncalibrated.values())

    run_obsdb("ingest", sim_night.calibrations, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True)
    with sessions() as session:
        masters = {(m.kind, m.filter, m.exptime): m for m in session.scalars(select(Master))}
        after = _reductions(session)
        lights = {f.id: f for f in session.scalars(select(Frame).where(Frame.imagetyp == "light"))}
        n_rows = session.scalar(text("SELECT count(*) FROM reductions"))
    assert sorted(masters) == sorted([("bias", None, 0.0), ("dark", None, 120.0), ("dark", None, 300.0),
                                      ("flat", "g'", None), ("flat", "r'", None)])
    assert n_rows == 4 and sorted(after) == sorted(before)
    for frame_id, red in after.items():
        frame = lights[frame_id]
        assert frame.state == "measured" and frame.state_reason is None
        assert red.missing == []
        assert (red.bias_id, red.dark_id, red.flat_id) == (masters[("bias", None, 0.0)].id,
                                                           masters[("dark", None, 120.0)].id,
                                                           masters[("flat", frame.filter, None)].id)
        assert red.created_at > before[frame_id].created_at
        calibrated = float(np.median(read_product(red.path)[0]))
        sky = sim_night.truth.frame(Path(frame.path).name).sky_adu_per_pix
        assert calibrated == pytest.approx(sky, rel=0.05), (calibrated, sky, uncalibrated[frame_id])
    assert {f["state"] for f in _frames_json(cli_env)} == {"measured"}


def test_marking_the_flat_bad_reduces_its_lights_again_without_it(sim_night, cli_env, sessions):
    run_obsdb("ingest", sim_night.calibrations, sim_night.lights, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True)
    with sessions() as session:
        flat_g = session.scalar(select(Master).where(Master.kind == "flat", Master.filter == "g'"))
        before = _reductions(session)
        g_lights = set(session.scalars(select(Frame.id).where(Frame.imagetyp == "light", Frame.filter == "g'")))
    assert len(g_lights) == 2 and all(before[i].flat_id == flat_g.id for i in g_lights)

    out = run_obsdb("masters", "mark-bad", str(flat_g.id), "--reason", "dust moved", env=cli_env, check=True).stdout
    assert f"master {flat_g.id} marked bad; 2 frame(s) queued" in out
    listed = {int(m["id"]): m for m in _masters_csv(cli_env)}
    assert listed[flat_g.id]["is_bad"] == "True"
    run_obsdb("process", "--no-progress", env=cli_env, check=True)

    with sessions() as session:
        after = _reductions(session)
        frames = {f.id: f for f in session.scalars(select(Frame).where(Frame.imagetyp == "light"))}
        assert session.get(Master, flat_g.id).bad_reason == "dust moved"
    assert sorted(after) == sorted(before)
    for frame_id, red in after.items():
        if frame_id in g_lights:  # no other g' flat: reduced without one
            assert red.flat_id is None and red.missing == ["flat"]
            assert (red.bias_id, red.dark_id) == (before[frame_id].bias_id, before[frame_id].dark_id)
            assert red.created_at > before[frame_id].created_at
            assert frames[frame_id].state == "measured" and frames[frame_id].state_reason == "measured; reduced without flat"
        else:  # the r' lights never used it: left alone
            assert red.flat_id == before[frame_id].flat_id and red.missing == []
            assert red.created_at == before[frame_id].created_at


def test_processing_again_with_nothing_new_does_nothing(sim_night, cli_env, sessions):
    run_obsdb("ingest", sim_night.calibrations, sim_night.lights, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True)
    with sessions() as session:
        first = _state(session)
    assert len(first["reductions"]) == 4 and len(first["masters"]) == 5
    assert {status for _, status in first["jobs"]} == {"succeeded"}

    run_obsdb("process", "--no-progress", env=cli_env, check=True)
    with sessions() as session:
        assert _state(session) == first  # no job, no master, no reduction, no frame touched

    summary = json.loads(run_obsdb("ingest", "--format", "json", sim_night.calibrations, sim_night.lights,
                                   env=cli_env, check=True).stdout)
    assert summary["failures"] == [] and not summary.get("new_by_type")
    with sessions() as session:
        assert _state(session)["jobs"] == first["jobs"]  # re-ingesting queued nothing
    run_obsdb("process", "--no-progress", env=cli_env, check=True)
    with sessions() as session:
        assert _state(session) == first


def test_a_light_that_cannot_be_read_fails_after_the_configured_attempts(sim_night, tmp_path, cli_env, sessions):
    lights, calibrations = _night_copy(sim_night, tmp_path / "night")
    config = tmp_path / "obsdb.toml"
    config.write_text("[calibration]\nmax_attempts = 2\nretry_wait_seconds = 0.5\n")
    env = {**cli_env, "OBSDB_CONFIG": str(config)}
    run_obsdb("ingest", calibrations, lights, env=env, check=True)
    # The file is replaced after ingest (a disk fault, a careless copy): same name, garbage.
    victim = lights / "FIELD1-g-0002.fits"
    victim.write_bytes(np.random.default_rng(5).integers(0, 256, victim.stat().st_size, dtype=np.uint8).tobytes())

    proc = run_obsdb("process", "--no-progress", env=env, check=True)
    with sessions() as session:
        frames = {Path(f.path).name: f for f in session.scalars(select(Frame).where(Frame.imagetyp == "light"))}
        reductions = _reductions(session)
        jobs = session.execute(text(
            "SELECT status::text, attempts FROM procrastinate_jobs WHERE task_name = 'obsdb:reduce_frame' "
            "AND (args->>'frame_id')::bigint = :id AND status = 'failed'"), {"id": frames[victim.name].id}).all()
    bad = frames.pop(victim.name)
    assert bad.state == "failed" and bad.tries == 2
    assert bad.state_reason.startswith("attempt 2/2: ") and len(bad.state_reason) > len("attempt 2/2: ") + 10
    assert bad.id not in reductions
    assert jobs == [("failed", 2)], jobs  # one job, failed for good at its second attempt
    assert {f.state for f in frames.values()} == {"measured"}
    assert all(reductions[f.id].missing == [] for f in frames.values())

    status = run_obsdb("status", env=env, check=True).stdout
    assert "failed frames: 1" in status
    line = next(line for line in status.splitlines() if f"frame {bad.id} " in line)
    assert str(victim) in line and bad.state_reason in line
    assert status == proc.stdout[-len(status):]  # `obsdb process` ends with the same summary
