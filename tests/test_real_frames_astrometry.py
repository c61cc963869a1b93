"""A real night with no WCS: seven lights of NGC 520 (14-inch telescope, SBIG ST-8, g').

The acceptance of issue "real night ends in needs_wcs": once one light carries a WCS,
the other six are solved by their star pattern. The frames are hard: a 300 s exposure
in ~10 px seeing holds only about seven stars with S/N above 10, among cosmic rays, hot
pixels and defects the dark did not remove, and the galaxy's knots; the pointing
drifts by 5-40 px and the PSF changes from frame to frame (round to elongated).

The lights are calibrated here, cheaply (median bias, dark and flat of the same
folder, a bad-pixel mask from the dark and the flat), as the products of the pipeline
are not in the repository. Then, as the measure stage does: background, detection,
PSF; frame 1 gets a plausible TAN WCS (header pointing, 0.6 arcsec/px, north up) and
frames 2-7 are aligned to its point sources. The shifts are checked against an
independent estimate: the cross-correlation of the smoothed frames. A simulated frame
of the same kind (broad faint stars among cosmic rays), with its truth, closes the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import Angle
from astropy.io import fits
from scipy import ndimage
from scipy.spatial import cKDTree

from obsdb.astrometry.align import align_to_reference
from obsdb.astrometry.errors import AstrometryError
from obsdb.astrometry.initial import wcs_from_pointing
from obsdb.photometry.background import estimate_background
from obsdb.photometry.detect import detect_stars, measure_psf
from obsdb.simulate.psf import render_stars

NGC520 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ngc520-umd-g"
PIXEL_SCALE = 0.6  # arcsec/px: any plausible scale stands in for the unknown one
BAD = 1  # mask bit of a bad pixel


def _read(name: str) -> tuple[np.ndarray, fits.Header]:
    with fits.open(NGC520 / name) as hdul:
        return hdul[0].data.astype(np.float32), hdul[0].header


def _stack(pattern: str) -> np.ndarray:
    # The median: 300 s darks collect cosmic rays that a mean would keep.
    return np.median(np.stack([_read(p.name)[0] for p in sorted(NGC520.glob(pattern))]), axis=0)


def _robust_sigma(a: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(a - np.median(a))))


@pytest.fixture(scope="module")
def night():
    """The seven calibrated lights: list of (sci, err, mask, header)."""
    if not (NGC520 / "NGC520-001-g.fit.gz").exists():
        pytest.skip(f"real data not found at {NGC520}")
    bias = _stack("calib-*-bi.fit.gz")
    dark = _stack("calib-*-d.fit.gz") - bias                     # 300 s, as the lights
    flat_raw = _stack("flat-*-g.fit.gz") - bias - dark * (10.0 / 300.0)
    flat = flat_raw / np.median(flat_raw)
    # Hot pixels (dark current far above the rest) and dead or vignetted ones.
    hot = dark - np.median(dark) > 10.0 * _robust_sigma(dark)
    dead = (flat < 0.5) | (flat > 1.5)
    bad = hot | dead
    # Read noise from the difference of two biases.
    bias1, bias2 = (_read(p.name)[0] for p in sorted(NGC520.glob("calib-*-bi.fit.gz"))[:2])
    read_noise = _robust_sigma(bias1 - bias2) / math.sqrt(2.0)
    frames = []
    for path in sorted(NGC520.glob("NGC520-00?-g.fit.gz")):
        raw, header = _read(path.name)
        sci = ((raw - bias - dark) / np.where(bad, 1.0, flat)).astype(np.float32)
        gain = float(header["EGAIN"])
        err = (np.sqrt(np.clip(sci, 0, None) / gain + read_noise**2) / np.where(bad, 1.0, flat)).astype(np.float32)
        mask = np.where(bad, BAD, 0).astype(np.uint8)
        frames.append((sci, err, mask, header))
    assert len(frames) == 7
    return frames


@pytest.fixture(scope="module")
def measured(night):
    """Per frame: (stars, psf), as the measure stage gets them."""
    out = []
    for sci, err, mask, _ in night:
        sky = estimate_background(sci, mask)
        stars = detect_stars(sci, sky, mask, threshold=3.0, min_area=5, err=err)
        out.append((stars, measure_psf(sci, stars, sky, mask, err=err)))
    return out


def _pointing_wcs(header, shape):
    ra = Angle(header["OBJCTRA"], unit="hourangle").deg
    dec = Angle(header["OBJCTDEC"], unit="deg").deg
    return wcs_from_pointing(ra, dec, PIXEL_SCALE, shape)


def _smoothed(sci, mask):
    """Sky-subtracted frame without its sharp features, for the cross-correlation."""
    sky = estimate_background(sci, mask)
    d = np.where(mask != 0, 0.0, sci - sky.sky)
    d = ndimage.gaussian_filter(ndimage.median_filter(d, 5), 3.0)
    d[:20], d[-20:], d[:, :20], d[:, -20:] = 0, 0, 0, 0
    return np.clip(d, 0.0, 200.0)


def _cross_correlation_shift(a, b):
    """(dx, dy) with frame a's pixel = frame b's pixel + (dx, dy): peak of the FFT
    cross-correlation, refined by a parabola."""
    c = np.fft.irfft2(np.conj(np.fft.rfft2(b)) * np.fft.rfft2(a), s=a.shape)
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    ny, nx = a.shape

    def vertex(m, z, p):
        return 0.5 * (m - p) / (m - 2 * z + p)

    fx = vertex(c[iy, ix - 1], c[iy, ix], c[iy, (ix + 1) % nx])
    fy = vertex(c[iy - 1, ix], c[iy, ix], c[(iy + 1) % ny, ix])
    return np.array([(ix if ix < nx // 2 else ix - nx) + fx, (iy if iy < ny // 2 else iy - ny) + fy])


def test_the_psf_of_every_frame_is_found(measured):
    fwhm = np.array([psf.fwhm for _, psf in measured])
    print("\nFWHM (px) per frame:", np.round(fwhm, 2), "stars used:", [psf.n_used for _, psf in measured])
    assert np.all(np.isfinite(fwhm))
    assert np.all((fwhm > 6.0) & (fwhm < 16.0))
    # Seeing and guiding vary over the 30 min: frame 5 is broader than the rest by a
    # quarter (and elongated, e ~0.4), as the profiles of its brightest stars confirm.
    assert np.all(np.abs(fwhm / np.median(fwhm) - 1.0) < 0.3)
    assert all(psf.n_used >= 3 for _, psf in measured)
    for stars, psf in measured:
        # The matched filter finds the broad stars (4-8 point sources of S/N >= 5 a frame,
        # all the field holds); the cosmic rays and hot pixels, which outnumbered them
        # among the 3x3 kernel's detections, are gone or not point sources.
        point = stars["point"] & (stars["snr"] >= 5)
        assert point.sum() >= 4
        assert np.all(stars["fwhm"][point] > 0.5 * psf.fwhm)
        brightest = np.argsort(-stars["snr"])[:5]
        assert stars["point"][brightest].sum() >= 3


def test_six_frames_align_to_the_first(night, measured):
    sci1, _, mask1, header1 = night[0]
    shape = sci1.shape
    ref_wcs = _pointing_wcs(header1, shape)
    ref = measured[0][0]
    ref = ref[ref["point"]]
    smooth1 = _smoothed(sci1, mask1)
    centre = np.array([[(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0]])
    lines = []
    for k in range(1, 7):
        stars = measured[k][0]
        sol = align_to_reference(stars["x"], stars["y"], stars["flux"], ref["x"], ref["y"], ref["flux"], ref_wcs,
                                 shape=shape, snr=stars["snr"], ref_snr=ref["snr"])
        # Where frame k's centre falls on frame 1.
        on_ref = ref_wcs.all_world2pix(sol.wcs.all_pix2world(centre, 0), 0)[0]
        shift = on_ref - centre[0]
        independent = _cross_correlation_shift(smooth1, _smoothed(night[k][0], night[k][2]))
        lines.append(f"frame {k + 1}: {sol.n_matches} matches, rms {sol.rms_px:.2f} px, shift "
                     f"({shift[0]:+.2f}, {shift[1]:+.2f}) px, cross-correlation ({independent[0]:+.2f}, "
                     f"{independent[1]:+.2f}), {sol.method}")
        assert sol.n_matches >= 6, lines[-1]
        assert sol.rms_px < 1.0, lines[-1]
        assert np.hypot(*(shift - independent)) < 1.5, lines[-1]
        # The brightest star (S/N ~80 on frame 1) is matched, and its offset is the shift.
        brightest = int(np.argmax(ref["snr"]))
        assert brightest in sol.ref_index, lines[-1]
        j = sol.det_index[list(sol.ref_index).index(brightest)]
        offset = np.array([ref["x"][brightest] - stars["x"][j], ref["y"][brightest] - stars["y"][j]])
        assert np.hypot(*(offset - shift)) < 1.0, lines[-1]
    print("\n" + "\n".join(lines))


def test_unrelated_star_lists_still_fail(night, measured):
    shape = night[0][0].shape
    ref_wcs = _pointing_wcs(night[0][3], shape)
    ref = measured[0][0]
    ref = ref[ref["point"]]
    stars = measured[3][0]
    rng = np.random.default_rng(7)
    scrambled = rng.uniform(0, 1, (len(ref), 2)) * [shape[1] - 1, shape[0] - 1]
    with pytest.raises(AstrometryError):
        align_to_reference(stars["x"], stars["y"], stars["flux"], scrambled[:, 0], scrambled[:, 1], ref["flux"],
                           ref_wcs, shape=shape, snr=stars["snr"], ref_snr=ref["snr"])
    # The same stars seen in a mirror: another parity, which no rotation undoes.
    with pytest.raises(AstrometryError):
        align_to_reference(stars["x"], stars["y"], stars["flux"], shape[1] - 1 - ref["x"], ref["y"], ref["flux"],
                           ref_wcs, shape=shape, snr=stars["snr"], ref_snr=ref["snr"])


# -- the same conditions, simulated: the truth is known ------------------------------------


def _broad_frame(seed: int, fwhm: float = 10.0, size: int = 1024):
    """40 Moffat stars (beta 3) of S/N 8-150 on 600 ADU of sky, with 80 cosmic-ray hits
    (1-6 px tracks) and 60 hot pixels the mask does not know about."""
    rng = np.random.default_rng(seed)
    gain, read_noise, sky = 2.6, 6.0, 600.0
    x, y = rng.uniform(30, size - 30, (2, 40))
    sigma = math.sqrt(sky / gain + read_noise**2)
    snr = 10 ** rng.uniform(math.log10(8.0), math.log10(150.0), x.size)
    flux = snr * sigma * math.sqrt(math.pi) * fwhm * 1.1  # S/N in a circle of radius ~FWHM
    clean = render_stars((size, size), x, y, flux, fwhm, 3.0, image=np.full((size, size), sky))
    sci = rng.poisson(clean * gain) / gain + rng.normal(0.0, read_noise, clean.shape)
    for _ in range(80):
        cx, cy = rng.uniform(5, size - 5, 2)
        angle = rng.uniform(0, math.pi)
        for t in range(int(rng.integers(1, 7))):
            sci[int(cy + t * math.sin(angle)), int(cx + t * math.cos(angle))] += rng.uniform(200, 3000)
    hot = rng.choice(size * size, 60, replace=False)
    sci.flat[hot] += rng.uniform(100, 2000, hot.size)
    err = np.sqrt(np.clip(sci, 0, None) / gain + read_noise**2)
    return sci.astype(np.float32), err.astype(np.float32), x, y, snr


def test_broad_faint_stars_among_cosmic_rays_are_found_and_measured():
    """Before the matched filter and the sharpness tests, the 3x3 kernel found ~135
    cosmic rays and hot pixels of S/N >= 5 for 40 stars here, and the PSF came out NaN
    or 1.8 px."""
    sci, err, x, y, snr = _broad_frame(1)
    sky = estimate_background(sci)
    stars = detect_stars(sci, sky, err=err)
    psf = measure_psf(sci, stars, sky, err=err)
    assert psf.fwhm == pytest.approx(10.0, rel=0.05)
    assert psf.n_used >= 8
    dist, idx = cKDTree(np.column_stack([x, y])).query(np.column_stack([stars["x"], stars["y"]]))
    real = dist < 3.0
    found = np.zeros(x.size, dtype=bool)
    found[idx[real]] = True
    assert found[snr > 10].mean() >= 0.9
    assert np.sum(~real & (stars["snr"] >= 5)) <= 2
    assert stars["point"][real].mean() >= 0.85
    bright = real & (stars["snr"] > 20)
    assert np.sqrt(np.mean(dist[bright] ** 2)) < 0.5
