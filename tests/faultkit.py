"""What the fault tests share: ``obsdb`` subprocesses, deadlines, a PostgreSQL server the
test owns (so that it can stop it), a small simulated night and copies of it, and the
end-of-night audit (every frame once, nothing twice, nothing orphaned).

No monkeypatching anywhere: the faults are real (SIGKILL, a stopped server, a full file
system, broken files) and the code under test runs in its own processes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from conftest import obsdb_command

CALIBRATION_TYPES = ("bias", "dark", "flat")
TEMP_SUFFIXES = (".tmp", ".part")


def write_config(path: Path, *, heartbeat: float = 1.0, stalled: float = 4.0, quiet: float = 2.0,
                 grace: float = 0.0, retry_wait: float = 0.5, max_attempts: int = 3, settle: float = 0.3,
                 rescan: float = 3.0, give_up: float = 3.0) -> Path:
    """A config with the short timings the fault tests need (seconds, not minutes)."""
    path.write_text(
        f"[queue]\nheartbeat_seconds = {heartbeat:g}\nstalled_seconds = {stalled:g}\n\n"
        f"[calibration]\nquiet_seconds = {quiet:g}\ngrace_seconds = {grace:g}\n"
        f"retry_wait_seconds = {retry_wait:g}\nmax_attempts = {max_attempts}\n\n"
        f"[watch]\nsettle_seconds = {settle:g}\nrescan_seconds = {rescan:g}\ngive_up_seconds = {give_up:g}\n"
    )
    return path


# -- subprocesses ------------------------------------------------------------------------


@dataclass
class Proc:
    """One ``obsdb`` subprocess; its output goes through a pipe into a log file (a pipe, so
    that a file-size limit put on the process cannot cut its own log short)."""

    name: str
    popen: subprocess.Popen
    log: Path
    expected_dead: bool = False
    _pump: threading.Thread | None = None
    killed_at: datetime | None = None  # when kill9 ended it (local time, as in its log)
    stopped_in: float | None = None  # seconds from SIGTERM to exit (terminate_and_wait)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill9(self) -> None:
        self.expected_dead = True
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.killed_at = datetime.now()
        self.drain()

    def terminate_and_wait(self, timeout: float = 30) -> int:
        """SIGTERM; the exit code (``stopped_in``: how long it took), or fail if it does not exit."""
        self.expected_dead = True
        t0 = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM:\n{self.tail()}") from None
        self.stopped_in = time.monotonic() - t0
        self.drain()
        return code

    def drain(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=10)


class Procs:
    """Starts ``obsdb`` subprocesses; ``kill_all`` at teardown kills what is left."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.started: list[Proc] = []

    def start(self, name: str, *args: str | Path, prefix: tuple[str, ...] = ()) -> Proc:
        """Start ``obsdb ARGS`` (after ``prefix``, a command that runs it: capsh, ...)."""
        log = self.tmp_path / f"{name}.log"
        popen = subprocess.Popen([*prefix, *obsdb_command(), *map(str, args)], env=self.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def pump() -> None:
            with open(log, "wb") as out:
                assert popen.stdout is not None
                for line in popen.stdout:
                    out.write(line)
                    out.flush()

        thread = threading.Thread(target=pump, name=f"log-{name}", daemon=True)
        thread.start()
        proc = Proc(name, popen, log, _pump=thread)
        self.started.append(proc)
        return proc

    def check_alive(self) -> None:
        for p in self.started:
            if not p.expected_dead and not p.alive():
                p.drain()
                raise AssertionError(f"{p.name} exited early with {p.popen.returncode}:\n{p.tail()}")

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} (exit {p.popen.poll()}):\n{p.tail()}" for p in self.started)

    def kill_all(self) -> None:
        for p in self.started:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(timeout=10)
            p.drain()


