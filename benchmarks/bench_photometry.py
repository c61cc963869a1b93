"""Detection to database per frame: obsdb beside a plain photutils + ORM script; COPY rate; ensemble.

Usage::

    python -m benchmarks.bench_photometry [--size 2048] [--stars 1000] [--frames 5] [--rows 100000]

Needs a PostgreSQL server in ``OBSDB_DATABASE_URL`` (a scratch database is created on
it at the head schema and dropped at the end), else starts an embedded one.

Each of ``--frames`` seeded synthetic calibrated frames (the generator of
``benchmarks/bench_measure.py``: Moffat stars from the detection limit to saturation, sky
gradient, noise, bad pixels, cosmic rays) goes from pixels to rows in ``measurements``:

- obsdb: detection = ``estimate_background`` + ``detect_stars`` + ``measure_psf`` (sep);
  astrometry = :func:`obsdb.astrometry.match.refine_wcs` against a synthetic catalog
  (the frame's stars, and more around it, placed by a known TAN WCS) from a header WCS
  20 px off; photometry = ``measure_apertures`` at 4 radii; database write = the
  frame's rows (sky positions from the fitted WCS, magnitudes) through
  :func:`obsdb.photometry.writer.copy_measurements` (binary COPY), committed.
- the plain script (``bench_measure.measure_frame_photutils``'s steps): ``Background2D`` +
  ``DAOStarFinder`` (3 sigma, the true FWHM, keeping as many of the brightest as obsdb
  detected, so both chains measure and write the same number of rows); astroalign's
  ``find_transform`` on the brightest stars, then astropy's ``fit_wcs_from_points`` on
  all matches; ``ApertureStats`` sigma-clipped annulus medians + ``aperture_photometry``;
  the same rows as ORM objects, ``session.add(Measurement(...))`` per row, one commit
  per frame.

obsdb's detection and photometry are timed by ``bench_measure.measure_frame_timings``;
every step runs on one core (BLAS threads off; the server's work for the database write
runs beside it), and both chains run with the memory allocator settings of obsdb's
workers (:mod:`obsdb.pipeline.memory`); the table shows the median over frames. Then: measurement rows per second through
``copy_measurements`` for ``--rows`` rows (the frames' rows repeated) beside psycopg's
``Copy.write_row`` (the writer before binary COPY), the same COPY into a copy of
``measurements`` whose references are foreign keys, checked per row (as before migration
0006, which checks them once per statement), and into one that checks nothing,
and the ensemble solve (``bench_ensemble.simulate``, 1,000 stars x 500 frames).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

# One core, as the per-frame target is per core: BLAS threads off before numpy loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import astroalign  # noqa: E402
import numpy as np  # noqa: E402
from astropy.coordinates import SkyCoord  # noqa: E402
from astropy.wcs.utils import fit_wcs_from_points  # noqa: E402
from photutils.aperture import CircularAperture, aperture_photometry  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from benchmarks.bench_ensemble import simulate  # noqa: E402
from benchmarks.bench_measure import (  # noqa: E402
    FWHM,
    RADII_FACTORS,
    SATURATION,
    make_frame,
    measure_frame_timings,
)
from benchmarks.common import Row, entry_points, scratch_database  # noqa: E402
from obsdb.astrometry.initial import wcs_from_pointing  # noqa: E402
from obsdb.astrometry.match import refine_wcs  # noqa: E402
from obsdb.models.frames import Frame, Instrument  # noqa: E402
from obsdb.models.photometry import Measurement  # noqa: E402
from obsdb.photometry.apertures import measure_apertures  # noqa: E402
from obsdb.photometry.background import estimate_background  # noqa: E402
from obsdb.photometry.detect import detect_stars, measure_psf  # noqa: E402
from obsdb.photometry.ensemble import solve_ensemble  # noqa: E402
from obsdb.photometry.growth import default_annulus, default_radii  # noqa: E402
from obsdb.photometry.measure_stage import inst_mag  # noqa: E402
from obsdb.photometry.writer import COLUMNS, copy_measurements  # noqa: E402
from obsdb.pipeline.memory import keep_freed_memory  # noqa: E402

# The known sky of the synthetic frames, and the header's error.
RA0, DEC0, SCALE_ARCSEC, ROTATION_DEG = 150.0, 20.0, 0.8, 0.4
HEADER_OFFSET_PX = (16.0, -12.0)  # 20 px
ZERO_POINT = 25.0
REPORTED_APERTURE = 2  # of the 4 radii (2 FWHM)
MJD = 60400.25

TARGET_FRAME_S, TARGET_RATIO, TARGET_ROWS_S, TARGET_ENSEMBLE_S = 1.0, 5.0, 200_000.0, 10.0


# -- the sky and the catalog ---------------------------------------------------------------


def frame_wcs(shape):
    """The true WCS of the synthetic frames and the header's, ``HEADER_OFFSET_PX`` off."""
    true = wcs_from_pointing(RA0, DEC0, SCALE_ARCSEC, shape, rotation_deg=ROTATION_DEG)
    header = copy.deepcopy(true)
    header.wcs.crpix = true.wcs.crpix + np.array(HEADER_OFFSET_PX)
    header.wcs.set()
    return true, header


