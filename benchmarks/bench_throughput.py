"""Pipeline throughput: frames per minute of a simulated night with 1 and 2 workers.

Usage::

    python -m benchmarks.bench_throughput [--quick] [--size 1024] [--fields 2] [--lights 16]
                                          [--repeat 2] [--modes process1,process2,workers2]

A night is simulated once (``obsdb simulate``: biases, darks, flats and ``--lights`` light
frames per field and filter; the default night is 99 frames of 1024², 64 of them lights).
Then, for each mode, on a fresh scratch database of the local PostgreSQL server
(``OBSDB_DATABASE_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``; created
at the head schema and dropped at the end) with its reference catalog loaded
(``obsdb refcat load``, not timed), the whole pipeline runs as the commands run it, as
subprocesses with ``OMP_NUM_THREADS=1``:

- ``obsdb ingest RAW`` (one process: headers, hashes, frames rows, the first jobs queued),
- then the jobs to the end: masters → reduce → measure (detection, astrometry against the
  catalog, photometry, crossmatch, zero point) → ensemble per field and filter, by

  - ``process1``: ``obsdb process --concurrency 1`` (one worker: the baseline);
  - ``process2``: ``obsdb process --concurrency 2`` (one process, two jobs at once);
  - ``workers2``: two ``obsdb worker --concurrency 1`` processes side by side (how a site
    scales: more workers on the shared database), stopped (SIGTERM) once no job is left.

Frames per minute count the light frames (each goes through every stage; the calibration
frames of the night are in the time too) over the wall time from the start of the ingest
until the last job has finished ("ingest → ensemble"), and over the jobs alone (first
job started → last job finished, from procrastinate's events: without ingest and the
worker's start-up). Every light frame must end ``measured``. The workers run with
``quiet_seconds = grace_seconds = 0`` (a night already on disk, as ``obsdb process``
assumes). ``--repeat`` (default 2) runs every mode that many times, in turn, and keeps the fastest.

On a machine with 2 cores the second worker competes with the PostgreSQL server, the
ingest and anything else running; the ratio is bounded by 2.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OBSDB_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
os.environ["OMP_NUM_THREADS"] = "1"

import psycopg  # noqa: E402

from benchmarks.common import Row, scratch_database  # noqa: E402

MODES = {
    "process1": "obsdb process --concurrency 1",
    "process2": "obsdb process --concurrency 2",
    "workers2": "2 x obsdb worker --concurrency 1",
}
SHORT = {"process1": "1 worker", "process2": "process --concurrency 2", "workers2": "2 workers"}
FULL_NIGHT = dict(size=1024, fields=2, lights=16)
QUICK_NIGHT = dict(size=512, fields=2, lights=8)
QUICK = ["--quick", "--repeat", "2"]
FINAL_STATES = ("measured", "failed", "needs_wcs")
WORKER_CONFIG = """\
# bench_throughput: the night is on disk before the workers start (as obsdb process assumes).
[calibration]
quiet_seconds = 0.0
grace_seconds = 0.0
"""


def obsdb_command() -> list[str]:
    script = Path(sys.executable).with_name("obsdb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "obsdb.cli.main"]


@dataclass
class Result:
    mode: str
    lights: int
    frames: int
    ingest_s: float
    total_s: float
    jobs_s: float
    stages: dict[str, float] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    measurements: int = 0
    obsdb_cpu_s: float = 0.0  # user + system of the obsdb processes (ingest, process, workers)
    server_cpu_s: float = 0.0  # the PostgreSQL backends serving them
    machine_busy_s: float = 0.0  # CPU busy on the whole machine over the same time (all cores)
    cores: int = 1

    def per_minute(self, seconds: float) -> float:
        return 60.0 * self.lights / seconds

    @property
    def cpu_per_light(self) -> float:
        """CPU seconds per light frame, obsdb's processes and their database backends."""
        return (self.obsdb_cpu_s + self.server_cpu_s) / self.lights

    @property
    def others_share(self) -> float:
        """Share of the machine's CPU over the run taken by other work (neither obsdb's
        processes nor their PostgreSQL backends)."""
        used = self.obsdb_cpu_s + self.server_cpu_s
        return max(0.0, self.machine_busy_s - used) / (self.cores * self.total_s)


