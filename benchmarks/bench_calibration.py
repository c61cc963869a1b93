"""Calibration speed and memory: obsdb beside a plain ccdproc script doing the same steps.

Usage::

    python benchmarks/bench_calibration.py [--size 2048] [--n 30] [--lights 3] [--quick]

Synthetic raw FITS (a bias pattern, dark current with hot pixels, a vignetted flat, Moffat
stars, cosmic-ray hits) are written to a temporary directory. Each measurement runs in its
own subprocess, so its peak resident memory (``ru_maxrss``) is its own:

- master bias from ``--n`` frames: obsdb ``make_master_bias`` (sigma-clipped mean, tiled)
  vs ``ccdproc.combine(method='median')``; both write the master.
- reduce, per frame: obsdb ``reduce_frame`` (bias, dark, flat, saturation, cosmic rays)
  + ``write_reduced`` vs ``ccdproc.subtract_bias`` / ``subtract_dark`` / ``flat_correct``
  / ``cosmicray_lacosmic`` (its defaults) + ``CCDData.write``. The same without cosmic
  rays is timed as well, to show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GAIN, READ_NOISE, SATURATION = 1.5, 6.0, 60000.0
DARK_EXPTIME, LIGHT_EXPTIME = 300.0, 60.0


# -- synthetic data -------------------------------------------------------------------------

def _truth(size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    bias = 1000 + 3 * np.sin(x / 7) + 0.002 * y + rng.normal(0, 1, (size, size))
    rate = np.full((size, size), 0.02) * rng.uniform(0.8, 1.2, (size, size))
    rate.flat[rng.choice(size * size, size * size // 20000 + 1, replace=False)] = 5.0
    r2 = ((x - size / 2) ** 2 + (y - size / 2) ** 2) / (0.75 * size) ** 2
    flat = (1 - 0.15 * r2) * rng.normal(1, 0.01, (size, size))
    return {"bias": bias.astype(np.float32), "rate": rate.astype(np.float32), "flat": flat.astype(np.float32)}


def _scene(size: int, rng: np.random.Generator) -> np.ndarray:
    image = np.full((size, size), 300.0)
    n_stars = size * size // 5000
    yy, xx = np.mgrid[-12:13, -12:13]
    for _ in range(n_stars):
        x0, y0 = rng.uniform(12, size - 13, 2)
        fwhm, beta = rng.uniform(2.5, 4.0), 3.0
        alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        peak = 10 ** rng.uniform(2, 4.5)
        xi, yi = int(x0), int(y0)
        r2 = (xx + xi - x0) ** 2 + (yy + yi - y0) ** 2
        image[yi - 12:yi + 13, xi - 12:xi + 13] += peak * (1 + r2 / alpha**2) ** (-beta)
    # Cosmic rays: about 0.6 hits per 10^4 pixels (a few minutes' exposure), single
    # pixels and short tracks of thousands of electrons.
    for i in range(max(1, size * size // 15000)):
        x0, y0 = rng.integers(3, size - 9, 2)
        length = 1 if i % 2 else rng.integers(2, 7)
        image[y0 + np.arange(length) // 2, x0 + np.arange(length)] += rng.uniform(2000, 30000, length) / GAIN
    return image


def _expose(truth: dict[str, np.ndarray], signal, exptime: float, rng: np.random.Generator) -> np.ndarray:
    electrons = (truth["flat"] * signal + truth["rate"] * exptime) * GAIN
    raw = rng.poisson(np.maximum(electrons, 0)) + rng.normal(0, READ_NOISE, truth["bias"].shape)
    return np.clip(raw / GAIN + truth["bias"], 0, SATURATION).astype(np.float32)


def make_data(directory: Path, size: int, n: int, n_lights: int) -> None:
    """Raw biases and lights, plus masters in both obsdb and ccdproc formats."""
    from astropy.io import fits

    from obsdb.calibration.masters import MasterFrame
    from obsdb.calibration.products import write_master

    rng = np.random.default_rng(0)
    truth = _truth(size, rng)
    for i in range(n):
        raw = _expose(truth, 0.0, 0.0, rng)
        # As a camera writes it: uint16 with BZERO.
        fits.PrimaryHDU(np.round(raw).astype(np.uint16), fits.Header({"EXPTIME": 0.0})).writeto(
            directory / f"bias_{i:03d}.fits")
    for i in range(n_lights):
        raw = _expose(truth, _scene(size, rng), LIGHT_EXPTIME, rng)
        fits.PrimaryHDU(np.round(raw).astype(np.uint16), fits.Header({"EXPTIME": LIGHT_EXPTIME})).writeto(
            directory / f"light_{i:03d}.fits")
    # Masters: the truth plus the noise of a 20-frame combine.
    zeros = np.zeros((size, size), np.uint8)
    noise = READ_NOISE / GAIN / np.sqrt(20)
    bias = truth["bias"] + rng.normal(0, noise, (size, size)).astype(np.float32)
    dark = truth["rate"] * DARK_EXPTIME + rng.normal(0, noise, (size, size)).astype(np.float32)
    flat = truth["flat"] / np.median(truth["flat"])
    masters = {
        "bias": MasterFrame("bias", bias, np.full_like(bias, noise), zeros),
        "dark": MasterFrame("dark", dark, np.full_like(dark, noise), zeros, {"exptime": DARK_EXPTIME}),
        "flat": MasterFrame("flat", flat, np.full_like(flat, 0.002), zeros),
    }
    for kind, master in masters.items():
        write_master(directory / f"master_{kind}_obsdb.fits", master)
        header = fits.Header({"EXPTIME": DARK_EXPTIME if kind == "dark" else 0.0, "BUNIT": "adu"})
        fits.PrimaryHDU(master.data, header).writeto(directory / f"master_{kind}_ccdproc.fits")


# -- workers (one per subprocess) -------------------------------------------------------------

def _rss_mb() -> float:
    """Peak resident memory of this process, MB.

    VmHWM belongs to this process image; ``ru_maxrss`` would also carry the parent's peak
    across fork + exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_master_obsdb(directory: Path) -> dict:
    from obsdb.calibration.masters import make_master_bias
    from obsdb.calibration.products import write_master

    paths = sorted(directory.glob("bias_*.fits"))
    base = _rss_mb()
    t0 = time.perf_counter()
    master = make_master_bias(paths, gain=GAIN, read_noise=READ_NOISE, tmpdir=directory)
    write_master(directory / "out_master_obsdb.fits", master, inputs=[p.name for p in paths])
    return {"seconds": time.perf_counter() - t0, "peak_mb": _rss_mb(), "import_mb": base}


