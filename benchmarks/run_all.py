"""Every obsdb benchmark, each beside its baseline, in one table.

Usage::

    python -m benchmarks [--quick] [--only NAMES] [--skip NAMES] [--format text|markdown]
                         [--database-url URL] [--log FILE] [-v]

Runs, on generated data and each in its own Python process (so that one's memory, threads
and failures do not touch the others), every benchmark the issues ask for, with the
baseline each already runs side by side (a plain ccdproc / photutils / astroalign / ORM
script doing the same work, or the same query without obsdb's index):

{benches}

and prints ONE table: figure, obsdb, baseline, ratio (> 1 when obsdb is better), under a
line naming the machine (CPU model, cores, RAM, OS, Python, PostgreSQL). Each section's
heading gives the command that reproduces it with its own, more detailed table.

Sizes. ``--quick``: small data, for a smoke run ({quick_minutes}). Without it: the sizes
the issues ask for -- 1,000 ingested 1024² frames, 2048² frames with 1,000 stars, 30-frame
masters, a 1,000 x 500 ensemble, a 10 M-star reference catalog, 10 M measurements for the
light curves, a 1024² night of 99 frames run twice per mode for the throughput.
Expected time of the full run: {full_minutes};
the two 10 M-row benchmarks take about 10 minutes of it (--skip refcat,lightcurve
leaves about {full_small_minutes}).

The database: a scratch database (created, dropped at the end) per benchmark on the
server of ``--database-url`` / ``OBSDB_DATABASE_URL``, by default the local server
``postgresql://postgres@127.0.0.1:5432/postgres`` when it answers, else an embedded
PostgreSQL (pgserver). The benchmarks' own progress and notes (accuracy, targets met) go
to ``--log`` (default: a file in the temporary directory, named at the end).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CHILD_MARK = "@@obsdb-bench-rows@@ "


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    what: str  # the module has run(quick) -> list[Row]; its QUICK / FULL argv name the sizes


BENCHES = (
    Bench("ingest", "benchmarks.bench_ingest",
          "ingest of simulated frames (obsdb: header-only read, one transaction per file); "
          "baseline: astropy full read + one ORM commit per file"),
    Bench("calibration", "benchmarks.bench_calibration",
          "reduce (bias, dark, flat, cosmic rays, write) and master bias; baseline: ccdproc "
          "(subtract_bias/dark, flat_correct, cosmicray_lacosmic; combine median)"),
    Bench("measure", "benchmarks.bench_measure",
          "per-frame photometry (sky, stars, PSF, apertures); baseline: photutils "
          "(Background2D, DAOStarFinder, ApertureStats, aperture_photometry)"),
    Bench("photometry", "benchmarks.bench_photometry",
          "detection to database per frame and measurement rows/s (database writes); baseline: "
          "photutils + astroalign + fit_wcs_from_points + one ORM object per row"),
    Bench("ensemble", "benchmarks.bench_ensemble",
          "ensemble zero points (m_ij = M_i + Z_j); baseline: scipy lsqr on the sparse design matrix "
          "+ 3 rounds of clipping"),
    Bench("refcat", "benchmarks.bench_refcat",
          "reference catalog load and cone queries; baseline: RA/Dec box on a btree (refcat_id, dec), "
          "psycopg Copy.write_row"),
    Bench("lightcurve", "benchmarks.bench_lightcurve",
          "light-curve and source cone queries, obsdb lc; baseline: the same queries without "
          "ix_measurements_source_frame and ix_sources_healpix"),
    Bench("throughput", "benchmarks.bench_throughput",
          "whole pipeline on a simulated night (ingest → masters → reduce → measure → ensemble), "
          "frames/min; baseline: 1 worker, ratio = 2 workers / 1 worker"),
)
NAMES = tuple(b.name for b in BENCHES)

# Measured on the 2-core machine of the README (for --help).
QUICK_MINUTES = "about 5 minutes"
FULL_MINUTES = "about 25 minutes on a quiet 2-core machine, up to twice that on a busy one"
FULL_SMALL_MINUTES = "15 minutes"


# -- the machine ----------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def postgres_version(url: str | None) -> str:
    """The server's version at ``url``, or the embedded PostgreSQL's."""
    if url:
        try:
            import psycopg
            from sqlalchemy.engine import make_url

            u = make_url(url).set(drivername="postgresql")
            with psycopg.connect(u.render_as_string(hide_password=False), connect_timeout=5) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
            return f"PostgreSQL {version.split(' ')[0]} (server {u.host or 'localhost'}:{u.port or 5432})"
        except Exception as exc:  # noqa: BLE001 - a description only
            return f"PostgreSQL at {url}: unreachable ({type(exc).__name__})"
    try:
        import pgserver

        binary = next(Path(pgserver.__file__).parent.glob("pginstall/bin/postgres"))
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
        return f"PostgreSQL {out.split()[-1]} (embedded, pgserver)"
    except Exception:  # noqa: BLE001
        return "PostgreSQL (embedded, version unknown)"


def describe_machine(url: str | None = None) -> str:
    """CPU model, cores, RAM, OS, Python and PostgreSQL, in one line."""
    url = url if url is not None else os.environ.get("OBSDB_DATABASE_URL")
    ram = _ram_gib()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: {_cpu_model()}, {usable} cores, {'?' if ram is None else f'{ram:.1f}'} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"{postgres_version(url)}; load average at the end {load:.2f}")


def _server_answers(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        return False


# -- one benchmark, in a child process --------------------------------------------------------

def child(name: str, quick: bool) -> None:
    """Run one benchmark here; its rows as one JSON line on the real stdout, all else on stderr."""
    bench = next(b for b in BENCHES if b.name == name)
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the bench's prints, and its subprocesses', go to stderr (the log)
    sys.stdout = sys.stderr
    module = importlib.import_module(bench.module)
    rows = [asdict(r) for r in module.run(quick)]
    args = getattr(module, "QUICK" if quick else "FULL", [])
    argv = list(args) if isinstance(args, list | tuple) else []
    real_stdout.write(CHILD_MARK + json.dumps({"rows": rows, "argv": argv}) + "\n")
    real_stdout.flush()


@dataclass
class Section:
    bench: Bench
    rows: list
    seconds: float
    error: str | None = None
    argv: tuple[str, ...] = ()


def run_child(bench: Bench, quick: bool, log, verbose: bool) -> Section:
    from benchmarks.common import Row

    cmd = [sys.executable, "-m", "benchmarks.run_all", "--child", bench.name] + (["--quick"] if quick else [])
    log.write(f"\n===== {bench.name}: {' '.join(cmd)} ({datetime.now(UTC):%H:%M:%S} UTC)\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    out_lines: list[str] = []
    tail: list[str] = []

    def pump_stderr() -> None:
        for line in proc.stderr:
            log.write(line)
            tail.append(line)
            del tail[:-40]
            if verbose:
                sys.stderr.write(f"  [{bench.name}] {line}")

    import threading

    reader = threading.Thread(target=pump_stderr, daemon=True)
    reader.start()
    for line in proc.stdout:
        out_lines.append(line)
    proc.wait()
    reader.join()
    log.flush()
    seconds = time.perf_counter() - start
    payload = next((line[len(CHILD_MARK):] for line in out_lines if line.startswith(CHILD_MARK)), None)
    if proc.returncode != 0 or payload is None:
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        return Section(bench, [], seconds, f"exit {proc.returncode}: {last}")
    data = json.loads(payload)
    return Section(bench, [Row(**r) for r in data["rows"]], seconds, argv=tuple(data["argv"]))


# -- the table --------------------------------------------------------------------------------

def _value(v: float | None, unit: str) -> str:
    if v is None:
        return ""
    return f"{v:,.3g} {unit}".strip()


def render(sections: list[Section], quick: bool, fmt: str, machine: str, seconds: float) -> str:
    title = (f"obsdb benchmarks{' (--quick: small sizes)' if quick else ''}, "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min")
    header = ("figure", "obsdb", "baseline", "ratio")
    body: list[tuple[str, ...] | str] = []
    for s in sections:
        command = " ".join(["python -m", s.bench.module, *s.argv])
        body.append(f"{s.bench.name}: {s.bench.what} [{command}; {s.seconds:.0f} s]")
        if s.error:
            body.append(("FAILED: " + s.error[:200], "", "", ""))
        for r in s.rows:
            body.append((r.figure, _value(r.obsdb, r.unit), _value(r.baseline, r.unit), r.ratio()))
    if fmt == "markdown":
        out = [f"{title}", "", machine, "", "| " + " | ".join(header) + " |", "|---|---:|---:|---:|"]
        for item in body:
            if isinstance(item, str):
                out.append(f"| **{item}** | | | |")
            else:
                out.append("| " + " | ".join(c.replace("|", "/") for c in item) + " |")
        out.append("")
        out.append("ratio: how many times better obsdb is (faster, smaller, more); blank where there is no baseline.")
        return "\n".join(out)
    cells = [item for item in body if not isinstance(item, str)]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    rule = "-+-".join("-" * w for w in widths)
    out = [title, machine, "", " | ".join(h.ljust(w) for h, w in zip(header, widths)), rule]
    for item in body:
        if isinstance(item, str):
            out.append(f"[{item}]")
        else:
            out.append(" | ".join(v.ljust(w) for v, w in zip(item, widths)).rstrip())
    out.append(rule)
    out.append("ratio: how many times better obsdb is (faster, smaller, more); blank where there is no baseline.")
    return "\n".join(out)


def format_table(title: str, rows: list, url: str | None = None) -> str:
    """One benchmark's rows as a text table under its title and the machine."""
    cells = [(r.figure, _value(r.obsdb, r.unit), _value(r.baseline, r.unit), r.ratio()) for r in rows]
    header = ("figure", "obsdb", "baseline", "ratio")
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    out = [title, describe_machine(url), "", " | ".join(h.ljust(w) for h, w in zip(header, widths)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() for c in cells]
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"- {b.name}: {b.what}" for b in BENCHES)
    doc = __doc__.format(benches=listing, quick_minutes=QUICK_MINUTES, full_minutes=FULL_MINUTES,
                         full_small_minutes=FULL_SMALL_MINUTES)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=doc.split("\n\n")[0],
                                     epilog="\n\n".join(p for p in doc.split("\n\n")[1:]
                                                         if not p.startswith(("Usage::", "    "))),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes, for a smoke run ({QUICK_MINUTES}; the full run takes {FULL_MINUTES})")
    parser.add_argument("--only", default="", help=f"comma-separated benchmarks to run, of: {', '.join(NAMES)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--format", choices=("text", "markdown"), default="text", help="the table's format")
    parser.add_argument("--database-url", default=None,
                        help=f"PostgreSQL server for the scratch databases (default: $OBSDB_DATABASE_URL, else "
                             f"{LOCAL_SERVER} if it answers, else embedded)")
    parser.add_argument("--log", type=Path, default=None, help="file for the benchmarks' own output")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the benchmarks' output as they run")
    parser.add_argument("--child", choices=NAMES, help=argparse.SUPPRESS)
    return parser