def synthetic_catalog(truth: dict, true_wcs, shape, seed: int) -> dict:
    """The frame's stars on the sky (0.02 mag catalog noise) and 25 % more around the frame."""
    rng = np.random.default_rng(1000 + seed)
    ny, nx = shape
    n_out = len(truth["x"]) // 4
    x = rng.uniform(-0.15 * nx, 1.15 * nx, 4 * n_out)
    y = rng.uniform(-0.15 * ny, 1.15 * ny, 4 * n_out)
    outside = (x < 0) | (x > nx - 1) | (y < 0) | (y > ny - 1)
    x, y = x[outside][:n_out], y[outside][:n_out]
    ra, dec = true_wcs.pixel_to_world_values(np.concatenate([truth["x"], x]), np.concatenate([truth["y"], y]))
    mag = np.concatenate([ZERO_POINT - 2.5 * np.log10(truth["flux"]), rng.uniform(12.0, 21.0, x.size)])
    return {"ra": np.asarray(ra), "dec": np.asarray(dec), "mag": mag + rng.normal(0.0, 0.02, mag.size)}


def astrometric_rms(wcs, truth: dict, true_wcs) -> float:
    """Rms (px, per axis) of the truth's sky positions put through ``wcs`` against their pixels."""
    ra, dec = true_wcs.pixel_to_world_values(truth["x"], truth["y"])
    x, y = wcs.world_to_pixel_values(ra, dec)
    return float(np.sqrt(np.mean((x - truth["x"]) ** 2 + (y - truth["y"]) ** 2) / 2))


def solve_plain(x, y, flux, catalog: dict, header_wcs, n_bright: int = 50, radius_px: float = 2.0):
    """The plain way: astroalign on the brightest stars, then ``fit_wcs_from_points`` on all matches."""
    cx, cy = header_wcs.world_to_pixel_values(catalog["ra"], catalog["dec"])
    bright_det = np.argsort(-flux)[:n_bright]
    bright_cat = np.argsort(catalog["mag"])[: 2 * n_bright]
    transform, _ = astroalign.find_transform(np.column_stack([x[bright_det], y[bright_det]]),
                                             np.column_stack([cx[bright_cat], cy[bright_cat]]))
    d, i = cKDTree(np.column_stack([cx, cy])).query(transform(np.column_stack([x, y])))
    m = d < radius_px
    sky = SkyCoord(catalog["ra"][i[m]], catalog["dec"][i[m]], unit="deg")
    return fit_wcs_from_points((x[m], y[m]), sky, projection="TAN")