def worker_master_ccdproc(directory: Path) -> dict:
    import ccdproc

    paths = [str(p) for p in sorted(directory.glob("bias_*.fits"))]
    base = _rss_mb()
    t0 = time.perf_counter()
    ccdproc.combine(paths, output_file=str(directory / "out_master_ccdproc.fits"), method="median", unit="adu",
                    overwrite_output=True)
    return {"seconds": time.perf_counter() - t0, "peak_mb": _rss_mb(), "import_mb": base}


def worker_reduce_obsdb(directory: Path, cosmics: bool) -> dict:
    from astropy.io import fits

    from obsdb.calibration.masters import MasterFrame
    from obsdb.calibration.products import read_product, write_reduced
    from obsdb.calibration.reduce import DEFAULT_STEPS, reduce_frame

    masters = {}
    for kind in ("bias", "dark", "flat"):
        data, error, mask, header = read_product(directory / f"master_{kind}_obsdb.fits")
        stats = {"exptime": header["EXPTIME"]} if "EXPTIME" in header else {}
        masters[kind] = MasterFrame(kind, data, error, mask, stats)
    steps = DEFAULT_STEPS if cosmics else tuple(s for s in DEFAULT_STEPS if s != "cosmics")
    times = []
    for path in sorted(directory.glob("light_*.fits")):
        t0 = time.perf_counter()
        with fits.open(path) as hdul:
            raw, header = hdul[0].data.astype(np.float32), hdul[0].header
        reduced = reduce_frame(raw, gain=GAIN, read_noise=READ_NOISE, saturation=SATURATION,
                               exptime=header["EXPTIME"], steps=steps, **masters)
        write_reduced(directory / f"out_{path.stem}_obsdb.fits", reduced, header=header, inputs=[path.name])
        times.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(times)), "all": times, "peak_mb": _rss_mb()}


