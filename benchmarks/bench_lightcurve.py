"""Light-curve and cone-search latency on a bulk-generated catalog.

Usage::

    python -m benchmarks.bench_lightcurve [--measurements 10000000] [--sources 100000]
                                          [--points 1000] [--repeat 7] [--keep]

A scratch database on ``OBSDB_DATABASE_URL``'s server (default: the local server
``postgresql://postgres@127.0.0.1:5432/postgres``; created here and dropped at the end,
unless ``--keep``) is filled in SQL (``generate_series``; sources by COPY from numpy):

- 100 fields of ``sources / 100`` stars each, spread over the sky; field 0 is observed on
  ``points`` frames, the others share the remaining frames, so that there are
  ``measurements`` rows in all and every star of field 0 has a ``points``-point light
  curve. Frames are interleaved in time (every tenth frame is field 0), and measurements
  are written frame by frame as the pipeline writes them: one light curve's rows lie on
  as many different heap pages as it has points, the realistic worst case.
- frames, reductions, frame solutions and zero points for every frame, so that the light
  curve goes through ``v_lightcurve`` and its joins exactly as ``obsdb lc`` does.

Measured, each as the median of ``--repeat`` runs, and beside the same query with the
index it uses dropped (the baseline); times are planning + execution from
``EXPLAIN (ANALYZE, TIMING OFF)``:

- the light-curve statement of ``obsdb.lightcurves.get`` (``lightcurve_query``) for one
  1,000-point star, in a warm session, its first run, and as the first statement of a
  new connection (what each ``obsdb lc`` pays: catalog caches are cold);
- the position lookup of ``obsdb lc`` (``cone_query``: HEALPix ranges computed in Python,
  2 arcsec) in a new connection; the sum of the two is "obsdb lc in the database";
- the SQL function ``obsdb_source_cone`` as researchers call it, 2 arcsec and 1 arcmin in
  a warm session, and its first call in a new connection (which compiles the PL/pgSQL
  HEALPix functions of migration 0003);
- ``obsdb lc RA DEC --format csv`` as a subprocess (Python start included), and
  ``obsdb --version`` (Python start and imports only) for the breakdown.

Indexes used: ``ix_measurements_source_frame`` (source_id, frame_id) for the light curve,
the primary keys of frames, frame_solutions and zeropoints for its joins, and
``ix_sources_healpix`` for the cone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OBSDB_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from benchmarks.common import Row, entry_points, scratch_database  # noqa: E402
from obsdb.catalog.healpix import healpix_index  # noqa: E402
from obsdb.lightcurves.core import cone_query, lightcurve_query  # noqa: E402

N_FIELDS = 100
APERTURES = "{3,4,6,8,10}"


def _step(label: str, start: float) -> float:
    now = time.perf_counter()
    print(f"  {label}: {now - start:.1f} s", flush=True)
    return now


def generate(engine, n_measurements: int, n_sources: int, points: int, seed: int = 1) -> dict:
    """Fill the scratch database; returns the layout."""
    per_field = n_sources // N_FIELDS
    n_sources = per_field * N_FIELDS
    other_frames = max(0, (n_measurements - points * per_field) // per_field)
    n_frames = points + other_frames
    every = max(1, round(n_frames / points))  # field 0 on every `every`-th frame
    print(f"generating {n_sources:,} sources in {N_FIELDS} fields, {n_frames:,} frames, "
          f"~{n_frames * per_field:,} measurements", flush=True)
    rng = np.random.default_rng(seed)
    t0 = t = time.perf_counter()
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        conn.autocommit = True
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SELECT setseed(0.5)")
        conn.execute("INSERT INTO instruments (id, name, profile) VALUES (1, 'benchcam', 'generic')")
        # Field of each frame: field 0 on every `every`-th frame (exactly `points` of them), the
        # others in rotation.
        conn.execute(
            "CREATE TABLE bench_frames AS SELECT i AS id, "
            "CASE WHEN i %% %(every)s = 0 AND i / %(every)s <= %(points)s THEN 0 "
            "     ELSE 1 + (i %% %(nf1)s) END AS field, 60000.0 + i * 0.0104 AS mjd "
            "FROM generate_series(1, %(n)s) AS i",
            {"every": every, "points": points, "nf1": N_FIELDS - 1, "n": n_frames})
        n0 = conn.execute("SELECT count(*) FROM bench_frames WHERE field = 0").fetchone()[0]
        if n0 < points:  # top up field 0 from the end so that it has exactly `points` frames
            conn.execute("UPDATE bench_frames SET field = 0 WHERE id IN (SELECT id FROM bench_frames "
                         "WHERE field <> 0 ORDER BY id DESC LIMIT %s)", (points - n0,))
        conn.execute(
            "INSERT INTO frames (id, instrument_id, path, sha256, size_bytes, file_mtime, header, imagetyp, object, "
            "filter, exptime, naxis1, naxis2, date_obs, mjd_start, mjd_mid, night, ra, dec, airmass, has_wcs, "
            "pixel_scale, state) "
            "SELECT b.id, 1, '/data/bench/frame_' || lpad(b.id::text, 6, '0') || '.fits', lpad(to_hex(b.id), 64, '0'), "
            "8000000, now(), '{}'::jsonb, 'light', 'F' || b.field, CASE WHEN b.id % 2 = 0 THEN 'V' ELSE 'R' END, "
            "60, 2048, 2048, timestamptz '1858-11-17 00:00:00+00' + b.mjd * interval '1 day', b.mjd - 0.0003, "
            "b.mjd, date '1858-11-17' + floor(b.mjd - 0.5)::int, 0, 0, 1.0 + random(), true, 0.8, 'measured' "
            "FROM bench_frames AS b")
        conn.execute(
            "INSERT INTO reductions (id, frame_id, path, steps, sky, sky_rms, obsdb_version, config_hash) "
            "SELECT id, id, '/products/' || id || '.fits', '{bias,flat}', 300, 12, 'bench', 'x' FROM frames")
        conn.execute(
            "INSERT INTO frame_solutions (frame_id, reduction_id, field, wcs_header, method, ra_center, dec_center, "
            "radius_deg, pixel_scale, fwhm, sky, sky_rms, n_detections, aperture_correction, apertures, "
            "aperture_index, annulus, airmass, mjd_mid, obsdb_version, config_hash) "
            f"SELECT f.id, f.id, f.object, '', 'refcat', 0, 0, 0.4, 0.8, 2.5 + random(), 300, 12, 1000, -0.05, "
            f"'{APERTURES}', 2, '{{15,25}}', f.airmass, f.mjd_mid, 'bench', 'x' FROM frames AS f")
        conn.execute(
            "INSERT INTO zeropoints (frame_id, filter, band, zp, zp_err, n_stars, ensemble_zp, ensemble_zp_err, "
            "lim_mag_3, lim_mag_5, lim_mag_10) SELECT id, filter, filter, 25 + 0.01 * random(), 0.01, 50, "
            "25 + 0.01 * random(), 0.003, 20.5, 20, 19.2 FROM frames")
        t = _step(f"{n_frames:,} frames with reductions, solutions and zero points", t)

        # Sources: field centres over the sky, stars within 0.25 deg; ids field * per_field + 1 ...
        k = np.arange(N_FIELDS)
        centre_ra, centre_dec = (k * 3.6 + 1.0) % 360.0, -30.0 + (k % 10) * 8.0 + 0.5
        r = 0.25 * np.sqrt(rng.uniform(0, 1, (N_FIELDS, per_field)))
        phi = rng.uniform(0, 2 * np.pi, (N_FIELDS, per_field))
        dec = centre_dec[:, None] + r * np.sin(phi)
        ra = (centre_ra[:, None] + r * np.cos(phi) / np.cos(np.radians(dec))) % 360.0
        ra, dec = ra.ravel(), dec.ravel()
        hp = healpix_index(ra, dec)
        ids = np.arange(1, n_sources + 1)
        with conn.cursor() as cur, cur.copy("COPY sources (id, ra, dec, healpix) FROM STDIN") as cp:
            for row in zip(ids.tolist(), ra.tolist(), dec.tolist(), hp.tolist(), strict=True):
                cp.write_row(row)
        conn.execute("CREATE TEMP TABLE bench_sources AS SELECT id, ra, dec, 12.0 + (id * 7919 % 1000) / 160.0 AS mag "
                     "FROM sources")
        conn.execute("ANALYZE bench_sources")
        t = _step(f"{n_sources:,} sources (COPY)", t)

        # Measurements without their indexes, frame by frame, then the indexes in one pass each.
        conn.execute("ALTER TABLE measurements DROP CONSTRAINT pk_measurements")
        conn.execute("DROP INDEX ix_measurements_source_frame")
        conn.execute("DROP INDEX ix_measurements_frame")
        conn.execute("ALTER TABLE measurements DROP CONSTRAINT fk_measurements_frame_id_frames")
        conn.execute("ALTER TABLE measurements DROP CONSTRAINT fk_measurements_source_id_sources")
        chunk = max(1, n_frames // 10)
        for lo in range(1, n_frames + 1, chunk):
            conn.execute(
                "INSERT INTO measurements (frame_id, source_id, x, y, ra, dec, mjd, bjd_tdb, fluxes, flux_errs, "
                "flux, flux_err, background, snr, inst_mag, inst_mag_err, mag, mag_err, flags, forced) "
                "SELECT b.id, s.id, (s.id %% 2048)::real, (s.id / 37 %% 2048)::real, s.ra, s.dec, b.mjd, "
                "b.mjd + 2400000.5 + 0.004, "
                "ARRAY[v.fl * 0.62, v.fl * 0.81, v.fl, v.fl * 1.04, v.fl * 1.06]::real[], "
                "ARRAY[v.e * 0.8, v.e * 0.9, v.e, v.e * 1.3, v.e * 1.6]::real[], "
                "v.fl, v.e, 300, v.fl / v.e, -2.5 * log(v.fl) - 0.05, 1.0857 * v.e / v.fl, "
                "-2.5 * log(v.fl) - 0.05 + 25, 1.0857 * v.e / v.fl + 0.003, 0, false "
                "FROM bench_frames AS b "
                "CROSS JOIN LATERAL generate_series(b.field * %(per)s + 1, b.field * %(per)s + %(per)s) AS g(sid) "
                "JOIN bench_sources AS s ON s.id = g.sid "
                "CROSS JOIN LATERAL (SELECT 10 ^ (-0.4 * (s.mag - 25)) * (1 + 0.01 * (random() - 0.5)) AS fl, "
                "                           sqrt(10 ^ (-0.4 * (s.mag - 25)) + 4e4) AS e) AS v "
                "WHERE b.id BETWEEN %(lo)s AND %(hi)s",
                {"per": per_field, "lo": lo, "hi": min(lo + chunk - 1, n_frames)})
            print(f"    measurements of frames {lo:,}..{min(lo + chunk - 1, n_frames):,}: "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        t = _step("measurements (INSERT ... SELECT generate_series)", t)
        conn.execute("ALTER TABLE measurements ADD CONSTRAINT pk_measurements PRIMARY KEY (id)")
        conn.execute("CREATE UNIQUE INDEX ix_measurements_source_frame ON measurements (source_id, frame_id)")
        conn.execute("CREATE INDEX ix_measurements_frame ON measurements (frame_id)")
        conn.execute("ALTER TABLE measurements ADD CONSTRAINT fk_measurements_frame_id_frames FOREIGN KEY (frame_id) "
                     "REFERENCES frames (id) ON DELETE CASCADE NOT VALID")
        conn.execute("ALTER TABLE measurements ADD CONSTRAINT fk_measurements_source_id_sources FOREIGN KEY "
                     "(source_id) REFERENCES sources (id) ON DELETE CASCADE NOT VALID")
        t = _step("primary key and indexes", t)
        conn.execute("VACUUM (ANALYZE) measurements")
        conn.execute("VACUUM (ANALYZE) sources")
        conn.execute("ANALYZE")
        t = _step("VACUUM ANALYZE", t)
        n = conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('measurements'))").fetchone()[0]
        star = per_field // 2  # a star of field 0
        pos = conn.execute("SELECT ra, dec FROM sources WHERE id = %s", (star,)).fetchone()
        npts = conn.execute("SELECT count(*) FROM measurements WHERE source_id = %s", (star,)).fetchone()[0]
    finally:
        raw.close()
    print(f"  total: {time.perf_counter() - t0:.0f} s for {n:,} measurements ({size})", flush=True)
    return {"n_measurements": n, "n_sources": n_sources, "n_frames": n_frames, "star": star, "ra": pos[0],
            "dec": pos[1], "points": npts, "generate_seconds": time.perf_counter() - t0, "size": size}


def explain_ms(engine, sql: str, params: dict) -> tuple[float, dict]:
    """Planning + execution time (ms) of one run, and the plan.

    ``TIMING OFF``: per-node clocks around thousands of index probes would add about
    half again to the very time measured; the total is still timed by the server.
    """
    with Session(engine) as session:
        plan = session.execute(text("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql), params).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    top = plan[0]
    return top["Planning Time"] + top["Execution Time"], top


def fresh_connection_ms(engine, sql: str, params: dict, repeat: int) -> float:
    """Median planning + execution time of the statement as the first one of a new
    connection, as ``obsdb lc`` runs it (PL/pgSQL functions are compiled once per session)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    fresh = create_engine(engine.url, poolclass=NullPool)
    try:
        return statistics.median(explain_ms(fresh, sql, params)[0] for _ in range(repeat))
    finally:
        fresh.dispose()