def wait_until(condition: Callable[[], object], what: str, *, timeout: float, procs: Procs | None = None,
               detail: Callable[[], str] | None = None, interval: float = 0.25) -> object:
    """Poll until ``condition()`` is truthy; fail with the logs (and ``detail()``) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if procs is not None:
            procs.check_alive()
        if time.monotonic() > deadline:
            extra = detail() if detail is not None else ""
            logs = procs.diagnostics() if procs is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}\n{logs}")
        time.sleep(interval)


# -- a PostgreSQL the test owns ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL server in a temporary folder, with pgserver's binaries (a dependency of
    obsdb, so always there), that the test can stop and start again on the same port.

    As root, the server runs as pgserver's unprivileged system user (PostgreSQL refuses
    to run as root), as pgserver itself does.
    """

    def __init__(self) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        self.bin = Path(POSTGRES_BIN_PATH)
        # Not under pytest's basetemp (0700 for root, and pruned by later sessions).
        self.holder = Path(tempfile.mkdtemp(prefix="obsdb-fault-pg-"))
        self.holder.chmod(0o755)
        self.pgdata = self.holder / "pgdata"
        self.logfile = self.holder / "postgres.log"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            self.user = "pgserver"
            ensure_user_exists(self.user)
            ensure_prefix_permissions(self.holder)
            ensure_prefix_permissions(self.bin)
        self.pgdata.mkdir()
        self.logfile.touch()
        if self.user is not None:
            shutil.chown(self.pgdata, self.user, self.user)
            shutil.chown(self.logfile, self.user, self.user)
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync")
        self.running = False

    def _run(self, exe: str, *args: str, timeout: float = 60) -> None:
        proc = subprocess.run([str(self.bin / exe), *args], capture_output=True, text=True, timeout=timeout,
                              user=self.user)
        if proc.returncode != 0:
            raise RuntimeError(f"{exe} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-o", options, "-w", "start")
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: ``immediate`` is a crash (no checkpoint, connections cut)."""
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")
        self.running = False

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name, "postgresql+psycopg")

    def close(self) -> None:
        if self.running:
            try:
                self.stop("fast")
            except Exception:
                pass
        shutil.rmtree(self.holder, ignore_errors=True)


# -- a night and its copies ------------------------------------------------------------------


@dataclass(frozen=True)
class NightFiles:
    """A simulated night: its files in acquisition order."""

    folder: Path
    lights: list[Path]
    calibrations: list[Path]
    order: list[Path]  # every file, in the order the night took them

    @property
    def n_files(self) -> int:
        return len(self.order)


def simulated_night(folder: Path, lights_per_filter: int) -> NightFiles:
    """One field, two filters, 256-pixel frames (cached: made once per folder)."""
    raw = folder / "raw"
    done = folder / "done"
    if not done.exists():
        from obsdb.simulate import SimulationConfig, simulate

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        summary = simulate(folder / "sim", replace(SimulationConfig(), size=256, n_fields=1,
                                                   lights_per_field_per_filter=lights_per_filter))
        (night_dir,) = summary.raw_dirs
        shutil.copytree(night_dir, raw)
        shutil.copy2(folder / "sim" / "truth" / "frames.csv", folder / "frames.csv")
        shutil.copy2(folder / "sim" / "refcat.csv", folder / "refcat.csv")
        shutil.rmtree(folder / "sim")
        done.touch()
    with open(folder / "frames.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["date_obs"])
    order = [raw / Path(r["file"]).name for r in rows]
    lights = [p for p in order if p.name.split("-")[0] not in CALIBRATION_TYPES]
    cals = [p for p in order if p.name.split("-")[0] in CALIBRATION_TYPES]
    return NightFiles(folder, lights, cals, order)


def load_refcat(db_url: str, night: NightFiles) -> None:
    """Load the night's reference catalog, as a site does before its first night.

    Without one, each frame keeps its header WCS, off by a few pixels and differently on
    every frame; the crossmatch then makes new sources of the same stars on every frame,
    and forced photometry at all of them makes a night's measurements grow as the square
    of its frames.
    """
    from obsdb.catalog.refcat import BandColumns, ColumnMap
    from obsdb.catalog.refcat import load_refcat as load

    columns = ColumnMap(ra="ra", dec="dec", bands=(BandColumns.parse("g=g:g_err"), BandColumns.parse("r=r:r_err")),
                        id="id")
    engine = create_engine(db_url)
    try:
        with sessionmaker(engine)() as session, session.begin():
            load(session, night.folder / "refcat.csv", "sim", columns)
    finally:
        engine.dispose()


def copy_with_new_time(src: Path, dst: Path, k: int) -> Path:
    """Copy a frame with its DATE-OBS milliseconds changed by ``k`` (1..999): the same
    image, another exposure as far as the catalog can tell (another content hash)."""
    data = bytearray(src.read_bytes())
    key = b"DATE-OBS= '"
    at = data.index(key) + len(key)
    stamp = data[at:at + 23].decode()  # YYYY-MM-DDThh:mm:ss.fff
    ms = (int(stamp[20:23]) + k) % 1000
    data[at + 20:at + 23] = f"{ms:03d}".encode()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    tmp.write_bytes(bytes(data))
    os.rename(tmp, dst)
    return dst


def deliver(files: Iterable[tuple[Path, Path]], *, rng: random.Random | None = None) -> int:
    """Put files into the watched tree as acquisition software does: most written under a
    temporary name and renamed, some written in place (the watcher must wait for them)."""
    n = 0
    for src, dst in files:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rng is not None and rng.random() < 0.2:
            shutil.copyfile(src, dst)  # written in place, seen while it grows
        else:
            tmp = dst.with_name("." + dst.name + ".part")
            shutil.copyfile(src, tmp)
            os.rename(tmp, dst)
        n += 1
    return n


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the audit -----------------------------------------------------------------------------


def temporaries(root: Path) -> list[Path]:
    """Files a writer left behind under ``root``: temporary or partial names."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(TEMP_SUFFIXES))