def plain_photometry(sci, err, mask, n_keep: int | None, fwhm: float = FWHM) -> tuple[dict[str, float], dict]:
    """The plain photutils script of ``bench_measure.measure_frame_photutils``, step by step, but
    keeping the ``n_keep`` brightest of DAOStarFinder's detections (``brightest``; at 3 sigma it
    finds about four times as many as there are stars), so both chains measure and write as
    many rows (None: keep all). Seconds per step, and its stars with fluxes, errors and sky."""
    from astropy.stats import SigmaClip
    from photutils.aperture import ApertureStats, CircularAnnulus
    from photutils.background import Background2D
    from photutils.detection import DAOStarFinder

    bad = mask != 0
    t_bkg, c_bkg, bkg = timed(lambda: Background2D(sci, (64, 64), filter_size=(3, 3), mask=bad))
    data = sci - bkg.background
    threshold = 3.0 * bkg.background_rms_median
    finder = DAOStarFinder(threshold=threshold, fwhm=fwhm, brightest=n_keep)
    t_det, c_det, found = timed(lambda: finder(data, mask=(mask & 5) != 0))
    xy = np.column_stack([found["x_centroid"], found["y_centroid"]])
    radii = np.array([fwhm * f for f in RADII_FACTORS])
    r_in = max(radii[-1] + 2.0, 4.0 * fwhm)
    annulus = CircularAnnulus(xy, r_in=r_in, r_out=r_in + max(6.0, 2.0 * fwhm))
    t_ann, c_ann, sky = timed(lambda: np.asarray(ApertureStats(sci, annulus, mask=bad,
                                                           sigma_clip=SigmaClip(sigma=3.0)).median))
    apertures = [CircularAperture(xy, r=r) for r in radii]
    t_sum, c_sum, table = timed(lambda: aperture_photometry(sci, apertures, error=err, mask=(mask & 5) != 0))
    flux = np.column_stack([np.asarray(table[f"aperture_sum_{j}"]) - sky * np.pi * r**2 for j, r in enumerate(radii)])
    flux_err = np.column_stack([np.asarray(table[f"aperture_sum_err_{j}"]) for j in range(len(radii))])
    n_found = len(DAOStarFinder(threshold=threshold, fwhm=fwhm)(data, mask=(mask & 5) != 0))  # untimed
    return ({"background": t_bkg, "detect": t_det, "annulus": t_ann, "sums": t_sum,
             "cpu": c_bkg + c_det + c_ann + c_sum},
            {"x": xy[:, 0], "y": xy[:, 1], "flux": flux, "flux_err": flux_err, "background": sky,
             "n_found": n_found})


# -- the rows ------------------------------------------------------------------------------


def measurement_columns(frame_id: int, source_ids, x, y, wcs, fluxes, flux_errs, background, flags) -> dict:
    """One frame's ``measurements`` columns, as the measure stage makes them."""
    k = REPORTED_APERTURE
    ra, dec = wcs.pixel_to_world_values(x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        imag, imag_err = inst_mag(fluxes[:, k], flux_errs[:, k])
        snr = fluxes[:, k] / flux_errs[:, k]
    n = len(x)
    return dict(frame_id=np.full(n, frame_id), source_id=np.asarray(source_ids[:n]), x=x, y=y,
                ra=np.asarray(ra) % 360.0, dec=dec, mjd=np.full(n, MJD), fluxes=fluxes, flux_errs=flux_errs,
                flux=fluxes[:, k], flux_err=flux_errs[:, k], background=background, snr=snr, inst_mag=imag,
                inst_mag_err=imag_err, mag=imag + ZERO_POINT, mag_err=imag_err, flags=flags,
                forced=np.zeros(n, bool))


def write_copy(engine: Engine, columns: dict) -> int:
    """obsdb: binary COPY, one transaction."""
    with Session(engine) as session, session.begin():
        return copy_measurements(session, columns)


def write_orm(engine: Engine, columns: dict) -> int:
    """The plain way: one ORM object per row, ``session.add``, one commit."""
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in columns.items()}
    n = len(plain["source_id"])
    with Session(engine) as session:
        for i in range(n):
            session.add(Measurement(**{k: v[i] for k, v in plain.items()}))
        session.commit()
    return n


