"""Reference catalog benchmark: bulk load, then cone searches against a plain box query.

    python -m benchmarks.bench_refcat [--stars 10000000] [--format fits|csv] [--cones 100]

1. Generates a seeded all-sky catalog (numpy; uniform on the sphere, like a shallow
   all-sky survey; ``--patch-deg D`` puts it all in a D×D degree patch instead, like a
   deep field) with ids, proper motions and g, r, i magnitudes and errors (5 % missing),
   and writes it as a FITS binary table (default) or CSV.
2. Loads it as a separate process through ``load_refcat`` (what ``obsdb refcat load``
   runs), timing it and recording the process's peak resident memory.
3. Times the COPY encoding on its own: numpy-built binary COPY rows (obsdb) against
   psycopg's ``Copy.write_row`` with binary types (one Python tuple per row).
4. Times cone searches of 1', 10' and 1° at ``--cones`` random centres, in the database
   (EXPLAIN ANALYZE, TIMING OFF: execution + planning time) and end to end (query + fetch from
   Python), with ``obsdb_refcat_cone`` (HEALPix ranges) against the same cone done as a
   RA/Dec box on a btree index over (refcat_id, dec) plus the exact distance. Both must
   return the same stars. JIT is off for both (obsdb's function turns it off itself).

Uses the server in OBSDB_DATABASE_URL (a scratch database, dropped at the end), or an
embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg.types.numeric import Float4

from benchmarks.common import Row, print_table, scratch_database, timed

BANDS = ("g", "r", "i")


def generate(n: int, seed: int, patch_deg: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if patch_deg > 0:
        ra = rng.uniform(150.0, 150.0 + patch_deg, n)
        dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(-patch_deg / 2)),
                                                math.sin(math.radians(patch_deg / 2)), n)))
    else:
        ra = rng.uniform(0.0, 360.0, n)
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    cols = {
        "source_id": rng.integers(0, 2**62, n),
        "ra": ra,
        "dec": dec,
        "pmra": rng.normal(0.0, 5.0, n).astype(np.float32),
        "pmdec": rng.normal(0.0, 5.0, n).astype(np.float32),
    }
    for band in BANDS:
        mag = rng.uniform(10.0, 21.0, n).astype(np.float32)
        mag[rng.random(n) < 0.05] = np.nan
        cols[band] = mag
        cols[f"{band}_err"] = (0.001 + 0.1 * np.exp(mag - 21.0)).astype(np.float32)
    return cols


def write_catalog(cols: dict[str, np.ndarray], path: Path, fmt: str) -> None:
    from astropy.table import Table

    table = Table(cols, copy=False)
    if fmt == "fits":
        table.write(path, format="fits", overwrite=True)
    else:
        table.write(path, format="ascii.csv", overwrite=True, fast_writer=True)


_LOADER = """
import json, sys
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker
from obsdb.catalog.refcat import BandColumns, ColumnMap, load_refcat
url, path, name = sys.argv[1:4]
columns = ColumnMap(ra="ra", dec="dec", id="source_id", pm_ra="pmra", pm_dec="pmdec", epoch=2016.0,
                    bands=tuple(BandColumns(b, b, b + "_err") for b in ("g", "r", "i")))
engine = create_engine(url)
with sessionmaker(engine)() as session, session.begin():
    result = load_refcat(session, path, name, columns)
# VmHWM, not getrusage: ru_maxrss would include the benchmark's own memory, which a
# forked child counts until it execs.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"n": result.n_stars, "seconds": result.seconds, "phases": result.phases,
                  "maxrss_mb": hwm / 1024}))