class BackendCPU:
    """CPU seconds of the PostgreSQL backends serving one database, from /proc (same host).

    Samples ``pg_stat_activity`` every ``interval`` and keeps each backend's last cumulative
    user + system time; a backend that comes and goes between two samples is missed.
    """

    def __init__(self, url: str, interval: float = 0.25, exclude: set[int] | None = None) -> None:
        self.url, self.interval, self.exclude = url, interval, exclude or set()
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _ticks(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

    def _loop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = "
                                                   "current_database() AND pid <> pg_backend_pid()")]
                for pid in set(pids) - self.exclude:
                    t = self._ticks(pid)
                    if t is not None:
                        self.seen[pid] = max(t, self.seen.get(pid, 0.0))
                if self._stop.wait(self.interval):
                    return

    def __enter__(self) -> BackendCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat), or nan."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (no guest: in user)
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def simulate_night(folder: Path, size: int, fields: int, lights: int) -> Path:
    out = folder / "night"
    subprocess.run([*obsdb_command(), "simulate", str(out), "--seed", "1", "--size", str(size),
                    "--fields", str(fields), "--lights", str(lights)],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OBSDB_HOME": str(folder / "simhome")})
    return out


def _libpq(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _active_jobs(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')").fetchone()[0]


def _lights_open(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM frames WHERE imagetyp = 'light' AND superseded_at IS NULL "
                        "AND state <> ALL(%s)", (list(FINAL_STATES),)).fetchone()[0]


def _run_jobs(mode: str, cmd: list[str], env: dict, conn: psycopg.Connection, out, timeout: float,
              t0: float) -> tuple[float, float]:
    """Run the queue to the end as ``mode`` does; (seconds since ``t0``, machine CPU busy then)."""
    if mode.startswith("process"):
        subprocess.run([*cmd, "process", "--concurrency", mode.removeprefix("process"), "--no-progress"],
                       check=True, env=env, stdout=out, stderr=out, timeout=timeout)
        return time.perf_counter() - t0, _machine_busy()
    procs = [subprocess.Popen([*cmd, "worker", "--concurrency", "1"], env=env, stdout=out, stderr=out)
             for _ in range(int(mode.removeprefix("workers")))]
    try:
        while True:
            time.sleep(0.2)
            if _active_jobs(conn) == 0 and _lights_open(conn) == 0:
                return time.perf_counter() - t0, _machine_busy()
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{mode}: a worker exited ({[p.returncode for p in procs]})")
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{mode}: not done after {timeout:.0f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_mode(mode: str, night: Path, folder: Path, timeout: float, verbose: bool) -> Result:
    """One mode on a fresh database; the night's frames must all end measured."""
    home = folder / f"home-{mode}"
    config = folder / "throughput.toml"
    config.write_text(WORKER_CONFIG)
    out = None if verbose else subprocess.DEVNULL
    with scratch_database() as engine:
        url = _libpq(engine.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSDB_")}
        env.update(OBSDB_DATABASE_URL=engine.url.render_as_string(hide_password=False), OBSDB_HOME=str(home),
                   OBSDB_CONFIG=str(config), OMP_NUM_THREADS="1")
        cmd = obsdb_command()
        subprocess.run([*cmd, "refcat", "load", str(night / "refcat.csv"), "--name", "sim", "--ra-col", "ra",
                        "--dec-col", "dec", "--id-col", "id", "--mag", "g=g:g_err", "--mag", "r=r:r_err"],
                       check=True, env=env, stdout=out)
        with psycopg.connect(url, autocommit=True) as conn, \
                BackendCPU(url, exclude={conn.info.backend_pid}) as server:
            t0, cpu0, busy0 = time.perf_counter(), _children_cpu(), _machine_busy()
            subprocess.run([*cmd, "ingest", str(night / "raw")], check=True, env=env, stdout=out)
            t_ingest = time.perf_counter() - t0
            t_total, busy1 = _run_jobs(mode, cmd, env, conn, out, timeout, t0)
            cpu = _children_cpu() - cpu0
        with psycopg.connect(url, autocommit=True) as conn:
            states = dict(conn.execute("SELECT state, count(*) FROM frames WHERE imagetyp = 'light' "
                                       "AND superseded_at IS NULL GROUP BY state").fetchall())
            n_frames = conn.execute("SELECT count(*) FROM frames WHERE superseded_at IS NULL").fetchone()[0]
            span = conn.execute(
                "SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'succeeded') "
                "                          - min(e.at) FILTER (WHERE e.type = 'started')) "
                "FROM procrastinate_events e").fetchone()[0]
            stages = dict(conn.execute(
                "SELECT split_part(j.task_name, ':', 2), "
                "       sum(extract(epoch FROM s.at - b.at)) "
                "FROM procrastinate_jobs j "
                "JOIN LATERAL (SELECT max(at) AS at FROM procrastinate_events WHERE job_id = j.id "
                "              AND type = 'started') b ON true "
                "JOIN LATERAL (SELECT max(at) AS at FROM procrastinate_events WHERE job_id = j.id "
                "              AND type = 'succeeded') s ON true "
                "WHERE j.status = 'succeeded' GROUP BY 1").fetchall())
            n_meas = conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
    shutil.rmtree(home, ignore_errors=True)
    lights = sum(states.values())
    if states.get("measured", 0) != lights:
        raise RuntimeError(f"{mode}: light frames ended {states}, not all measured")
    return Result(mode, lights, n_frames, t_ingest, t_total, float(span), {k: float(v) for k, v in stages.items()},
                  states, n_meas, cpu, server.seconds, busy1 - busy0, len(os.sched_getaffinity(0)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(p for p in __doc__.split("\n\n")[1:]
                                                        if not p.startswith(("Usage::", "    "))))
    parser.add_argument("--quick", action="store_true",
                        help=f"a small night: {QUICK_NIGHT['size']}², {QUICK_NIGHT['lights']} lights per field and filter")
    parser.add_argument("--size", type=int, default=None, help=f"frame side in pixels [{FULL_NIGHT['size']}]")
    parser.add_argument("--fields", type=int, default=None, help=f"fields observed [{FULL_NIGHT['fields']}]")
    parser.add_argument("--lights", type=int, default=None,
                        help=f"light frames per field and filter [{FULL_NIGHT['lights']}]")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every mode, in turn (best kept) [2]")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per mode")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the commands' output")
    return parser


def measure(args: argparse.Namespace) -> tuple[str, list[Row], list[str]]:
    """Run the modes; the table's title, rows and notes."""
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK_NIGHT if args.quick else FULL_NIGHT)[k]
             for k in FULL_NIGHT}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown or "process1" not in modes:
        raise SystemExit(f"--modes: need process1 (the baseline) and only {', '.join(MODES)}; got {args.modes}")
    best: dict[str, Result] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="obsdb-bench-throughput-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        night = simulate_night(folder, **sizes)
        print(f"simulated night ({sizes}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for k in range(args.repeat):
            for mode in modes:
                r = run_mode(mode, night, folder, args.timeout, args.verbose)
                line = (f"{MODES[mode]} (run {k + 1}): {r.lights} lights of {r.frames} frames, ingest "
                        f"{r.ingest_s:.1f} s, ingest → ensemble {r.total_s:.1f} s, jobs {r.jobs_s:.1f} s "
                        f"({r.per_minute(r.total_s):.1f} / {r.per_minute(r.jobs_s):.1f} lights/min); job seconds: "
                        + ", ".join(f"{s} {v:.1f}" for s, v in sorted(r.stages.items()))
                        + f"; {r.measurements:,} measurements; CPU: obsdb processes {r.obsdb_cpu_s:.1f} s, "
                        f"their PostgreSQL backends {r.server_cpu_s:.1f} s, the whole machine "
                        f"{r.machine_busy_s:.1f} s of {r.cores} x {r.total_s:.1f} s (other work: "
                        f"{100 * r.others_share:.0f} %)")
                print(line, file=sys.stderr, flush=True)
                notes.append(line)
                if mode not in best or r.total_s < best[mode].total_s:
                    best[mode] = r
    base = best["process1"]
    rows = [Row("1 worker (obsdb process --concurrency 1), ingest → ensemble", base.per_minute(base.total_s), None,
                "lights/min"),
            Row("1 worker, jobs only", base.per_minute(base.jobs_s), None, "lights/min")]
    for mode in modes:
        if mode == "process1":
            continue
        r = best[mode]
        rows.append(Row(f"{MODES[mode]} vs 1 worker, ingest → ensemble", r.per_minute(r.total_s),
                        base.per_minute(base.total_s), "lights/min"))
        rows.append(Row(f"{MODES[mode]} vs 1 worker, jobs only", r.per_minute(r.jobs_s),
                        base.per_minute(base.jobs_s), "lights/min"))
        rows.append(Row(f"{MODES[mode]} vs 1 worker, CPU per light (obsdb + its PostgreSQL backends)",
                        r.cpu_per_light, base.cpu_per_light, "s", higher_is_better=False))
    rows.append(Row("1 worker, CPU per light (obsdb + its PostgreSQL backends)", base.cpu_per_light, None, "s",
                    higher_is_better=False))
    rows.append(Row("ingest (one process), share of the 1-worker time", 100 * base.ingest_s / base.total_s, None, "%",
                    higher_is_better=False))
    for mode in modes:
        rows.append(Row(f"machine CPU taken by other work (not obsdb, not its backends), {SHORT[mode]} run",
                        100 * best[mode].others_share, None, "%", higher_is_better=False))
    title = (f"pipeline throughput: a simulated night of {base.frames} frames ({base.lights} lights) of "
             f"{sizes['size']}², ingest → masters → reduce → measure → ensemble, reference catalog loaded, "
             f"OMP_NUM_THREADS=1, best of {args.repeat}; ratio = with 2 workers / with 1 worker")
    return title, rows, notes


def run(quick: bool = False) -> list[Row]:
    """The rows of ``python -m benchmarks`` (a small night with ``quick``)."""
    return measure(_parser().parse_args(QUICK if quick else []))[1]  # notes: printed as they come


def main(argv: list[str] | None = None) -> None:
    from benchmarks.run_all import format_table

    title, rows, notes = measure(_parser().parse_args(argv))
    print("\n" + format_table(title, rows))
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