def timed_queries(engine, sql: str, params: dict, repeat: int) -> tuple[float, float, dict]:
    """(first run ms, median of the next `repeat` runs ms, last plan)."""
    first, plan = explain_ms(engine, sql, params)
    runs = []
    for _ in range(repeat):
        ms, plan = explain_ms(engine, sql, params)
        runs.append(ms)
    return first, statistics.median(runs), plan


def command_seconds(args: list[str], env: dict, repeat: int) -> float:
    script = Path(sys.executable).with_name("obsdb")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "obsdb.cli.main"]
    runs = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        subprocess.run([*cmd, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs[1:])


def _nodes(plan: dict) -> list[str]:
    out = [plan.get("Node Type", "") + (f" on {plan['Index Name']}" if "Index Name" in plan else "")
           + (f" on {plan['Relation Name']}" if "Relation Name" in plan and "Index Name" not in plan else "")]
    for child in plan.get("Plans", []):
        out += _nodes(child)
    return out


QUICK = ["--measurements", "300000", "--sources", "10000", "--points", "200", "--repeat", "3"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measurements", type=int, default=10_000_000)
    parser.add_argument("--sources", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="Do not drop the scratch database (prints its URL).")
    return parser


def measure(args: argparse.Namespace) -> tuple[str, list[Row], list[str]]:
    """Generate the catalog, time the queries with and without their indexes; the table's
    title, rows and the notes below it."""

    with scratch_database() as engine, tempfile.TemporaryDirectory(prefix="obsdb-bench-home-") as home:
        layout = generate(engine, args.measurements, args.sources, args.points)
        url = engine.url.render_as_string(hide_password=False)
        ra, dec, star = layout["ra"], layout["dec"], layout["star"]
        lc_sql, lc_params = lightcurve_query(star)
        cone2_sql, cone2_params = cone_query(ra, dec, 2.0)  # as obsdb lc resolves a position
        fn_sql = "SELECT * FROM obsdb_source_cone(:ra, :dec, :radius)"  # as a researcher calls it
        fn2_params = {"ra": ra, "dec": dec, "radius": 2.0 / 3600}
        fn60_params = {"ra": ra, "dec": dec, "radius": 60.0 / 3600}
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSDB_")}
        env.update(OBSDB_DATABASE_URL=url, OBSDB_HOME=home)
        lc_args = ["lc", f"{ra:.7f}", f"{dec:.7f}", "--format", "csv"]

        with Session(engine) as session:  # the command's answer, checked once
            n_rows = len(session.execute(text(lc_sql), lc_params).all())
            n_cone = len(session.execute(text(fn_sql), fn60_params).all())
        print(f"\nlight curve of source {star} at {ra:.6f} {dec:+.6f}: {n_rows} points; "
              f"{n_cone} sources within 1 arcmin", flush=True)
        lc_first, lc_ms, lc_plan = timed_queries(engine, lc_sql, lc_params, args.repeat)
        _, c2_ms, c2_plan = timed_queries(engine, cone2_sql, cone2_params, args.repeat)
        _, f2_ms, _ = timed_queries(engine, fn_sql, fn2_params, args.repeat)
        _, f60_ms, _ = timed_queries(engine, fn_sql, fn60_params, args.repeat)
        f2_fresh = fresh_connection_ms(engine, fn_sql, fn2_params, args.repeat)
        c2_fresh = fresh_connection_ms(engine, cone2_sql, cone2_params, args.repeat)
        lc_fresh = fresh_connection_ms(engine, lc_sql, lc_params, args.repeat)
        lc_cmd = command_seconds(lc_args, env, max(3, args.repeat // 2))
        version_cmd = command_seconds(["--version"], env, 3)
        print("plans: light curve:", " > ".join(_nodes(lc_plan["Plan"])))
        print("       cone:", " > ".join(_nodes(c2_plan["Plan"])), flush=True)

        raw = engine.raw_connection()
        try:
            raw.driver_connection.autocommit = True
            raw.driver_connection.execute("DROP INDEX ix_measurements_source_frame")
            raw.driver_connection.execute("DROP INDEX ix_sources_healpix")
        finally:
            raw.close()
        base_repeat = max(2, args.repeat // 3)
        b_lc_first, b_lc_ms, b_lc_plan = timed_queries(engine, lc_sql, lc_params, base_repeat)
        _, b_c2_ms, b_c2_plan = timed_queries(engine, cone2_sql, cone2_params, base_repeat)
        _, b_f2_ms, _ = timed_queries(engine, fn_sql, fn2_params, base_repeat)
        _, b_f60_ms, _ = timed_queries(engine, fn_sql, fn60_params, base_repeat)
        b_f2_fresh = fresh_connection_ms(engine, fn_sql, fn2_params, base_repeat)
        b_c2_fresh = fresh_connection_ms(engine, cone2_sql, cone2_params, base_repeat)
        b_lc_fresh = fresh_connection_ms(engine, lc_sql, lc_params, base_repeat)
        b_lc_cmd = command_seconds(lc_args, env, 1)
        print("baseline plans: light curve:", " > ".join(_nodes(b_lc_plan["Plan"])))
        print("                cone:", " > ".join(_nodes(b_c2_plan["Plan"])), flush=True)
        if args.keep:
            raw = engine.raw_connection()
            try:
                raw.driver_connection.autocommit = True
                raw.driver_connection.execute("CREATE UNIQUE INDEX ix_measurements_source_frame ON measurements "
                                              "(source_id, frame_id)")
                raw.driver_connection.execute("CREATE INDEX ix_sources_healpix ON sources (healpix)")
            finally:
                raw.close()
            print(f"kept: {url}")
            input("press Enter to drop the scratch database ...")

    rows = [
        Row(f"lc statement, {n_rows} points (warm session)", lc_ms, b_lc_ms, "ms", higher_is_better=False),
        Row("lc statement, first run", lc_first, b_lc_first, "ms", higher_is_better=False),
        Row("lc statement, new connection", lc_fresh, b_lc_fresh, "ms", higher_is_better=False),
        Row("lookup cone 2 arcsec as obsdb lc runs it, new conn.", c2_fresh, b_c2_fresh, "ms",
            higher_is_better=False),
        Row("obsdb lc in the database (lookup + lc, new conn.)", c2_fresh + lc_fresh, b_c2_fresh + b_lc_fresh, "ms",
            higher_is_better=False),
        Row("obsdb_source_cone 2 arcsec (warm session)", f2_ms, b_f2_ms, "ms", higher_is_better=False),
        Row("obsdb_source_cone 1 arcmin (warm session)", f60_ms, b_f60_ms, "ms", higher_is_better=False),
        Row("obsdb_source_cone 2 arcsec, first call of a conn.", f2_fresh, b_f2_fresh, "ms", higher_is_better=False),
        Row("obsdb lc RA DEC, whole command", lc_cmd, b_lc_cmd, "s", higher_is_better=False),
        Row("  of which obsdb --version (start, imports)", version_cmd, None, "s", higher_is_better=False),
    ]
    title = (f"obsdb lc on {layout['n_measurements']:,} measurements, {layout['n_sources']:,} sources, "
             f"{layout['n_frames']:,} frames ({layout['size']}; generated in {layout['generate_seconds']:.0f} s); "
             "baseline: the same queries without ix_measurements_source_frame and ix_sources_healpix")
    targets = [("obsdb lc in the database < 10 ms", lc_fresh + c2_fresh < 10),
               ("whole command < 1.5 s", lc_cmd < 1.5),
               ("cone < 5 ms (warm function, and the lookup of obsdb lc)", max(f2_ms, f60_ms, c2_fresh) < 5)]
    return title, rows, ["targets: " + ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets)]


#: ``run(quick)`` for ``python -m benchmarks``; ``main(argv)`` when run alone.
run, main = entry_points(measure, _parser, QUICK)


if __name__ == "__main__":
    main()