def write_row_copy(engine: Engine, columns: dict) -> int:
    """The writer before binary COPY: text COPY through psycopg's ``Copy.write_row``."""
    n = len(columns["source_id"])
    names = [c for c in COLUMNS if c in columns]
    lists = []
    for c in names:
        a = np.asarray(columns[c])
        if c in ("fluxes", "flux_errs"):
            lists.append([[None if not np.isfinite(v) else float(v) for v in row] for row in a.astype(float)])
        elif c in ("frame_id", "source_id", "flags"):
            lists.append(a.astype(np.int64).tolist())
        elif a.dtype == bool:
            lists.append(a.tolist())
        else:
            a = a.astype(float)
            lists.append(np.where(np.isfinite(a), a, None).tolist())
    with Session(engine) as session, session.begin():
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY measurements ({', '.join(names)}) FROM STDIN") as cp:
            for row in zip(*lists, strict=True):
                cp.write_row(row)
    return n


# -- the database --------------------------------------------------------------------------


@dataclass
class Fixture:
    frame_ids: list[int]
    source_ids: np.ndarray


def prepare_database(engine: Engine, n_frames: int, n_sources: int) -> Fixture:
    """An instrument, ``n_frames`` frames and ``n_sources`` sources for the rows to point at."""
    with Session(engine) as session, session.begin():
        instrument = Instrument(name="bench", profile="generic")
        session.add(instrument)
        session.flush()
        frames = [Frame(instrument_id=instrument.id, path=f"/bench/{i}.fits", sha256=f"{i:064x}", size_bytes=1,
                        file_mtime=datetime(2026, 1, 1, tzinfo=UTC), header={}, imagetyp="light", naxis1=2048,
                        naxis2=2048) for i in range(n_frames)]
        session.add_all(frames)
        session.execute(text("INSERT INTO sources (ra, dec, healpix) SELECT 0, 0, 0 FROM generate_series(1, :n)"),
                        {"n": n_sources})
        session.flush()
        ids = np.array(session.scalars(text("SELECT id FROM sources ORDER BY id")).all(), np.int64)
        frame_ids = [f.id for f in frames]
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return Fixture(frame_ids, ids)


def tile_rows(columns: list[dict], n: int, frame_id: int, source_ids: np.ndarray) -> dict:
    """``n`` rows made of the frames' rows repeated, on one frame and ``n`` distinct sources."""
    joined = {k: np.concatenate([c[k] for c in columns]) for k in columns[0]}
    take = np.arange(n) % len(joined["source_id"])
    out = {k: v[take] for k, v in joined.items()}
    out["frame_id"] = np.full(n, frame_id)
    out["source_id"] = source_ids[:n]
    return out


def timed(fn, *args):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0, out


# -- the frames ----------------------------------------------------------------------------