@dataclass
class Audit:
    files: int
    frames: int
    lights: int
    calibrations: int
    reductions: int
    solutions: int
    measurements: int
    sources: int
    masters: int
    duplicates: int = 0
    lost: int = 0
    orphans: int = 0
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "problems"}


def audit(db_url: str, products: Path, expected: dict[str, str]) -> Audit:
    """Check the catalog after a night: ``expected`` maps every file's path to its sha256.

    Every file is one live frame (none lost, none twice); every light has one reduction,
    one astrometric solution and its product on disk; measurements are unique per
    (source, frame) and hang on live frames and existing sources; no source is without
    measurements (unless it is a target); no job is left queued or running; no temporary
    file is left in the products folder.
    """
    engine = create_engine(db_url)
    sessions = sessionmaker(engine)
    problems: list[str] = []
    q = lambda s, sql_, **kw: s.execute(text(sql_), kw).all()  # noqa: E731
    with sessions() as s:
        frames = q(s, "SELECT id, path, sha256, imagetyp, state, state_reason FROM frames WHERE superseded_at IS NULL")
        by_sha: dict[str, list] = {}
        for f in frames:
            by_sha.setdefault(f.sha256, []).append(f)
        dup_sha = sum(len(v) - 1 for v in by_sha.values())
        dup_path = len(frames) - len({f.path for f in frames})
        lost = [p for p, h in expected.items() if h not in by_sha]
        extra = [f.path for f in frames if f.path not in expected]
        lights = [f for f in frames if f.imagetyp == "light"]
        cals = [f for f in frames if f.imagetyp in CALIBRATION_TYPES]
        not_done = [(f.id, f.path, f.state, f.state_reason) for f in lights if f.state != "measured"]
        not_done += [(f.id, f.path, f.state, f.state_reason) for f in cals if f.state not in ("combined", "unused")]

        red = q(s, "SELECT frame_id, count(*) AS n, min(path) AS path FROM reductions GROUP BY frame_id")
        red_by_frame = {r.frame_id: r for r in red}
        dup_red = sum(r.n - 1 for r in red)
        sol = q(s, "SELECT frame_id, count(*) AS n FROM frame_solutions GROUP BY frame_id")
        dup_sol = sum(r.n - 1 for r in sol)
        dup_meas = q(s, "SELECT count(*) - count(DISTINCT (source_id, frame_id)) AS n FROM measurements")[0].n
        dup_zp = q(s, "SELECT count(*) - count(DISTINCT frame_id) AS n FROM zeropoints")[0].n
        n_meas = q(s, "SELECT count(*) AS n FROM measurements")[0].n
        orphan_meas = q(s, "SELECT count(*) AS n FROM measurements m LEFT JOIN frames f ON f.id = m.frame_id "
                           "LEFT JOIN sources so ON so.id = m.source_id "
                           "WHERE f.id IS NULL OR so.id IS NULL OR f.superseded_at IS NOT NULL "
                           "OR f.state <> 'measured'")[0].n
        orphan_src = q(s, "SELECT count(*) AS n FROM sources so WHERE NOT EXISTS "
                          "(SELECT 1 FROM measurements m WHERE m.source_id = so.id) "
                          "AND NOT EXISTS (SELECT 1 FROM targets t WHERE t.source_id = so.id)")[0].n
        orphan_red = q(s, "SELECT count(*) AS n FROM reductions r JOIN frames f ON f.id = r.frame_id "
                          "WHERE f.superseded_at IS NOT NULL OR f.imagetyp <> 'light'")[0].n
        n_src = q(s, "SELECT count(*) AS n FROM sources")[0].n
        masters = q(s, "SELECT id, path FROM masters")
        jobs = q(s, "SELECT id, task_name, status::text AS status, attempts, args::text AS args "
                    "FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
        failed_jobs = q(s, "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'failed'")[0].n
    engine.dispose()

    if dup_sha or dup_path:
        problems.append(f"{dup_sha} content(s) and {dup_path} path(s) registered twice")
    if lost:
        problems.append(f"{len(lost)} file(s) never became a frame: {lost[:5]}")
    if extra:
        problems.append(f"{len(extra)} frame(s) from no expected file: {extra[:5]}")
    if not_done:
        problems.append(f"{len(not_done)} frame(s) not finished: {not_done[:5]}")
    missing_red = [f.id for f in lights if f.id not in red_by_frame]
    if missing_red:
        problems.append(f"{len(missing_red)} light(s) without a reduction: {missing_red[:10]}")
    missing_files = [r.path for r in red if not Path(r.path).is_file()]
    missing_files += [m.path for m in masters if m.path and not Path(m.path).is_file()]
    if missing_files:
        problems.append(f"{len(missing_files)} product(s) recorded but not on disk: {missing_files[:5]}")
    reduced_dir = products / "reduced"
    on_disk = {str(p) for p in reduced_dir.rglob("*.fits")} if reduced_dir.exists() else set()
    stray = sorted(on_disk - {r.path for r in red})
    if stray:
        problems.append(f"{len(stray)} reduced product(s) on disk that no reduction records: {stray[:5]}")
    leftovers = temporaries(products)
    if leftovers:
        problems.append(f"{len(leftovers)} temporary file(s) left in the products: {leftovers[:5]}")
    if len(sol) != len(lights) or {r.frame_id for r in sol} != {f.id for f in lights}:
        problems.append(f"{len(sol)} astrometric solution rows for {len(lights)} lights")
    duplicates = dup_sha + dup_path + dup_red + dup_sol + dup_meas + dup_zp
    if duplicates:
        problems.append(f"duplicate rows: reductions {dup_red}, solutions {dup_sol}, measurements {dup_meas}, "
                        f"zero points {dup_zp}")
    orphans = orphan_meas + orphan_src + orphan_red
    if orphans:
        problems.append(f"orphans: {orphan_meas} measurement(s), {orphan_src} source(s), {orphan_red} reduction(s)")
    if jobs:
        problems.append(f"{len(jobs)} job(s) still queued or running: {[tuple(j) for j in jobs[:5]]}")
    if failed_jobs:
        problems.append(f"{failed_jobs} job(s) failed")
    return Audit(
        files=len(expected), frames=len(frames), lights=len(lights), calibrations=len(cals), reductions=len(red),
        solutions=len(sol), measurements=n_meas, sources=n_src, masters=len(masters), duplicates=duplicates,
        lost=len(lost), orphans=orphans, problems=problems,
    )


def wait_for_night(db_url: str, n_lights: int, n_calibrations: int, what: str, *, timeout: float,
                   procs: Procs | None = None, interval: float = 0.5) -> dict:
    """Wait until every light is measured, every calibration combined or unused and the
    queue empty; the frame states by kind then. Fails with the queue at the deadline."""
    engine = create_engine(db_url, pool_size=1)

    def finished():
        try:
            with engine.connect() as c:
                states = dict(c.execute(text(
                    "SELECT CASE WHEN imagetyp = 'light' THEN 'light:' || state "
                    "WHEN state IN ('combined', 'unused') THEN 'cal:done' ELSE 'cal:' || state END AS k, count(*) "
                    "FROM frames WHERE superseded_at IS NULL GROUP BY 1")).all())
                active = c.execute(text(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")).scalar()
        except Exception:
            return None  # the server may be away on purpose
        done = states.get("light:measured", 0) == n_lights and states.get("cal:done", 0) == n_calibrations
        return states if done and active == 0 else None

    try:
        return wait_until(finished, what, timeout=timeout, procs=procs, detail=lambda: queue_snapshot(db_url),
                          interval=interval)
    finally:
        engine.dispose()


def queue_snapshot(db_url: str) -> str:
    engine = create_engine(db_url, pool_size=1)
    try:
        with engine.connect() as c:
            states = c.execute(text("SELECT imagetyp, state, count(*) FROM frames WHERE superseded_at IS NULL "
                                    "GROUP BY 1, 2 ORDER BY 1, 2")).all()
            jobs = c.execute(text("SELECT task_name, status::text, count(*) FROM procrastinate_jobs "
                                  "GROUP BY 1, 2 ORDER BY 1, 2")).all()
            reasons = c.execute(text("SELECT id, state, left(state_reason, 200) FROM frames "
                                     "WHERE state NOT IN ('measured', 'combined', 'unused') LIMIT 10")).all()
        return f"frames: {states}\njobs: {jobs}\nunfinished: {reasons}"
    except Exception as exc:  # pragma: no cover - diagnostics only
        return f"(no snapshot: {exc})"
    finally:
        engine.dispose()


def now() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]