def worker_reduce_ccdproc(directory: Path, cosmics: bool) -> dict:
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    bias = CCDData.read(directory / "master_bias_ccdproc.fits", unit="adu")
    dark = CCDData.read(directory / "master_dark_ccdproc.fits", unit="adu")
    flat = CCDData.read(directory / "master_flat_ccdproc.fits", unit="adu")
    times = []
    for path in sorted(directory.glob("light_*.fits")):
        t0 = time.perf_counter()
        ccd = CCDData.read(path, unit="adu")
        ccd = ccdproc.subtract_bias(ccd, bias)
        ccd = ccdproc.subtract_dark(ccd, dark, exposure_time="EXPTIME", exposure_unit=u.s, scale=True)
        ccd = ccdproc.flat_correct(ccd, flat)
        if cosmics:
            ccd = ccdproc.cosmicray_lacosmic(ccd)
        ccd.write(directory / f"out_{path.stem}_ccdproc.fits", overwrite=True)
        times.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(times)), "all": times, "peak_mb": _rss_mb()}


WORKERS = {
    "master-obsdb": lambda d: worker_master_obsdb(d),
    "master-ccdproc": lambda d: worker_master_ccdproc(d),
    "reduce-obsdb": lambda d: worker_reduce_obsdb(d, cosmics=True),
    "reduce-ccdproc": lambda d: worker_reduce_ccdproc(d, cosmics=True),
    "reduce-nocr-obsdb": lambda d: worker_reduce_obsdb(d, cosmics=False),
    "reduce-nocr-ccdproc": lambda d: worker_reduce_ccdproc(d, cosmics=False),
}


def run_worker(name: str, directory: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--dir", str(directory)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- main -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="frame side in pixels")
    parser.add_argument("--n", type=int, default=30, help="frames in the master")
    parser.add_argument("--lights", type=int, default=3, help="frames to reduce")
    parser.add_argument("--quick", action="store_true", help="512x512, 5 frames, 3 lights")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.dir)))
        return
    if args.quick:
        args.size, args.n, args.lights = 512, 5, 3

    with tempfile.TemporaryDirectory(prefix="obsdb-bench-") as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        make_data(directory, args.size, args.n, args.lights)
        print(f"synthetic data: {args.n} biases + {args.lights} lights of {args.size}x{args.size} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        results = {}
        for name in WORKERS:
            results[name] = run_worker(name, directory)
            print(f"  {name}: {results[name]}", file=sys.stderr)
        from astropy.io import fits

        ours = fits.getdata(directory / "out_master_obsdb.fits", "SCI")
        theirs = fits.getdata(directory / "out_master_ccdproc.fits")
        agreement = float(np.median(np.abs(ours - theirs)))

    # The shared table (imported here: the workers need not load the database stack).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.common import Row, print_table

    r = results
    rows = [
        Row(f"reduce {args.size}^2 (bias+dark+flat+CR+write), per frame", r["reduce-obsdb"]["seconds"],
            r["reduce-ccdproc"]["seconds"], "s", higher_is_better=False),
        Row("reduce without CR (read+calibrate+write), per frame", r["reduce-nocr-obsdb"]["seconds"],
            r["reduce-nocr-ccdproc"]["seconds"], "s", higher_is_better=False),
        Row("reduce, peak RSS", r["reduce-obsdb"]["peak_mb"], r["reduce-ccdproc"]["peak_mb"], "MB",
            higher_is_better=False),
        Row(f"master bias from {args.n} frames", r["master-obsdb"]["seconds"], r["master-ccdproc"]["seconds"], "s",
            higher_is_better=False),
        Row(f"master bias from {args.n} frames, peak RSS", r["master-obsdb"]["peak_mb"],
            r["master-ccdproc"]["peak_mb"], "MB", higher_is_better=False),
    ]
    import ccdproc

    print_table(f"obsdb calibration vs ccdproc {ccdproc.__version__} ({args.size}x{args.size}, {args.n} frames "
                "in the master, median time over the reduced frames)", rows)
    print(f"baseline: ccdproc.combine(method='median'); subtract_bias/subtract_dark/flat_correct + "
          f"cosmicray_lacosmic defaults. Python + imports alone: {r['master-obsdb']['import_mb']:.0f} MB (obsdb), "
          f"{r['master-ccdproc']['import_mb']:.0f} MB (ccdproc).")
    print(f"median |obsdb clipped mean - ccdproc median| of the master bias: {agreement:.3f} ADU "
          f"(noise of a {args.n}-frame combine: {READ_NOISE / GAIN / np.sqrt(args.n):.2f} ADU)")


if __name__ == "__main__":
    main()