def run_frame(engine: Engine, fx: Fixture, k: int, size: int, n_stars: int, baseline: bool,
              plain_keep_all: bool = False) -> dict:
    """Both chains on frame ``k``: seconds per step, accuracy, and obsdb's rows."""
    sci, err, mask, truth = make_frame(size, n_stars, seed=k)
    shape = sci.shape
    true_wcs, header_wcs = frame_wcs(shape)
    catalog = synthetic_catalog(truth, true_wcs, shape, k)
    out: dict = {}

    # obsdb: detection and photometry timed by bench_measure, then run again for the results.
    t = measure_frame_timings(sci, err, mask, repeat=1)
    sky = estimate_background(sci, mask)
    stars = detect_stars(sci, sky, mask, err=err)
    psf = measure_psf(sci, stars, sky, mask, err=err, saturation=SATURATION)
    fwhm = psf.fwhm if np.isfinite(psf.fwhm) else FWHM
    radii = default_radii(fwhm, factors=RADII_FACTORS)
    res = measure_apertures(sci, err, mask, stars["x"], stars["y"], radii=radii,
                            annulus=default_annulus(fwhm, radii[-1]),
                            neighbours_xy=np.column_stack([stars["x"], stars["y"]]), saturation=SATURATION)
    t_ast, c_ast, sol = timed(lambda: refine_wcs(stars["x"], stars["y"], stars["flux"], catalog["ra"],
                                                 catalog["dec"], catalog["mag"], header_wcs, shape=shape))

    def rows_and_copy():
        cols = measurement_columns(fx.frame_ids[2 * k], fx.source_ids, res.x, res.y, sol.wcs, res.flux,
                                   res.flux_err, res.bkg, res.flags[:, REPORTED_APERTURE])
        write_copy(engine, cols)
        return cols

    t_db, c_db, cols = timed(rows_and_copy)
    out["obsdb"] = {"detection": t["background"] + t["detect"] + t["psf"], "astrometry": t_ast,
                    "photometry": t["apertures"], "write": t_db}
    out["obsdb"]["total"] = sum(out["obsdb"].values())
    out["obsdb_cpu"] = t["total_cpu"] + c_ast + c_db
    out["obsdb_steps"] = {key: t[key] for key in ("background", "detect", "psf")}
    out["rows"] = cols
    out["n_obsdb"] = len(res.x)
    out["rms_obsdb"] = astrometric_rms(sol.wcs, truth, true_wcs)
    out["matches_obsdb"] = sol.n_matches
    if not baseline:
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b, found = plain_photometry(sci, err, mask, n_keep=None if plain_keep_all else len(res.x))
        x, y, flux = found["x"], found["y"], found["flux"]
        t_bast, c_bast, wcs_plain = timed(lambda: solve_plain(x, y, flux[:, -1], catalog, header_wcs))

        def rows_and_orm():
            cols = measurement_columns(fx.frame_ids[2 * k + 1], fx.source_ids, x, y, wcs_plain, flux,
                                       found["flux_err"], found["background"], np.zeros(len(x), np.int64))
            return write_orm(engine, cols)

        t_orm, c_orm, _ = timed(rows_and_orm)
    out["plain"] = {"detection": b["background"] + b["detect"], "astrometry": t_bast,
                    "photometry": b["annulus"] + b["sums"], "write": t_orm}
    out["plain"]["total"] = sum(out["plain"].values())
    out["plain_cpu"] = b["cpu"] + c_bast + c_orm
    out["n_plain"] = len(x)
    out["n_plain_all"] = found["n_found"]
    out["rms_plain"] = astrometric_rms(wcs_plain, truth, true_wcs)
    return out