"""


def load_in_child(url: str, path: Path, name: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LOADER, url, str(path), name],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the load failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def copy_encoding(conn: psycopg.Connection, cols: dict[str, np.ndarray], n: int) -> tuple[float, float]:
    """rows/s of COPY into an unindexed temp table: numpy binary rows vs write_row."""
    from obsdb.catalog.healpix import healpix_index
    from obsdb.catalog.refcat import PGCOPY_HEADER, PGCOPY_TRAILER, STAGE_COLUMNS, CopyColumn, encode_copy_rows

    ra, dec = cols["ra"][:n], cols["dec"][:n]
    hp = healpix_index(ra, dec)
    mags = np.stack([cols[b][:n] for b in BANDS], axis=1)
    errs = np.stack([cols[f"{b}_err"][:n] for b in BANDS], axis=1)
    ids = cols["source_id"][:n].astype("S20")
    star_id = np.arange(1, n + 1, dtype=np.int64)
    conn.execute("CREATE TEMP TABLE bench_copy (LIKE refcat_stars)")
    statement = f"COPY bench_copy ({', '.join(STAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"

    with conn.cursor() as cur, timed() as t_numpy:
        with cur.copy(statement) as cp:
            cp.write(PGCOPY_HEADER)
            for s in range(0, n, 250_000):
                e = min(n, s + 250_000)
                columns = [
                    CopyColumn("int8", star_id[s:e]), CopyColumn("int8", hp[s:e]), CopyColumn("float8", ra[s:e]),
                    CopyColumn("float8", dec[s:e]), CopyColumn("int4", np.ones(e - s, np.int32)),
                    CopyColumn("float4", cols["pmra"][s:e]), CopyColumn("float4", cols["pmdec"][s:e]),
                    CopyColumn("text", ids[s:e]), CopyColumn("float4[]", mags[s:e]), CopyColumn("float4[]", errs[s:e]),
                ]
                cp.write(encode_copy_rows(columns, e - s))
            cp.write(PGCOPY_TRAILER)
    conn.execute("TRUNCATE bench_copy")

    with conn.cursor() as cur, timed() as t_rows:
        with cur.copy(statement) as cp:
            cp.set_types(["int8", "int8", "float8", "float8", "int4", "float4", "float4", "text",
                          "float4[]", "float4[]"])
            pmra, pmdec = cols["pmra"][:n].tolist(), cols["pmdec"][:n].tolist()
            ml, el = mags.tolist(), errs.tolist()
            for i, (sid, h, a, d) in enumerate(zip(star_id.tolist(), hp.tolist(), ra.tolist(), dec.tolist(),
                                                   strict=True)):
                cp.write_row((sid, h, a, d, 1, _f4(pmra[i]), _f4(pmdec[i]), ids[i].decode(),
                              [_f4(v) for v in ml[i]], [_f4(v) for v in el[i]]))
    conn.execute("DROP TABLE bench_copy")
    conn.commit()
    return n / t_numpy[0], n / t_rows[0]


def _f4(v: float):
    return None if v != v else Float4(v)


def box_query(refcat_id: int, ra: float, dec: float, r: float) -> tuple[str, tuple]:
    """The same cone as an RA/Dec box on the (refcat_id, dec) btree, then the exact distance."""
    where = ["s.refcat_id = %s", "s.dec BETWEEN %s AND %s"]
    params: list = [refcat_id, dec - r, dec + r]
    if abs(dec) + r < 90.0:
        dra = math.degrees(math.asin(min(1.0, math.sin(math.radians(r)) / math.cos(math.radians(dec)))))
        lo, hi = ra - dra, ra + dra
        if lo < 0.0:
            where.append("(s.ra >= %s OR s.ra <= %s)")
            params += [lo + 360.0, hi]
        elif hi >= 360.0:
            where.append("(s.ra >= %s OR s.ra <= %s)")
            params += [lo, hi - 360.0]
        else:
            where.append("s.ra BETWEEN %s AND %s")
            params += [lo, hi]
    where.append("obsdb_ang_sep_deg(%s, %s, s.ra, s.dec) <= %s")
    params += [ra, dec, r]
    sql = ("SELECT s.star_id, s.catalog_id, s.ra, s.dec, s.pm_ra, s.pm_dec, s.mag, s.mag_err, "
           "3600.0 * obsdb_ang_sep_deg(%s, %s, s.ra, s.dec) AS sep FROM refcat_stars s WHERE "
           + " AND ".join(where) + " ORDER BY sep, s.star_id")
    return sql, (ra, dec, *params)


def explain_ms(conn: psycopg.Connection, sql: str, params) -> float:
    plan = conn.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params).fetchone()[0][0]
    return plan["Execution Time"] + plan.get("Planning Time", 0.0)


def fetch_ms(conn: psycopg.Connection, sql: str, params) -> tuple[float, int]:
    start = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return (time.perf_counter() - start) * 1e3, len(rows)


FULL = ["--stars", "10000000"]
QUICK = ["--stars", "200000", "--cones", "20", "--copy-rows", "100000"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stars", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("fits", "csv"), default="fits")
    parser.add_argument("--cones", type=int, default=100, help="random centres per radius")
    parser.add_argument("--patch-deg", type=float, default=0.0, help="all stars in a square patch this wide")
    parser.add_argument("--copy-rows", type=int, default=500_000, help="rows for the COPY encoding comparison")
    parser.add_argument("--seed", type=int, default=1)
    return parser


def measure(args: argparse.Namespace) -> tuple[str, list[Row]]:
    """Generate, load, time COPY and the cones; the table's title and rows."""

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="obsdb-bench-refcat-") as tmp:
        path = Path(tmp) / f"catalog.{args.format}"
        cols = generate(args.stars, args.seed, args.patch_deg)
        with timed() as t_write:
            write_catalog(cols, path, args.format)
        print(f"{args.stars:,} stars written as {args.format.upper()} ({path.stat().st_size / 1e6:,.0f} MB) "
              f"in {t_write[0]:.1f} s", flush=True)

        with scratch_database() as engine:
            url = engine.url.render_as_string(hide_password=False)
            load = load_in_child(url, path, "bench")
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in load["phases"].items())
            print(f"loaded in {load['seconds']:.1f} s ({phases}); peak RSS {load['maxrss_mb']:.0f} MB", flush=True)
            rows.append(Row("load: file → indexed table", args.stars / load["seconds"], None, "stars/s"))
            rows.append(Row("load: peak RSS of the loading process", load["maxrss_mb"], None, "MB",
                            higher_is_better=False))

            libpq = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(libpq) as conn:
                n_copy = min(args.copy_rows, args.stars)
                numpy_rate, row_rate = copy_encoding(conn, cols, n_copy)
                rows.append(Row(f"COPY {n_copy:,} rows: numpy binary vs write_row", numpy_rate, row_rate, "rows/s"))
                del cols

                sizes = conn.execute("SELECT pg_size_pretty(pg_relation_size('refcat_stars')), "
                                     "pg_size_pretty(pg_indexes_size('refcat_stars'))").fetchone()
                with timed() as t_index:
                    conn.execute("CREATE INDEX bench_refcat_stars_dec ON refcat_stars (refcat_id, dec)")
                    conn.execute("ANALYZE refcat_stars")
                    conn.commit()
                print(f"refcat_stars: heap {sizes[0]}, indexes {sizes[1]}; baseline btree on (refcat_id, dec) "
                      f"built in {t_index[0]:.1f} s", flush=True)
                conn.execute("SET jit = off")
                refcat_id = conn.execute("SELECT id FROM refcats WHERE name = 'bench'").fetchone()[0]
                rng = np.random.default_rng(args.seed + 1)
                if args.patch_deg > 0:
                    margin = min(1.0, args.patch_deg / 4)
                    centres = [(float(rng.uniform(150.0 + margin, 150.0 + args.patch_deg - margin)),
                                float(rng.uniform(-args.patch_deg / 2 + margin, args.patch_deg / 2 - margin)))
                               for _ in range(args.cones)]
                else:
                    centres = [(float(rng.uniform(0.0, 360.0)), float(np.degrees(np.arcsin(rng.uniform(-1.0, 1.0)))))
                               for _ in range(args.cones)]
                from sqlalchemy.orm import Session

                from obsdb.catalog.cone import cone_search

                for label, radius in (("1'", 1.0 / 60), ("10'", 10.0 / 60), ("1°", 1.0)):
                    ours_db, ours_e2e, base_db, base_e2e, counts, py = [], [], [], [], [], []
                    for ra, dec in centres:  # warm-up pass: both queries read their pages once
                        conn.execute("SELECT * FROM obsdb_refcat_cone('bench', %s, %s, %s)", (ra, dec, radius))
                        conn.execute(*box_query(refcat_id, ra, dec, radius))
                    with Session(engine) as session:
                        for ra, dec in centres:
                            q, p = "SELECT * FROM obsdb_refcat_cone('bench', %s, %s, %s)", (ra, dec, radius)
                            bq, bp = box_query(refcat_id, ra, dec, radius)
                            ours_db.append(explain_ms(conn, q, p))
                            base_db.append(explain_ms(conn, bq, bp))
                            ms, n_ours = fetch_ms(conn, q, p)
                            ours_e2e.append(ms)
                            ms, n_base = fetch_ms(conn, bq, bp)
                            base_e2e.append(ms)
                            if n_ours != n_base:
                                raise SystemExit(f"cone ({ra}, {dec}, {radius}): {n_ours} stars, box query {n_base}")
                            counts.append(n_ours)
                            start = time.perf_counter()
                            cone_search(session, "bench", ra, dec, radius)
                            py.append((time.perf_counter() - start) * 1e3)
                    print(f"cone {label}: {statistics.mean(counts):,.1f} stars on average; p90 in-db "
                          f"{np.percentile(ours_db, 90):.2f} ms vs {np.percentile(base_db, 90):.2f} ms", flush=True)
                    rows.append(Row(f"cone {label}: in-db time, median", statistics.median(ours_db),
                                    statistics.median(base_db), "ms", higher_is_better=False))
                    rows.append(Row(f"cone {label}: end to end (query + fetch), median", statistics.median(ours_e2e),
                                    statistics.median(base_e2e), "ms", higher_is_better=False))
                    rows.append(Row(f"cone {label}: cone_search() → astropy Table, median", statistics.median(py),
                                    None, "ms", higher_is_better=False))
    where = f"{args.patch_deg:g}° patch" if args.patch_deg > 0 else "all sky"
    return (f"reference catalog: {args.stars:,} stars ({where}), {args.format.upper()}; cones at {args.cones} "
            f"random centres; baseline: RA/Dec box on a btree (refcat_id, dec) / psycopg write_row", rows)


def run(quick: bool = False) -> list[Row]:
    """The rows of ``python -m benchmarks``: ``FULL`` (10 M stars), or ``QUICK`` with ``quick``."""
    return measure(_parser().parse_args(QUICK if quick else FULL))[1]


def main(argv: list[str] | None = None) -> None:
    print_table(*measure(_parser().parse_args(argv)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