def _names(text: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick)
        return 0
    only, skip = _names(args.only, parser), _names(args.skip, parser)
    chosen = [b for b in BENCHES if (not only or b.name in only) and b.name not in skip]

    url = args.database_url or os.environ.get("OBSDB_DATABASE_URL")
    if url is None and _server_answers(LOCAL_SERVER):
        url = LOCAL_SERVER
    if url:
        os.environ["OBSDB_DATABASE_URL"] = url
    else:
        os.environ.pop("OBSDB_DATABASE_URL", None)
    # Children find the package from here whatever the working directory.
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)

    log_path = args.log or Path(tempfile.gettempdir()) / f"obsdb-benchmarks-{datetime.now():%Y%m%d-%H%M%S}.log"
    start = time.perf_counter()
    sections: list[Section] = []
    with open(log_path, "w") as log:
        log.write(f"python -m benchmarks {' '.join(argv if argv is not None else sys.argv[1:])}\n")
        for bench in chosen:
            print(f"{bench.name} ...", end="", file=sys.stderr, flush=True)
            try:
                section = run_child(bench, args.quick, log, args.verbose)
            except Exception as exc:  # noqa: BLE001 - one failure must not lose the others' rows
                traceback.print_exc(file=log)
                section = Section(bench, [], 0.0, f"{type(exc).__name__}: {exc}")
            sections.append(section)
            status = f"FAILED ({section.error})" if section.error else f"{len(section.rows)} rows"
            print(f" {section.seconds:.0f} s, {status}", file=sys.stderr, flush=True)
    machine = describe_machine(url or None)
    print()
    print(render(sections, args.quick, args.format, machine, time.perf_counter() - start))
    print(f"\nthe benchmarks' own output (progress, accuracy, targets): {log_path}")
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