def rows_per_second(engine: Engine, fx: Fixture, frames: list[dict], n_rows: int, repeat: int,
                    first_frame: int, baseline: bool) -> dict[str, float]:
    """Median rows/s of ``copy_measurements``, of ``Copy.write_row``, and of the same COPY
    into two copies of ``measurements``: one whose references are foreign keys (checked
    per row, as before migration 0006) and one with no reference check at all."""
    next_frame = iter(fx.frame_ids[first_frame:])
    results: dict[str, list[float]] = {"copy": [], "write_row": [], "row_fk": [], "no_check": []}
    with engine.begin() as conn:
        for schema in ("bench_row_fk", "bench_no_check"):
            conn.execute(text(f"CREATE SCHEMA {schema}"))
            conn.execute(text(f"CREATE TABLE {schema}.measurements (LIKE public.measurements INCLUDING ALL)"))
        conn.execute(text("ALTER TABLE bench_row_fk.measurements "
                          "ADD FOREIGN KEY (frame_id) REFERENCES frames (id) ON DELETE CASCADE, "
                          "ADD FOREIGN KEY (source_id) REFERENCES sources (id) ON DELETE CASCADE"))

    def copy_into(schema: str):
        def write(engine, cols):
            with Session(engine) as session, session.begin():
                session.execute(text(f"SET LOCAL search_path TO {schema}, public"))
                return copy_measurements(session, cols)
        return write

    for _ in range(repeat):
        jobs = [("copy", write_copy), ("row_fk", copy_into("bench_row_fk")), ("no_check", copy_into("bench_no_check"))]
        if baseline:
            jobs.append(("write_row", write_row_copy))
        for key, fn in jobs:
            cols = tile_rows(frames, n_rows, next(next_frame), fx.source_ids)
            seconds, _, n = timed(fn, engine, cols)
            results[key].append(n / seconds)
    return {k: float(np.median(v)) if v else float("nan") for k, v in results.items()}


def ensemble_seconds(n_stars: int, n_frames: int) -> tuple[float, int]:
    obs, _ = simulate(n_stars, n_frames, 0.7, 1)
    t0 = time.perf_counter()
    solve_ensemble(**obs, fit_colour=True)
    return time.perf_counter() - t0, int(obs["inst"].size)


#: ``python -m benchmarks`` (benchmarks/run_all.py): its quick sizes; the ensemble has its own bench.
QUICK = ["--size", "1024", "--stars", "250", "--frames", "2", "--rows", "20000", "--repeat", "1", "--no-ensemble"]
FULL = ["--no-ensemble"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="frame side in pixels")
    parser.add_argument("--stars", type=int, default=1000, help="stars per frame")
    parser.add_argument("--frames", type=int, default=5, help="synthetic frames (median reported)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the COPY rate")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each COPY rate (median reported)")
    parser.add_argument("--ensemble-stars", type=int, default=1000)
    parser.add_argument("--ensemble-frames", type=int, default=500)
    parser.add_argument("--no-baseline", action="store_true", help="time obsdb only")
    parser.add_argument("--no-ensemble", action="store_true", help="skip the ensemble solve")
    parser.add_argument("--plain-keep-all", action="store_true",
                        help="the plain script keeps every DAOStarFinder detection (default: as many as obsdb's)")
    return parser


