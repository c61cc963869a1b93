"""Tests of the night simulator against its own noise model and truth.

Later accuracy tests of calibration, photometry and astrometry trust the simulator, so
these tests check its statistics (read noise, dark current, Poisson noise, fluxes, sky,
saturation, cosmic rays, WCS) against the truth it writes, on small real runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.utils import iers

from obsdb.simulate import SimulationConfig, Truth, psf, schedule, simulate
from obsdb.simulate.variability import delta_mag

iers.conf.auto_download = False

SMALL = SimulationConfig(
    size=256,
    lights_per_field_per_filter=3,
    n_bias=4,
    n_darks_per_exptime=2,
    n_flats_per_filter=3,
    variables_per_type=1,
    n_bright_per_field=2,
    stars_per_deg2=9000.0,
    cosmic_rate_per_cm2_s=1.0,
)

TINY = SimulationConfig(
    size=96,
    nights=2,
    lights_per_field_per_filter=1,
    n_bias=2,
    n_darks_per_exptime=1,
    n_flats_per_filter=2,
    variables_per_type=0,
    n_bright_per_field=0,
    stars_per_deg2=2000.0,
    bad_flats=True,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "night"
    summary = simulate(out, SMALL)
    return out, summary, Truth.load(out)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    a = simulate(base / "seed1", TINY)
    b = simulate(base / "seed2", dataclasses.replace(TINY, seed=2))
    return a, b


def _raw(out: Path, rec) -> np.ndarray:
    return fits.getdata(out / rec.file)


def _fits_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".fits", ".fit", ".fts"))


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filters": ("g", "i")}, "filters must be a non-empty subset"),
        ({"filters": ("g", "g")}, "must not repeat"),
        ({"size": 8}, "size must be between"),
        ({"nights": 0}, "nights must be at least 1"),
        ({"start_date": "14/10/2025"}, "start_date must be YYYY-MM-DD"),
        ({"field_names": ("A-1", "B")}, "field names must be non-empty"),
        ({"field_names": ("A",)}, "field_names must have n_fields"),
        ({"zero_point": {"g": 21.0}}, r"zero_point has no value for filter\(s\) \['r'\]"),
        ({"psf_beta": 1.0}, "psf_beta must exceed 1"),
        ({"seeing_fwhm_px": 9.0}, "seeing_fwhm_px must lie between"),
        ({"flat_exptime_range": (0.0, 10.0)}, "flat_exptime_range"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**kwargs)


def test_refuses_overlapping_fields(tmp_path):
    cfg = SimulationConfig(size=256, field_centers=((10.0, 20.0), (10.1, 20.0)))
    with pytest.raises(ValueError, match="closer than"):
        simulate(tmp_path / "overlap", cfg)
    assert not (tmp_path / "overlap" / "raw").exists()


def test_refuses_to_mix_two_runs(run):
    out, _, _ = run
    with pytest.raises(FileExistsError, match="already holds files"):
        simulate(out, SMALL)


# -- what is written --------------------------------------------------------------------


def test_layout_and_summary(run):
    out, summary, truth = run
    night = summary.nights[0]
    raw = out / "raw" / night
    files = sorted(p.name for p in raw.iterdir())
    assert summary.n_frames == {"flat": 6, "bias": 4, "light": 12, "dark": 4}
    assert len(files) == summary.n_total == len(truth.frames)
    assert "bias-0001.fits" in files and "bias-0004.fits" in files
    assert "dark-120s-0001.fits" in files and "dark-300s-0002.fits" in files
    assert "flat-g-0003.fits" in files and "flat-r-0001.fits" in files
    assert "FIELD1-g-0001.fits" in files and "FIELD2-r-0003.fits" in files
    # Nothing under truth/ may look like a frame to an ingest.
    assert _fits_files(out / "truth") == []
    assert len(_fits_files(out)) == summary.n_total
    for name in ("stars.csv", "frames.csv", "camera.json", "bias.npz", "dark_rate.npz"):
        assert (out / "truth" / name).is_file()
    for band in ("g", "r"):
        assert (out / "truth" / night / f"flat_{band}.npz").is_file()
    assert summary.bytes_written > summary.n_total * 256 * 256 * 2
    with open(out / "refcat.csv") as fh:
        header = next(csv.reader(fh))
    assert header == ["id", "ra", "dec", "g", "g_err", "r", "r_err"]


def test_headers_are_maxim_style(run):
    out, _, truth = run
    date_re = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")
    for rec in truth.frames:
        with fits.open(out / rec.file) as hdul:
            raw_header = hdul[0].header
            assert raw_header["BITPIX"] == 16 and raw_header["BZERO"] == 32768
            assert hdul[0].data.dtype == np.uint16
            h = raw_header
            assert h["IMAGETYP"] == {"bias": "Bias Frame", "dark": "Dark Frame",
                                     "flat": "Flat Field", "light": "Light Frame"}[rec.kind]
            assert date_re.match(h["DATE-OBS"]) and h["DATE-OBS"] == rec.date_obs
            assert h["EXPTIME"] == h["EXPOSURE"] == rec.exptime
            for key in ("XBINNING", "YBINNING", "CCD-TEMP", "SET-TEMP", "EGAIN", "XPIXSZ",
                        "YPIXSZ", "FOCALLEN", "APTDIA", "TELESCOP", "INSTRUME", "SWCREATE",
                        "SITELAT", "SITELONG"):
                assert key in h, key
            for key in ("SATURATE", "RDNOISE", "GAIN"):
                assert key not in h, key
            assert h["EGAIN"] == SMALL.gain_e_per_adu
            assert re.match(r"^[+-]\d\d \d\d \d\d$", h["SITELAT"])
            if rec.kind in ("bias", "dark"):
                assert "FILTER" not in h and "OBJECT" not in h and "CTYPE1" not in h
            else:
                assert h["FILTER"] == {"g": "g'", "r": "r'"}[rec.band]
            if rec.kind == "light":
                assert h["OBJECT"] == rec.field
                assert re.match(r"^\d\d \d\d \d\d\.\d$", h["OBJCTRA"])
                assert re.match(r"^[+-]\d\d \d\d \d\d$", h["OBJCTDEC"])
                assert h["CTYPE1"] == "RA---TAN" and h["CTYPE2"] == "DEC--TAN"
                assert {"CRVAL1", "CRPIX2", "CD1_1", "CD2_2", "RA", "DEC"} <= set(h)
                # AIRMASS is MaxIm's, at the exposure start; truth has mid-exposure.
                assert h["AIRMASS"] == pytest.approx(rec.airmass, abs=0.05)
                assert h["AIRMASS"] == pytest.approx(rec.airmass_header, abs=1e-5)


# -- determinism ------------------------------------------------------------------------


def test_same_seed_gives_identical_data(run, tmp_path):
    out, _, _ = run
    again = simulate(tmp_path / "again", SMALL)
    first = _fits_files(out)
    second = _fits_files(again.outdir)
    assert [p.relative_to(out) for p in first] == [p.relative_to(again.outdir) for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    for name in ("refcat.csv",):
        assert (out / name).read_bytes() == (again.outdir / name).read_bytes()
    frames = "truth/frames.csv"
    assert (out / frames).read_bytes() == (again.outdir / frames).read_bytes()


def test_different_seed_gives_different_data(tiny_runs):
    a, b = tiny_runs
    fa, fb = _fits_files(a.outdir), _fits_files(b.outdir)
    pairs = [(fits.getdata(x), fits.getdata(y)) for x, y in zip(fa, fb) if x.name == y.name]
    # Wholly saturated frames (bad_flats) are alike whatever the seed.
    differ = [not np.array_equal(x, y) for x, y in pairs if not np.all(x == 65535)]
    assert len(differ) >= 10 and all(differ)
    assert (a.outdir / "refcat.csv").read_bytes() != (b.outdir / "refcat.csv").read_bytes()


# -- camera -----------------------------------------------------------------------------


def test_bias_level_structure_and_read_noise(run):
    out, _, truth = run
    biases = truth.select(kind="bias")
    b1, b2 = (_raw(out, r).astype(float) for r in biases[:2])
    rn = np.std(b1 - b2) / np.sqrt(2.0) * truth.gain
    assert rn == pytest.approx(truth.read_noise_e, rel=0.03)
    true_bias = truth.bias()
    assert np.mean(b1) == pytest.approx(float(true_bias.mean()), abs=0.15)
    # The column pattern is in the frames: the mean of the bias frames follows it.
    stack = np.mean([_raw(out, r).astype(float) for r in biases], axis=0)
    cols_seen = stack.mean(axis=0) - stack.mean()
    cols_true = true_bias.mean(axis=0) - true_bias.mean()
    assert np.corrcoef(cols_seen, cols_true)[0, 1] > 0.95
    # The level plus half the row ramp, plus the (small) mean of the column pattern.
    assert float(true_bias.mean()) == pytest.approx(
        SMALL.bias_level_adu + SMALL.bias_row_ramp_adu / 2, abs=0.3)


def test_dark_current_and_hot_pixels(run):
    out, _, truth = run
    rate = truth.dark_rate().astype(float)
    dark = truth.select(kind="dark")[-1]
    assert dark.exptime == 300.0
    signal_e = (_raw(out, dark) - truth.bias()) * truth.gain
    clean = ~truth.cosmic_mask(dark)
    normal = clean & (rate < 5 * SMALL.dark_current_e_per_s)
    measured = signal_e[normal].mean() / dark.exptime
    # Mean of ~65k pixels: error ~ 10 e- / 256 / 300 s = 1.3e-4 e-/s.
    assert measured == pytest.approx(rate[normal].mean(), abs=6e-4)
    hot = clean & (rate > 100 * SMALL.dark_current_e_per_s)
    assert hot.sum() >= 5
    expected = rate[hot] * dark.exptime
    assert np.all(np.abs(signal_e[hot] - expected) < 6 * np.sqrt(expected + 150))


def test_flats_follow_true_flat(run):
    out, _, truth = run
    flats = truth.select(kind="flat")
    for rec in flats:
        level = np.median(truth.calibrate(_raw(out, rec), rec))
        assert level == pytest.approx(rec.sky_adu_per_pix, rel=0.005)
        assert 20000 < rec.sky_adu_per_pix < 35000
    for band in ("g", "r"):
        recs = [r for r in flats if r.band == band]
        stack = np.mean([(_raw(out, r) - truth.bias() - truth.dark_adu(r.exptime))
                         / r.sky_adu_per_pix for r in recs], axis=0)
        flat = truth.flat(band).astype(float)
        resid = stack / flat - 1.0
        # Poisson + read noise of the stack, relative: about 1/sqrt(3 * 27000 * 1.5).
        assert np.std(resid) < 0.006
        assert np.median(flat) == pytest.approx(1.0, abs=1e-6)
        n = flat.shape[0]
        corners = np.mean([flat[:8, :8].mean(), flat[-8:, -8:].mean()])
        assert corners < 0.95 * flat[n // 2 - 8:n // 2 + 8, n // 2 - 8:n // 2 + 8].mean()
    # The evening sky fades from flat to flat (so the routine lengthens the exposures).
    for band in ("g", "r"):
        rates = [r.sky_adu_per_pix / r.exptime for r in flats if r.band == band]
        assert all(a > b for a, b in zip(rates, rates[1:]))


def test_light_pixels_follow_the_noise_model(run):
    """Calibrated with the true bias, dark and flat, every clean pixel is the noise-free
    image plus noise of exactly the modelled variance."""
    out, _, truth = run
    for rec in truth.select(kind="light")[:4]:
        raw = _raw(out, rec)
        chi = (truth.calibrate(raw, rec) - truth.noise_free_image(rec)) / np.sqrt(
            truth.variance_calibrated(rec))
        ok = ~truth.cosmic_mask(rec) & (raw < 65535)
        assert abs(chi[ok].mean()) < 0.02
        assert chi[ok].std() == pytest.approx(1.0, abs=0.02)
        assert np.mean(np.abs(chi[ok]) > 5) < 1e-4


def test_sky_level_matches_truth(run):
    out, _, truth = run
    for rec in truth.select(kind="light"):
        nf = truth.noise_free_image(rec)
        empty = (nf < rec.sky_adu_per_pix + 0.2) & ~truth.cosmic_mask(rec)
        sky = np.mean(truth.calibrate(_raw(out, rec), rec)[empty])
        assert sky == pytest.approx(rec.sky_adu_per_pix, rel=0.005)
    # Brighter sky at higher airmass, for one band.
    g = truth.select(kind="light", band="g", field="FIELD1")
    x = np.array([r.airmass for r in g])
    s = np.array([r.sky_adu_per_pix for r in g]) * 10 ** (0.4 * np.array(
        [r.cloud_extinction_mag for r in g]))
    assert np.corrcoef(x, s)[0, 1] > 0.9


# -- stars ------------------------------------------------------------------------------


def _alone(rec, nf, sf, i, box, mask=None):
    """The star alone (rendered by itself), and the fraction of the light in ``box``
    (and ``mask`` within it) of the noise-free image that comes from other stars."""
    n = nf.shape[0]
    one = psf.render_stars((n, n), [sf["x"][i]], [sf["y"][i]], [sf["flux"][i]],
                           rec.seeing_fwhm_px, rec.psf_beta)
    sel = np.ones(one[box].shape, bool) if mask is None else mask
    own = one[box][sel].sum()
    others = (nf[box][sel] - rec.sky_adu_per_pix).sum() - own
    return one, others / own


def test_star_fluxes_match_catalog_and_noise_model(run):
    """Aperture sums on frames calibrated with the true bias/dark/flat agree with the
    noise-free image (chi ~ 1) and with catalog magnitude + zero point + colour term."""
    out, _, truth = run
    refcat = {int(r["id"]): r for r in csv.DictReader(open(out / "refcat.csv"))}
    chi_img, dmag, chi_cat = [], [], []
    n = truth.size
    yy, xx = np.mgrid[0:n, 0:n]
    for rec in truth.select(kind="light"):
        raw = _raw(out, rec)
        cal = truth.calibrate(raw, rec)
        nf = truth.noise_free_image(rec)
        var = truth.variance_calibrated(rec)
        crm = truth.cosmic_mask(rec)
        sf = truth.star_fluxes(rec)
        r_ap = 2.0 * rec.seeing_fwhm_px
        for i in range(sf["id"].size):
            x, y = sf["x"][i], sf["y"][i]
            if not (r_ap + 2 < x < n - r_ap - 3 and r_ap + 2 < y < n - r_ap - 3):
                continue
            x0, y0 = int(x) - 12, int(y) - 12
            sl = (slice(max(y0, 0), y0 + 26), slice(max(x0, 0), x0 + 26))
            ap = np.hypot(xx[sl] - x, yy[sl] - y) < r_ap
            if raw[sl][ap].max() == 65535 or crm[sl][ap].any():
                continue
            flux = np.sum(cal[sl][ap] - rec.sky_adu_per_pix)
            model = np.sum(nf[sl][ap] - rec.sky_adu_per_pix)
            sigma = np.sqrt(np.sum(var[sl][ap]))
            chi_img.append((flux - model) / sigma)
            if model / sigma < 20:
                continue
            # Aperture correction from the PSF alone; skip stars with neighbours' light.
            one, contamination = _alone(rec, nf, sf, i, sl, ap)
            if abs(contamination) > 2e-3:
                continue
            apcorr = np.sum(one[sl][ap]) / sf["flux"][i]
            cat = refcat[int(sf["id"][i])]
            colour = float(cat["g"]) - float(cat["r"])
            mag = (-2.5 * np.log10(flux / apcorr / rec.exptime) + rec.true_zero_point
                   + rec.colour_term * colour)
            err = np.hypot(1.0857 * sigma / flux, float(cat[f"{rec.band}_err"]))
            if truth.star(int(sf["id"][i]))["var_type"] != "constant":
                continue
            dmag.append(mag - float(cat[rec.band]))
            chi_cat.append(dmag[-1] / err)
    chi_img, dmag, chi_cat = map(np.asarray, (chi_img, dmag, chi_cat))
    assert chi_img.size > 300
    assert abs(np.mean(chi_img)) < 0.15
    assert np.std(chi_img) == pytest.approx(1.0, abs=0.12)
    assert dmag.size > 40
    assert abs(np.median(dmag)) < 0.01
    assert 0.7 < np.std(chi_cat) < 1.3


def test_bright_stars_saturate_and_faint_ones_do_not(run):
    out, _, truth = run
    full_well_adu = SMALL.full_well_e / SMALL.gain_e_per_adu
    n_sat = n_clear = 0
    for rec in truth.select(kind="light"):
        raw = _raw(out, rec)
        expected = truth.expected_raw(rec) - truth.bias()
        sf = truth.star_fluxes(rec)
        for x, y in zip(sf["x"], sf["y"]):
            ix, iy = int(round(x)), int(round(y))
            if not (3 <= ix < truth.size - 3 and 3 <= iy < truth.size - 3):
                continue
            core = (slice(iy - 2, iy + 3), slice(ix - 2, ix + 3))
            peak = expected[core].max()
            if peak > 1.3 * full_well_adu:
                assert (raw[core] == 65535).any()
                n_sat += 1
            elif peak < 0.5 * full_well_adu:
                assert not (raw[core] == 65535).any()
                n_clear += 1
    assert n_sat >= 4 and n_clear > 100
    # The bright stars of the catalog are those.
    bright = truth.stars["g"] < 10.5
    assert bright.sum() >= 2 * SMALL.n_bright_per_field


def test_cosmic_ray_masks_mark_jumps(run):
    out, _, truth = run
    hits = 0
    for rec in truth.select(kind="light") + truth.select(kind="dark"):
        mask = truth.cosmic_mask(rec)
        assert mask.sum() == rec.n_cosmic_pixels
        if not mask.any():
            continue
        raw = _raw(out, rec).astype(float)
        expected = truth.expected_raw(rec)
        sigma = np.sqrt(truth.variance_calibrated(rec)) * (
            truth.flat(rec.band) if rec.kind == "light" else 1.0)
        jump = (raw - expected) / sigma
        calm = mask & (expected < 5000) & (raw < 65535)
        assert np.all(jump[calm] > 4.0)
        hits += int(calm.sum())
        outside = ~mask & (raw < 65535)
        assert np.max(jump[outside]) < 7.0
    assert hits >= 20


# -- variability ------------------------------------------------------------------------


def test_true_mag_gives_the_variability(run):
    _, _, truth = run
    v = truth.variables()
    kinds = set(v["var_type"].tolist())
    assert kinds == {"pulsator", "eclipsing", "transit", "trend"}
    night = truth.select(kind="light")
    t0, t1 = night[0].mjd_start, night[-1].mjd_start
    for i in range(len(v)):
        sid, kind = int(v["id"][i]), v["var_type"][i]
        ref = v["g"][i]
        if kind == "pulsator":
            period = v["period"][i]
            t = v["epoch"][i] + np.linspace(0.0, period, 2001)
            m = truth.true_mag(sid, "g", t)
            assert m.shape == t.shape
            assert m.max() - m.min() == pytest.approx(v["amplitude"][i], rel=0.01)
            assert m.mean() == pytest.approx(ref, abs=0.002)
            assert m[0] == pytest.approx(ref - v["amplitude"][i] / 2, abs=1e-9)
            mr = truth.true_mag(sid, "r", t)
            assert mr.max() - mr.min() == pytest.approx(0.75 * v["amplitude"][i], rel=0.01)
        elif kind in ("eclipsing", "transit"):
            # The (primary) eclipse or transit falls inside the first night.
            assert t0 - 0.1 < v["epoch"][i] < t1 + 0.1
            centre = truth.true_mag(sid, "g", v["epoch"][i])
            assert centre == pytest.approx(ref - 2.5 * np.log10(1 - v["depth"][i]), abs=1e-9)
            out_of = truth.true_mag(sid, "g", v["epoch"][i] + 0.6 * v["duration"][i])
            assert out_of == pytest.approx(ref, abs=1e-12)
            if kind == "transit":
                assert 0.01 <= v["depth"][i] <= 0.02
                assert 1.5 / 24 <= v["duration"][i] <= 3.0 / 24
        else:
            m = truth.true_mag(sid, "g", [v["epoch"][i], v["epoch"][i] + 1.0])
            assert m[1] - m[0] == pytest.approx(v["slope"][i], abs=1e-9)
            assert 0.05 <= abs(v["slope"][i]) <= 0.2
    # Vectorised over stars too; constants stay put.
    const = truth.stars["id"][truth.stars["var_type"] == "constant"][:5]
    m = truth.true_mag(const, "r", t0)
    assert m.shape == (5,)
    np.testing.assert_array_equal(m, truth.stars["r"][truth.stars.index_of(const)])
    with pytest.raises(KeyError, match="unknown star id"):
        truth.true_mag(10**9, "g", t0)


def test_variables_are_isolated_and_unsaturated(run):
    out, _, truth = run
    v = truth.variables()
    for rec in truth.select(kind="light"):
        raw = _raw(out, rec)
        sf = truth.star_fluxes(rec)
        for sid in v["id"][v["field"] == rec.field]:
            i = int(np.flatnonzero(sf["id"] == sid)[0])
            d = np.hypot(sf["x"] - sf["x"][i], sf["y"] - sf["y"][i])
            assert np.sort(d)[1] >= SMALL.variable_isolation_px
            ix, iy = int(round(sf["x"][i])), int(round(sf["y"][i]))
            assert 10 < ix < truth.size - 10 and 10 < iy < truth.size - 10
            assert raw[iy - 3:iy + 4, ix - 3:ix + 4].max() < 50000


def test_variability_model_shapes():
    params = {k: np.array(v) for k, v in {
        "var_type": ["constant", "trend"], "period": [0.0, 0.0], "epoch": [0.0, 10.0],
        "amplitude": [0.0, 0.0], "shape": ["", ""], "rise_fraction": [0.0, 0.0],
        "depth": [0.0, 0.0], "secondary_depth": [0.0, 0.0], "duration": [0.0, 0.0],
        "slope": [0.0, 0.1], "amp_ratio_r": [1.0, 1.0]}.items()}
    out = delta_mag(params, "g", np.array([[10.0, 12.0], [10.0, 12.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.0, 0.2]])
    with pytest.raises(ValueError, match="band must be"):
        delta_mag(params, "i", 10.0)


# -- astrometry -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_header_wcs_is_off_by_the_recorded_pointing_error(run):
    out, _, truth = run
    from astropy.wcs import WCS

    for rec in truth.select(kind="light"):
        header = fits.getheader(out / rec.file)
        hw = WCS(header)
        sf = truth.star_fluxes(rec)
        mine = truth.stars.select(truth.stars.index_of(sf["id"]))
        px, py = hw.all_world2pix(mine["ra"], mine["dec"], 0)
        qx, qy = sf["x"], sf["y"]
        c = (truth.size - 1) / 2.0
        t = np.radians(rec.wcs_error_rot_deg)
        # True pixel q = c + d + R (p - c).
        ex = c + rec.wcs_error_dx_px + np.cos(t) * (px - c) - np.sin(t) * (py - c)
        ey = c + rec.wcs_error_dy_px + np.sin(t) * (px - c) + np.cos(t) * (py - c)
        assert np.max(np.hypot(ex - qx, ey - qy)) < 0.002
        shift = np.hypot(rec.wcs_error_dx_px, rec.wcs_error_dy_px)
        assert SMALL.wcs_error_px[0] <= shift <= SMALL.wcs_error_px[1]
        assert abs(rec.wcs_error_rot_deg) <= SMALL.wcs_rotation_error_deg
        # The header WCS really is wrong by that much at the centre.
        hx, hy = hw.all_world2pix(*truth.true_wcs(rec).all_pix2world(c, c, 0), 0)
        assert np.hypot(hx - c, hy - c) == pytest.approx(shift, rel=0.02)


def test_stars_sit_where_the_true_wcs_says(run):
    out, _, truth = run
    rec = truth.select(kind="light")[0]
    cal = truth.calibrate(_raw(out, rec), rec) - rec.sky_adu_per_pix
    nf = truth.noise_free_image(rec)
    sf = truth.star_fluxes(rec)
    n, checked = truth.size, 0
    for i in np.argsort(-sf["flux"]):
        x, y = sf["x"][i], sf["y"][i]
        ix, iy = int(round(x)), int(round(y))
        if not (12 < ix < n - 12 and 12 < iy < n - 12):
            continue
        box = (slice(iy - 6, iy + 7), slice(ix - 6, ix + 7))
        stamp = cal[box]
        if stamp.max() > 0.6 * SMALL.full_well_e / SMALL.gain_e_per_adu:
            continue
        if abs(_alone(rec, nf, sf, i, box)[1]) > 1e-3:
            continue
        yy, xx = np.mgrid[box]
        w = np.clip(stamp, 0, None)
        assert np.sum(w * xx) / w.sum() == pytest.approx(x, abs=0.1)
        assert np.sum(w * yy) / w.sum() == pytest.approx(y, abs=0.1)
        checked += 1
        if checked == 5:
            break
    assert checked >= 3


# -- photometric system and schedule ----------------------------------------------------


def test_zero_points_follow_extinction_and_clouds(run):
    _, _, truth = run
    zp0 = truth.camera["zero_point_airmass0"]
    for rec in truth.select(kind="light"):
        assert 1.0 <= rec.airmass < SMALL.max_airmass
        expected = zp0[rec.band] - rec.extinction_coeff * rec.airmass - rec.cloud_extinction_mag
        assert rec.true_zero_point == pytest.approx(expected, abs=1e-12)
        assert SMALL.fwhm_min_px <= rec.seeing_fwhm_px <= SMALL.fwhm_max_px
    # Every night has a cloud episode centred near one of its lights.
    assert any(r.cloud_extinction_mag > 0 for r in truth.select(kind="light"))
    assert any(r.cloud_extinction_mag == 0 for r in truth.select(kind="light"))


def test_default_night_plan():
    """The default night: >= 60 lights over >= 5 h alternating g and r, calibrations at
    the start and the end, flats between 20k and 35k ADU."""
    cfg = SimulationConfig()
    night = schedule.NightTimes.compute(cfg.start_date, cfg.site_lat_deg, cfg.site_lon_deg,
                                        cfg.site_height_m)
    fields = schedule.place_fields(cfg, night)
    windows = {f.name: schedule.observing_window(cfg, night, f) for f in fields}
    plan = schedule.plan_night(cfg, night, fields, windows, np.random.default_rng(0))
    lights = [p for p in plan if p.kind == "light"]
    assert len(lights) >= 60
    assert (lights[-1].mjd_start - lights[0].mjd_start) * 24 >= 5.0
    for f in fields:
        mine = [p for p in lights if p.field == f.name]
        assert (mine[-1].mjd_start - mine[0].mjd_start) * 24 >= 5.0
        assert [p.band for p in mine[:4]] == ["g", "r", "g", "r"]
    starts = [p.mjd_start for p in plan]
    assert starts == sorted(starts)
    assert all(a.mjd_end < b.mjd_start for a, b in zip(plan, plan[1:]))
    first_light, last_light = lights[0].mjd_start, lights[-1].mjd_start
    assert all(p.mjd_start < first_light for p in plan if p.kind == "flat")
    assert all(p.mjd_start > last_light for p in plan if p.kind == "dark")
    flats = [p for p in plan if p.kind == "flat"]
    assert len(flats) == 14 and all(20000 < p.sky_adu < 35000 for p in flats)
    assert sum(p.kind == "bias" for p in plan) == 11


def test_refcat_is_honest(run):
    out, _, truth = run
    rows = list(csv.DictReader(open(out / "refcat.csv")))
    assert len(rows) == len(truth.stars) == len(truth.refcat())
    rows.sort(key=lambda r: int(r["id"]))
    cat = {k: np.array([float(r[k]) for r in rows]) for k in ("g", "g_err", "r", "r_err")}
    order = np.argsort(truth.stars["id"])
    for band in ("g", "r"):
        pull = (cat[band] - truth.stars[band][order]) / cat[f"{band}_err"]
        assert np.std(pull) == pytest.approx(1.0, abs=0.12)
        assert abs(np.mean(pull)) < 0.15
    bright, faint = truth.stars["g"][order] < 14, truth.stars["g"][order] > 19
    assert cat["g_err"][faint].min() > cat["g_err"][bright].max()
    g = truth.stars["g"]
    assert g.min() < 10.5 and g.max() < 20.01 and g.max() > 19.5
    assert np.sum((g > 19) & (g < 20)) > 3 * np.sum((g > 15) & (g < 16))
    colour = truth.stars["g"] - truth.stars["r"]
    assert colour.min() >= -0.2 and colour.max() <= 1.5


def test_rendered_stars_conserve_flux_and_fwhm():
    # A bright star keeps its whole flux; a faint one loses only its invisible far wing.
    bright = psf.render_stars((301, 301), [150.3], [149.6], [1e8], 3.5, 3.0)
    assert bright.sum() == pytest.approx(1e8, rel=3e-4)
    faint = psf.render_stars((301, 301), [150.3], [149.6], [300.0], 3.5, 3.0)
    assert 0.994 < faint.sum() / 300.0 < 1.0
    # ...but both have the same profile where it is measurable.
    core = (slice(140, 161), slice(140, 161))
    np.testing.assert_allclose(faint[core] / 300.0, bright[core] / 1e8, rtol=1e-12, atol=1e-15)
    # The profile is half its peak at half the FWHM.
    prof = psf.render_stars((401, 401), [200.0], [200.0], [1.0], 35.0, 3.0)
    row = prof[200]
    above = np.flatnonzero(row >= 0.5 * row.max())
    assert (above[-1] - above[0] + 1) == pytest.approx(35.0, abs=1.5)


# -- nights -----------------------------------------------------------------------------


def test_multi_night_and_bad_flats(tiny_runs):
    _, b = tiny_runs
    truth = Truth.load(b.outdir)
    assert truth.nights == ["2025-10-14", "2025-10-15"]
    assert [p.name for p in b.raw_dirs] == truth.nights
    for night in truth.nights:
        assert {r.kind for r in truth.select(night=night)} == {"bias", "dark", "flat", "light"}
    f1, f2 = truth.flat("g", truth.nights[0]), truth.flat("g", truth.nights[1])
    assert 0 < np.abs(f1 - f2).max() < 0.05
    assert np.corrcoef(f1.ravel(), f2.ravel())[0, 1] > 0.9
    # bad_flats: the first flat of a night is saturated, the last one underexposed.
    flats = truth.select(kind="flat", night=truth.nights[0])
    assert np.mean(fits.getdata(b.outdir / flats[0].file) == 65535) > 0.5
    assert flats[-1].sky_adu_per_pix < 8000
    with pytest.raises(KeyError, match="ambiguous"):
        truth.frame("bias-0001.fits")
    assert truth.frame(f"raw/{truth.nights[1]}/bias-0001.fits").night == truth.nights[1]
    camera = json.loads((b.outdir / "truth/camera.json").read_text())
    assert camera["seed"] == 2 and camera["nights"] == truth.nights


def test_truth_rebuilds_exactly_the_simulated_images(tmp_path, monkeypatch):
    """Truth.noise_free_image must give bit for bit the image the camera was exposed to
    (the truth tables keep full precision); a wrapper records what the simulator used."""
    from obsdb.simulate import night, scene

    used = {}
    render = scene.noise_free_image

    def recording(rec, stars, size):
        used[rec.file] = render(rec, stars, size)
        return used[rec.file]

    monkeypatch.setattr(night.scene, "noise_free_image", recording)
    cfg = dataclasses.replace(TINY, nights=1, n_bright_per_field=1, bad_flats=False)
    summary = simulate(tmp_path / "exact", cfg)
    truth = Truth.load(summary.outdir)
    lights = [f for f in used if truth.frame(f).kind == "light"]
    assert len(lights) == summary.n_frames["light"] == 4
    for file, image in used.items():
        np.testing.assert_array_equal(truth.noise_free_image(file), image)
