"""Per-frame photometry speed: obsdb's chain beside a plain photutils script on the same frame.

Usage::

    python -m benchmarks.bench_measure [--size 2048] [--stars 1000] [--repeat 3]

A seeded synthetic calibrated frame (Moffat beta=3 stars of FWHM 3 px, fluxes from the
detection limit to saturation, a sky gradient, Poisson and read noise at gain 1.5 e-/ADU,
bad pixels and cosmic-ray hits in the mask, an ERR plane as the calibration writes it) is
measured by

- obsdb: ``estimate_background`` (sep), ``detect_stars`` (sep.extract + sep.winpos),
  ``measure_psf`` (vectorised Moffat fits), ``measure_apertures`` (4 radii, sigma-clipped
  annulus sky with neighbour exclusion, interpolated masked pixels, flags);
- the baseline: photutils ``Background2D`` (64 px boxes, 3x3 filter, its default
  SExtractor estimator),
  ``DAOStarFinder`` (3 sigma, the true FWHM), ``ApertureStats`` sigma-clipped annulus
  medians, ``aperture_photometry`` at 4 radii with the error plane.

Each step is timed ``--repeat`` times on one core; the table shows the median. The
accuracy lines compare both chains' detections and fluxes with the truth.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

# One core, as the target is per core: BLAS threads off before numpy loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

GAIN, READ_NOISE_E, FWHM, BETA, SATURATION = 1.5, 10.0, 3.0, 3.0, 60000.0
RADII_FACTORS = (1.0, 1.5, 2.0, 3.0)


def make_frame(size: int = 2048, n_stars: int = 1000, seed: int = 0):
    """Seeded calibrated-like frame: (sci, err, mask, truth dict)."""
    from obsdb.simulate.psf import render_stars

    rng = np.random.default_rng(seed)
    x = rng.uniform(5, size - 5, n_stars)
    y = rng.uniform(5, size - 5, n_stars)
    flux = 10 ** rng.uniform(2.7, 6.3, n_stars)  # S/N ~5 up to a few saturated stars
    yy, xx = np.mgrid[0:size, 0:size]
    sky = 300.0 + 0.01 * (xx - size / 2) - 0.008 * (yy - size / 2)
    clean = render_stars((size, size), x, y, flux, FWHM, BETA, image=sky)
    rn = READ_NOISE_E / GAIN
    sci = rng.poisson(clean * GAIN) / GAIN + rng.normal(0.0, rn, clean.shape)
    err = np.sqrt(np.maximum(sci, 0) / GAIN + rn**2)
    mask = np.zeros((size, size), np.uint8)
    saturated = sci >= SATURATION
    sci[saturated] = SATURATION
    mask[saturated] |= 2
    bad = rng.choice(size * size, size * size // 20000, replace=False)
    mask.flat[bad] |= 1
    hits = rng.choice(size * size, size * size // 15000, replace=False)
    sci.flat[hits] += rng.uniform(1000, 20000, hits.size)
    mask.flat[hits] |= 4
    truth = {"x": x, "y": y, "flux": flux, "clean": clean}
    return sci.astype(np.float32), err.astype(np.float32), mask, truth


_CPU: dict[int, float] = {}


def _timed(fn, repeat: int):
    """Median wall time of ``repeat`` runs (its median CPU time in ``_CPU[id(fn)]``), last result."""
    times, cpu, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    _CPU[id(fn)] = float(np.median(cpu))
    return float(np.median(times)), out


def measure_frame_timings(sci: np.ndarray, err: np.ndarray, mask: np.ndarray, *, repeat: int = 3,
                          saturation: float | None = SATURATION) -> dict[str, float]:
    """Time obsdb's per-frame photometry chain on one calibrated frame.

    Parameters
    ----------
    sci, err, mask : numpy.ndarray
        Calibrated image, error plane and mask bits.
    repeat : int
        Runs per step; the median is reported.
    saturation : float, optional
        Passed to the PSF and aperture steps.

    Returns
    -------
    dict
        Median wall seconds for ``background``, ``detect``, ``psf``, ``apertures`` and
        their ``total``; ``total_cpu``, the same in process CPU seconds (steady on a
        shared machine); ``n_stars`` (detections) and ``fwhm`` (px) of the last run.
    """
    from obsdb.photometry.apertures import measure_apertures
    from obsdb.photometry.background import estimate_background
    from obsdb.photometry.detect import detect_stars, measure_psf
    from obsdb.photometry.growth import default_annulus, default_radii

    cpu = 0.0

    def step(fn):
        nonlocal cpu
        seconds, out = _timed(fn, repeat)
        cpu += _CPU.pop(id(fn))
        return seconds, out

    t_bkg, sky = step(lambda: estimate_background(sci, mask))
    t_det, stars = step(lambda: detect_stars(sci, sky, mask, err=err))
    t_psf, psf = step(lambda: measure_psf(sci, stars, sky, mask, err=err, saturation=saturation))
    fwhm = psf.fwhm if np.isfinite(psf.fwhm) else FWHM
    radii = default_radii(fwhm, factors=RADII_FACTORS)
    annulus = default_annulus(fwhm, radii[-1])
    xy = np.column_stack([stars["x"], stars["y"]])
    t_ap, _ = step(lambda: measure_apertures(sci, err, mask, stars["x"], stars["y"], radii=radii, annulus=annulus,
                                             neighbours_xy=xy, saturation=saturation))
    return {"background": t_bkg, "detect": t_det, "psf": t_psf, "apertures": t_ap,
            "total": t_bkg + t_det + t_psf + t_ap, "total_cpu": cpu, "n_stars": float(len(stars)),
            "fwhm": float(fwhm)}


def measure_frame_photutils(sci: np.ndarray, err: np.ndarray, mask: np.ndarray, *, repeat: int = 3,
                            fwhm: float = FWHM) -> tuple[dict[str, float], dict]:
    """The plain photutils 3 script, step by step: timings and its last results."""
    from astropy.stats import SigmaClip
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry
    from photutils.background import Background2D
    from photutils.detection import DAOStarFinder

    bad = mask != 0
    t_bkg, bkg = _timed(lambda: Background2D(sci, (64, 64), filter_size=(3, 3), mask=bad), repeat)
    data = sci - bkg.background
    finder = DAOStarFinder(threshold=3.0 * bkg.background_rms_median, fwhm=fwhm)
    t_det, found = _timed(lambda: finder(data, mask=(mask & 5) != 0), repeat)
    xy = np.column_stack([found["x_centroid"], found["y_centroid"]])
    radii = [fwhm * f for f in RADII_FACTORS]
    r_in = max(radii[-1] + 2.0, 4.0 * fwhm)
    annulus = CircularAnnulus(xy, r_in=r_in, r_out=r_in + max(6.0, 2.0 * fwhm))
    t_ann, stats = _timed(lambda: ApertureStats(sci, annulus, mask=bad, sigma_clip=SigmaClip(sigma=3.0)).median,
                          repeat)
    apertures = [CircularAperture(xy, r=r) for r in radii]
    t_sum, table = _timed(lambda: aperture_photometry(sci, apertures, error=err, mask=(mask & 5) != 0), repeat)
    flux = np.column_stack([np.asarray(table[f"aperture_sum_{j}"]) - np.asarray(stats) * np.pi * r**2
                            for j, r in enumerate(radii)])
    return ({"background": t_bkg, "detect": t_det, "annulus": t_ann, "sums": t_sum,
             "total": t_bkg + t_det + t_ann + t_sum},
            {"x": xy[:, 0], "y": xy[:, 1], "flux": flux, "radii": np.array(radii)})


def _accuracy(truth: dict, x, y, flux, radii, flags=None) -> dict[str, float]:
    """Completeness above S/N 10, centroid rms of bright stars, median flux ratio at 3 FWHM."""
    import sep
    from scipy.spatial import cKDTree

    tx, ty = truth["x"], truth["y"]
    d_true, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([tx, ty]))
    sigma = np.sqrt(300.0 / GAIN + (READ_NOISE_E / GAIN) ** 2)
    alpha = FWHM / (2 * np.sqrt(2 ** (1 / BETA) - 1))
    inside = truth["flux"] * (1 - (1 + FWHM**2 / alpha**2) ** (1 - BETA))
    snr = inside / np.sqrt(inside / GAIN + np.pi * FWHM**2 * sigma**2)
    nn = cKDTree(np.column_stack([tx, ty])).query(np.column_stack([tx, ty]), k=2)[0][:, 1]
    target = (snr > 10) & (nn > 2 * FWHM)
    d, i = cKDTree(np.column_stack([tx, ty])).query(np.column_stack([x, y]))
    iso = (d < 1.5) & (nn[i] > 20) & (snr[i] > 200) & (truth["flux"][i] < 3e5)
    clean = np.ascontiguousarray(truth["clean"])
    r = radii[-1]
    true_ap, _, _ = sep.sum_circle(clean, x[iso], y[iso], r, subpix=0)
    ann, _, _ = sep.sum_circann(clean, x[iso], y[iso], 12.0, 18.0, subpix=0)
    true_ap = true_ap - np.pi * r**2 * ann / (np.pi * (18.0**2 - 12.0**2))
    return {"completeness": float(np.mean(d_true[target] < 1.5)),
            "centroid_rms": float(np.sqrt(np.mean(d[iso] ** 2) / 2)),
            "flux_ratio": float(np.median(flux[iso, -1] / true_ap))}


QUICK = ["--size", "1024", "--stars", "250"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="frame side in pixels")
    parser.add_argument("--stars", type=int, default=1000, help="stars in the frame")
    parser.add_argument("--repeat", type=int, default=3, help="runs per step (median reported)")
    parser.add_argument("--no-baseline", action="store_true", help="time obsdb only")
    return parser


def measure(args: argparse.Namespace) -> tuple[str, list, list[str]]:
    """Time both chains on one frame; the table's title, rows and the notes below it."""
    t0 = time.perf_counter()
    sci, err, mask, truth = make_frame(args.size, args.stars)
    print(f"synthetic frame {args.size}x{args.size}, {args.stars} stars, in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    ours = measure_frame_timings(sci, err, mask, repeat=args.repeat)
    theirs = None
    if not args.no_baseline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, found = measure_frame_photutils(sci, err, mask, repeat=args.repeat)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.common import Row

    def base(key):
        return None if theirs is None else theirs[key]

    rows = [
        Row("background (sep / Background2D)", ours["background"], base("background"), "s", higher_is_better=False),
        Row("detection + centroids (sep / DAOStarFinder)", ours["detect"], base("detect"), "s",
            higher_is_better=False),
        Row("PSF FWHM + ellipticity (obsdb only)", ours["psf"], None, "s", higher_is_better=False),
        Row("apertures: clipped annulus sky + 4 radii + flags", ours["apertures"],
            None if theirs is None else theirs["annulus"] + theirs["sums"], "s", higher_is_better=False),
        Row("total per frame", ours["total"], base("total"), "s", higher_is_better=False),
    ]
    title = (f"obsdb per-frame photometry vs a plain photutils script ({args.size}x{args.size}, "
             f"{args.stars} stars, median of {args.repeat})")
    notes = []
    if theirs is not None:
        notes.append(f"baseline apertures = ApertureStats clipped annulus medians {theirs['annulus']:.3g} s "
                     f"+ aperture_photometry {theirs['sums']:.3g} s")
    notes.append(f"obsdb total in process CPU time: {ours['total_cpu']:.3g} s; {int(ours['n_stars'])} detections, "
                 f"FWHM {ours['fwhm']:.3f} px (true {FWHM})")

    # Accuracy against the truth, both chains.
    from obsdb.photometry.apertures import measure_apertures
    from obsdb.photometry.background import estimate_background
    from obsdb.photometry.detect import detect_stars
    from obsdb.photometry.growth import default_annulus, default_radii

    sky = estimate_background(sci, mask)
    stars = detect_stars(sci, sky, mask, err=err)
    radii = default_radii(ours["fwhm"], factors=RADII_FACTORS)
    res = measure_apertures(sci, err, mask, stars["x"], stars["y"], radii=radii,
                            annulus=default_annulus(ours["fwhm"], radii[-1]),
                            neighbours_xy=np.column_stack([stars["x"], stars["y"]]), saturation=SATURATION)
    acc = _accuracy(truth, res.x, res.y, res.flux, radii)
    notes.append(f"obsdb:     completeness (S/N>10, isolated) {acc['completeness']:.3f}, bright-star centroid rms "
                 f"{acc['centroid_rms']:.4f} px, median flux / truth at 3 FWHM {acc['flux_ratio']:.4f}")
    if theirs is not None:
        acc_b = _accuracy(truth, found["x"], found["y"], found["flux"], found["radii"])
        notes.append(f"photutils: completeness (S/N>10, isolated) {acc_b['completeness']:.3f}, bright-star centroid "
                     f"rms {acc_b['centroid_rms']:.4f} px, median flux / truth at 3 FWHM {acc_b['flux_ratio']:.4f}")
    return title, rows, notes


def run(quick: bool = False) -> list:
    """The rows (``benchmarks.common.Row``) of ``python -m benchmarks``; ``QUICK``'s sizes with ``quick``."""
    title, rows, notes = measure(_parser().parse_args(QUICK if quick else []))
    print("\n".join(notes))
    return rows


def main(argv=None) -> None:
    title, rows, notes = measure(_parser().parse_args(argv))
    from benchmarks.common import print_table

    print_table(title, rows)
    print("\n".join(notes))

if __name__ == "__main__":
    main()