def measure(args: argparse.Namespace) -> tuple[str, list[Row], list[str]]:
    """Run everything; the table's title, rows and the notes below it (accuracy, targets)."""
    if args.frames < 1 or args.rows < 1 or args.repeat < 1:
        raise SystemExit("--frames, --rows and --repeat must be at least 1")
    baseline = not args.no_baseline
    # Both chains run with the allocator settings of obsdb's workers.
    allocator = "the workers' (obsdb.pipeline.memory)" if keep_freed_memory() else "the C library's defaults"

    with scratch_database() as engine:
        fx = prepare_database(engine, 2 * args.frames + 4 * args.repeat, max(args.rows, 3 * args.stars + 1000))
        per_frame = []
        for k in range(args.frames):
            t0 = time.perf_counter()
            per_frame.append(run_frame(engine, fx, k, args.size, args.stars, baseline, args.plain_keep_all))
            print(f"frame {k + 1}/{args.frames} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rates = rows_per_second(engine, fx, [f["rows"] for f in per_frame], args.rows, args.repeat,
                                2 * args.frames, baseline)
    ens = None if args.no_ensemble else ensemble_seconds(args.ensemble_stars, args.ensemble_frames)

    def med(chain: str, key: str) -> float | None:
        if chain not in per_frame[0]:
            return None
        return float(np.median([f[chain][key] for f in per_frame]))

    steps = [
        ("detection: background + detect + PSF (sep / Background2D + DAOStarFinder)", "detection"),
        ("astrometry: refine_wcs (astroalign + fit_wcs_from_points)", "astrometry"),
        ("photometry: 4 apertures + clipped annulus (ApertureStats + aperture_photometry)", "photometry"),
        ("database write: COPY (ORM session.add per row, commit)", "write"),
        ("detection to database, per frame", "total"),
    ]
    rows = [Row(label, med("obsdb", key), med("plain", key), "s", higher_is_better=False) for label, key in steps]
    rows.append(Row(f"measurement rows/s, {args.rows:,} rows: COPY (Copy.write_row)", rates["copy"],
                    rates["write_row"] if baseline else None, "rows/s"))
    rows.append(Row("  the same COPY, references checked per row by foreign keys", rates["row_fk"], None, "rows/s"))
    rows.append(Row("  the same COPY, references not checked", rates["no_check"], None, "rows/s"))
    if ens is not None:
        rows.append(Row(f"ensemble solve, {args.ensemble_stars} stars x {args.ensemble_frames} frames", ens[0], None,
                        "s", higher_is_better=False))
    title = (f"Detection to database per frame ({args.size}x{args.size}, {args.stars} stars, median of "
             f"{args.frames} frames, one core) beside a plain photutils + astroalign + ORM script")

    n_det = int(np.median([f["n_obsdb"] for f in per_frame]))
    steps_s = " + ".join(f"{key} {np.median([f['obsdb_steps'][key] for f in per_frame]):.3g} s"
                         for key in ("background", "detect", "psf"))
    notes = [f"obsdb: {n_det} detections per frame (median), client CPU "
             f"{np.median([f['obsdb_cpu'] for f in per_frame]):.3g} s per frame; detection = {steps_s}; astrometry "
             f"{int(np.median([f['matches_obsdb'] for f in per_frame]))} matches, rms vs truth "
             f"{np.median([f['rms_obsdb'] for f in per_frame]):.4f} px"]
    if baseline:
        notes.append(f"plain: {int(np.median([f['n_plain'] for f in per_frame]))} of "
                     f"{int(np.median([f['n_plain_all'] for f in per_frame]))} DAOStarFinder detections per frame; "
                     f"client CPU {np.median([f['plain_cpu'] for f in per_frame]):.3g} s per frame "
                     f"({np.median([f['plain_cpu'] / f['obsdb_cpu'] for f in per_frame]):.1f}x obsdb's); "
                     f"astrometry rms vs truth {np.median([f['rms_plain'] for f in per_frame]):.4f} px")
    if ens is not None:
        notes.append(f"ensemble: {ens[1]:,} observations")
    notes.append(f"memory allocator, both chains: {allocator}")

    total, plain_total = med("obsdb", "total"), med("plain", "total")
    checks = [(f"detection to database <= {TARGET_FRAME_S:g} s per frame per core", f"{total:.3g} s",
               total <= TARGET_FRAME_S)]
    if plain_total is not None:
        checks.append((f"at least {TARGET_RATIO:g}x faster than the plain script", f"{plain_total / total:.1f}x",
                       plain_total / total >= TARGET_RATIO))
    checks.append((f">= {TARGET_ROWS_S:,.0f} measurement rows/s (COPY)", f"{rates['copy']:,.0f} rows/s",
                   rates["copy"] >= TARGET_ROWS_S))
    if ens is not None:
        checks.append((f"ensemble solve < {TARGET_ENSEMBLE_S:g} s", f"{ens[0]:.3g} s", ens[0] < TARGET_ENSEMBLE_S))
    notes.append("\ntargets:")
    notes += [f"  {'met    ' if ok else 'NOT MET'}  {label}: {value}" for label, value, ok in checks]
    return title, rows, notes


#: ``run(quick)`` for ``python -m benchmarks``; ``main(argv)`` when run alone.
run, main = entry_points(measure, _parser, QUICK, FULL)


if __name__ == "__main__":
    main()
