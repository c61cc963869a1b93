"""The job queue under stress: real ``obsdb worker`` / ``obsdb daemon`` subprocesses on a
real PostgreSQL, killed, stopped and fed a broken file.

Every test runs on its own fresh database with short timings (heartbeat 1 s, stalled
after 4 s, no quiet or grace time) and a small simulated night (256 px, 6 lights, 35
calibration frames). Every wait has a deadline; every subprocess is killed at teardown.

To hold a job *in the middle* deterministically, a test takes a row lock on the frame's
``frames`` row (``SELECT ... FOR UPDATE`` in an open transaction): the job runs until its
last write (the reduced product is already on disk) and then waits on that lock, visibly
``doing`` in ``procrastinate_jobs`` and waiting in ``pg_stat_activity``, until the test
kills it, stops it or lets it go.

What "nothing ran twice at once" is checked against: procrastinate's own record (the
``started`` / ``succeeded`` / ``failed`` / ``deferred_for_retry`` events of every job) and,
independently, the workers' own log lines (``Starting job ...[id]`` / ``Job ...[id] ended``),
which show when a job really ran in a process even if the database was told otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from obsdb.calibration.selection import best_master
from obsdb.config import CalibrationSettings
from obsdb.inventory import status_summary
from obsdb.models import Frame, Master, Reduction

import faultkit
from conftest import run_obsdb
from faultkit import Proc, Procs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HEARTBEAT = 1.0
STALLED = 4.0
DONE_DEADLINE = 150.0  # seconds for a worker (or two) to take a small night through
STEP_DEADLINE = 60.0  # seconds for any one expected state to appear

CONFIG = f"""\
[queue]
heartbeat_seconds = {HEARTBEAT:g}
stalled_seconds = {STALLED:g}

[calibration]
quiet_seconds = 0
grace_seconds = 0
retry_wait_seconds = 0.5

[watch]
settle_seconds = 0.5
rescan_seconds = 5
"""

REDUCE = "obsdb:reduce_frame"
BUILD = "obsdb:build_master"
CALIBRATION_TYPES = ("bias", "dark", "flat")


# -- the night --------------------------------------------------------------------------


@dataclass(frozen=True)
class Night:
    lights: Path  # the 6 light frames
    calibrations: Path  # the biases, darks and flats
    n_lights: int
    n_calibrations: int


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Night:
    """One small simulated night, split into a lights folder and a calibrations folder.

    Tests that only read the files ingest them from here (each test has its own database
    and products); tests that change or move files copy them first.
    """
    from obsdb.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("night")
    summary = simulate(out / "sim", replace(SimulationConfig(), size=256, n_fields=1,
                                            lights_per_field_per_filter=3))
    (raw,) = summary.raw_dirs
    lights, calibrations = out / "lights", out / "calibrations"
    lights.mkdir()
    calibrations.mkdir()
    for path in sorted(raw.iterdir()):
        kind = path.name.split("-")[0]
        shutil.copy2(path, (calibrations if kind in CALIBRATION_TYPES else lights) / path.name)
    n_lights = len(list(lights.iterdir()))
    n_cal = len(list(calibrations.iterdir()))
    assert (n_lights, n_cal) == (summary.n_frames["light"], sum(summary.n_frames[k] for k in CALIBRATION_TYPES))
    return Night(lights, calibrations, n_lights, n_cal)


def _config(tmp_path: Path, extra: str = "", name: str = "obsdb.toml") -> Path:
    path = tmp_path / name
    text_ = CONFIG
    if extra:
        text_ = text_.replace("[calibration]\n", f"[calibration]\n{extra}\n")
    path.write_text(text_)
    return path


@pytest.fixture
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**cli_env, "OBSDB_CONFIG": str(_config(tmp_path))}


# -- subprocesses ------------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path, env: dict[str, str]) -> Iterator[Procs]:
    started = Procs(tmp_path, env)
    try:
        yield started
    finally:
        started.kill_all()


def wait_until(condition: Callable[[], object], what: str, *, procs: Procs | None = None,
               sessions: sessionmaker | None = None, timeout: float = STEP_DEADLINE,
               interval: float = 0.2) -> object:
    """faultkit's ``wait_until``, with the queue's state in the failure message."""

    def queue() -> str:
        if sessions is None:
            return ""
        with sessions() as session:
            return (f"status: {json.dumps(status_summary(session)['by_type_and_state'])}\n"
                    "jobs:\n" + "\n".join(map(str, _job_table(session))))

    return faultkit.wait_until(condition, what, timeout=timeout, procs=procs, detail=queue, interval=interval)


# -- the database ------------------------------------------------------------------------


def _job_table(session: Session) -> list[tuple]:
    return [tuple(r) for r in session.execute(text(
        "SELECT id, task_name, lock, status::text, attempts, worker_id, scheduled_at FROM procrastinate_jobs "
        "WHERE status IN ('todo', 'doing') ORDER BY id"
    ))]


def _pipeline_done(sessions: sessionmaker, n_lights: int, n_calibrations: int):
    """The status summary once nothing is queued or running and every frame is done."""
    with sessions() as session:
        s = status_summary(session)
    states = s["by_type_and_state"]
    cal_done = sum(states.get(k, {}).get(st, 0) for k in CALIBRATION_TYPES for st in ("combined", "unused"))
    done = (
        s["queue"]["todo"] == 0 and s["queue"]["doing"] == 0
        and states.get("light", {}).get("measured", 0) == n_lights
        and cal_done == n_calibrations
    )
    return s if done else None


def _job(session: Session, job_id: int):
    return session.execute(text(
        "SELECT id, task_name, lock, status::text AS status, attempts, worker_id, "
        "(args->>'frame_id')::bigint AS frame_id FROM procrastinate_jobs WHERE id = :id"
    ), {"id": job_id}).one()


def _events(session: Session, job_id: int) -> list[str]:
    return list(session.scalars(text(
        "SELECT type::text FROM procrastinate_events WHERE job_id = :id ORDER BY at, id"), {"id": job_id}))


def _reduce_jobs(session: Session, frame_id: int, status: str | None = None) -> list:
    return session.execute(text(
        "SELECT id, status::text AS status, attempts, worker_id FROM procrastinate_jobs "
        "WHERE task_name = :task AND (args->>'frame_id')::bigint = :frame "
        "AND (CAST(:status AS text) IS NULL OR status::text = :status) ORDER BY id"
    ), {"task": REDUCE, "frame": frame_id, "status": status}).all()


def _light_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Frame.id).where(Frame.imagetyp == "light").order_by(Frame.id)))


def _blocked_on_lock(engine: Engine) -> int:
    """Backends of this database waiting for a lock: a job stopped at our row lock (its last
    write: the reductions row, whose foreign key needs the frame row, or the frame's state)."""
    with engine.connect() as conn:
        return conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ))


@contextmanager
def frame_row_locked(engine: Engine, frame_id: int) -> Iterator[Callable[[], None]]:
    """Hold a row lock on ``frames`` row ``frame_id``; yields a function that releases it."""
    conn = engine.connect()
    trans = conn.begin()
    conn.execute(text("SELECT id FROM frames WHERE id = :id FOR UPDATE"), {"id": frame_id})
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            trans.rollback()
            conn.close()

    try:
        yield release
    finally:
        release()


def _doing_and_blocked(sessions: sessionmaker, engine: Engine, frame_id: int):
    """The reduce job of ``frame_id`` once it is 'doing' and waiting on our row lock."""
    with sessions() as session:
        doing = _reduce_jobs(session, frame_id, "doing")
    if doing and _blocked_on_lock(engine):
        return doing[0]
    return None


@dataclass
class Run:
    """One execution of a job: from the database's events, or from a worker's log."""

    job_id: int
    lock: str | None
    start: datetime
    end: datetime | None  # None: never ended (the worker was killed, or still running)
    outcome: str | None
    where: str
    reduced: list[int] = field(default_factory=list)  # "reduced frame N" logged during the run


def _db_runs(session: Session) -> list[Run]:
    rows = session.execute(text(
        "SELECT j.id, j.lock, e.type::text AS type, e.at FROM procrastinate_jobs j "
        "JOIN procrastinate_events e ON e.job_id = j.id ORDER BY j.id, e.at, e.id"
    )).all()
    runs: list[Run] = []
    open_runs: dict[int, Run] = {}
    for r in rows:
        local = r.at.astimezone().replace(tzinfo=None)
        if r.type == "started":
            assert r.id not in open_runs, f"job {r.id} started twice without ending in between"
            open_runs[r.id] = Run(r.id, r.lock, local, None, None, "db")
        elif r.type in ("succeeded", "failed", "deferred_for_retry", "aborted") and r.id in open_runs:
            run = open_runs.pop(r.id)
            run.end, run.outcome = local, r.type
            runs.append(run)
    return runs + list(open_runs.values())


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
LOG_START = re.compile(r"^Starting job obsdb:\w+\[(\d+)\]")
LOG_END = re.compile(r"^Job obsdb:\w+\[(\d+)\]\(.*\) ended with status: (\w+)")
LOG_REDUCED = re.compile(r"^reduced frame (\d+)")


def _log_runs(proc: Proc, locks: dict[int, str | None], frames: dict[int, int | None]) -> list[Run]:
    """Job executions as one worker process saw them (its own log)."""
    runs: list[Run] = []
    open_runs: dict[int, Run] = {}
    for line in proc.output().splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        message = m.group(2)
        if s := LOG_START.match(message):
            job_id = int(s.group(1))
            open_runs[job_id] = Run(job_id, locks.get(job_id), at, None, None, proc.name)
        elif e := LOG_END.match(message):
            run = open_runs.pop(int(e.group(1)), None)
            if run is not None:
                run.end, run.outcome = at, e.group(2)
                runs.append(run)
        elif r := LOG_REDUCED.match(message):
            frame_id = int(r.group(1))
            owners = [run for run in open_runs.values() if frames.get(run.job_id) == frame_id]
            assert len(owners) == 1, f"{proc.name}: 'reduced frame {frame_id}' outside its job: {line}"
            owners[0].reduced.append(frame_id)
    for run in open_runs.values():
        run.end = proc.killed_at  # None if it never ended and was not killed
    return runs + list(open_runs.values())


DB_EVENT_SLACK = timedelta(milliseconds=50)


def _assert_no_overlap(runs: list[Run], what: str) -> None:
    """No two executions holding the same lock (the same frame, the same master) overlap."""
    by_lock: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.lock is not None:
            by_lock[run.lock].append(run)
    for lock, group in by_lock.items():
        group.sort(key=lambda r: r.start)
        for a, b in zip(group, group[1:]):
            # The database stamps a job's 'started' event with now(), the start of the
            # fetching transaction, whose query then sees commits made after that instant:
            # a job can be stamped as started a moment before the previous one's end
            # committed. The workers' logs carry the real instants and get no slack.
            slack = DB_EVENT_SLACK if b.where == "db" else timedelta(0)
            assert a.end is not None and a.end <= b.start + slack, (
                f"{what}: two runs holding {lock} overlap: job {a.job_id} ({a.where}, {a.start}..{a.end}) "
                f"and job {b.job_id} ({b.where}, from {b.start})"
            )


def _check_runs(sessions: sessionmaker, workers: list[Proc]) -> tuple[list[Run], list[Run]]:
    """No concurrent runs per lock in the database's record nor in the workers' logs."""
    with sessions() as session:
        db_runs = _db_runs(session)
        jobs = session.execute(text(
            "SELECT id, lock, (args->>'frame_id')::bigint AS frame_id, task_name FROM procrastinate_jobs")).all()
    locks = {j.id: j.lock for j in jobs}
    frames = {j.id: j.frame_id for j in jobs if j.task_name == REDUCE}
    assert all(r.end is not None for r in db_runs), "a job is still 'doing' after the pipeline finished"
    _assert_no_overlap(db_runs, "procrastinate_events")
    log_runs = [run for w in workers for run in _log_runs(w, locks, frames)]
    _assert_no_overlap(log_runs, "worker logs")
    return db_runs, log_runs


def _check_reductions(sessions: sessionmaker, n_lights: int) -> dict[int, Reduction]:
    """One reduction per light, its product on disk, made with the current best masters."""
    cal = CalibrationSettings()
    with sessions() as session:
        lights = _light_ids(session)
        reductions = {r.frame_id: r for r in session.scalars(select(Reduction))}
        assert len(lights) == n_lights
        assert sorted(reductions) == lights, "every light has exactly one reductions row"
        n_rows = session.scalar(text("SELECT count(*) FROM reductions"))
        assert n_rows == n_lights
        for frame_id, red in reductions.items():
            assert Path(red.path).is_file(), f"product of frame {frame_id} missing: {red.path}"
            frame = session.get(Frame, frame_id)
            assert frame.state == "measured", (frame_id, frame.state, frame.state_reason)
            for kind in CALIBRATION_TYPES:
                best = best_master(session, frame, kind, cal)
                assert best is not None, f"no {kind} master for frame {frame_id}"
                used = (getattr(red, f"{kind}_id"), getattr(red, f"{kind}_version"))
                assert used == (best.id, best.version), (
                    f"frame {frame_id} was reduced with {kind} {used}, but the best is {best.id} v{best.version}"
                )
            assert red.missing == []
    return reductions


def _final_reduction_jobs(sessions: sessionmaker, reductions: dict[int, Reduction], db_runs: list[Run],
                          log_runs: list[Run]) -> dict[int, int]:
    """Each light's final reduction was written by exactly one successful run of one job, and
    the worker that ran it logged 'reduced frame N' during that run."""
    with sessions() as session:
        frames = dict(session.execute(text(
            "SELECT id, (args->>'frame_id')::bigint FROM procrastinate_jobs WHERE task_name = :t"), {"t": REDUCE}).all())
    writer = {}
    for frame_id, red in reductions.items():
        at = red.created_at.astimezone().replace(tzinfo=None)
        containing = [r for r in db_runs if frames.get(r.job_id) == frame_id and r.start <= at <= r.end]
        assert len(containing) == 1, f"frame {frame_id}: runs around its final reduction at {at}: {containing}"
        (run,) = containing
        assert run.outcome == "succeeded", f"frame {frame_id}: the run that wrote it ended {run.outcome}"
        in_log = [r for r in log_runs if r.job_id == run.job_id and frame_id in r.reduced]
        assert len(in_log) == 1, f"frame {frame_id}: job {run.job_id} did not log the reduction exactly once"
        writer[frame_id] = run.job_id
    return writer


def _status_json(env: dict[str, str]) -> dict:
    return json.loads(run_obsdb("status", "--format", "json", env=env, check=True).stdout)


def _wait_registered(sessions: sessionmaker, n: int, procs: Procs) -> None:
    def registered():
        with sessions() as session:
            return session.scalar(text("SELECT count(*) FROM procrastinate_workers")) >= n

    wait_until(registered, f"{n} worker(s) registered", procs=procs)


# -- 1. two workers, one database ---------------------------------------------------------


def test_two_workers_share_a_night_without_doing_anything_twice(night, env, procs, sessions):
    w1 = procs.start("worker1", "-v", "worker")
    w2 = procs.start("worker2", "-v", "worker")
    _wait_registered(sessions, 2, procs)  # both are listening before there is any work
    run_obsdb("ingest", night.lights, night.calibrations, env=env, check=True)

    summary = wait_until(lambda: _pipeline_done(sessions, night.n_lights, night.n_calibrations),
                         "the night to be reduced by two workers", procs=procs, sessions=sessions,
                         timeout=DONE_DEADLINE)
    assert summary["queue"]["failed"] == 0
    with sessions() as session:
        # worker_id is kept on finished jobs while their worker is registered
        by_worker = dict(session.execute(text(
            "SELECT worker_id, count(*) FROM procrastinate_jobs WHERE status = 'succeeded' GROUP BY worker_id"
        )).all())
    assert len(by_worker) == 2 and None not in by_worker, f"jobs by worker: {by_worker}"

    for w in (w1, w2):
        code = w.terminate_and_wait(timeout=30)
        assert code == 0, w.tail()
        assert "Stopped worker" in w.output()
        assert "Starting job obsdb:" in w.output(), f"{w.name} ran no job"
    logged = {int(n) for w in (w1, w2) for n in re.findall(r"reduced frame (\d+)", w.output())}
    with sessions() as session:
        assert logged == set(_light_ids(session))

    status = _status_json(env)
    assert status["queue"]["todo"] == status["queue"]["doing"] == status["queue"]["failed"] == 0
    assert status["by_type_and_state"]["light"] == {"measured": night.n_lights}
    reductions = _check_reductions(sessions, night.n_lights)
    db_runs, log_runs = _check_runs(sessions, [w1, w2])
    _final_reduction_jobs(sessions, reductions, db_runs, log_runs)
    # every job that was started ran to an end in one of the two logs
    assert {r.job_id for r in db_runs} == {r.job_id for r in log_runs}


# -- 2. kill -9 in the middle of a job ----------------------------------------------------


def test_killed_worker_job_is_recovered_and_every_light_reduced_once(night, env, procs, sessions, engine):
    run_obsdb("ingest", night.lights, night.calibrations, env=env, check=True)
    with sessions() as session:
        target = _light_ids(session)[0]

    with frame_row_locked(engine, target):
        a = procs.start("worker-a", "-v", "worker")
        job = wait_until(lambda: _doing_and_blocked(sessions, engine, target),
                         f"the reduction of frame {target} to be running", procs=procs, sessions=sessions,
                         timeout=DONE_DEADLINE)
        a.kill9()
        killed = datetime.now()
    with sessions() as session:
        assert _job(session, job.id).status == "doing"  # what a dead worker leaves behind

    b = procs.start("worker-b", "-v", "worker")
    wait_until(lambda: _pipeline_done(sessions, night.n_lights, night.n_calibrations),
               "the night to be finished by the second worker", procs=procs, sessions=sessions,
               timeout=DONE_DEADLINE)

    with sessions() as session:
        after = _job(session, job.id)
        events = _events(session, job.id)
        assert session.scalar(text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'")) == 0
    assert after.status == "succeeded"
    # put back to 'todo' once (attempts + 1), then run to success (attempts + 1)
    assert after.attempts == 2 and events.count("deferred_for_retry") == 1, (after, events)
    assert re.search(rf"job {job.id} \(obsdb:reduce_frame .*\) lost its worker; retrying it", b.output()), b.tail()
    # recovered only after the dead worker's heartbeat was STALLED seconds old
    recovered_line = next(line for line in b.output().splitlines() if f"job {job.id} (" in line)
    recovered_at = datetime.strptime(recovered_line[:23], "%Y-%m-%d %H:%M:%S,%f")
    assert (recovered_at - killed).total_seconds() >= STALLED - 1.5

    code = b.terminate_and_wait(timeout=30)
    assert code == 0, b.tail()
    reductions = _check_reductions(sessions, night.n_lights)
    db_runs, log_runs = _check_runs(sessions, [a, b])
    writers = _final_reduction_jobs(sessions, reductions, db_runs, log_runs)
    assert writers[target] == job.id  # the killed job itself was run again, and finished


def test_killed_worker_job_is_recovered_when_the_same_frame_is_queued_again(night, env, procs, sessions, engine):
    """The dead worker's job must go back to the queue even though another job for the same
    frame was queued meanwhile (a new master asked for the frame again): the two share a
    queueing lock, so a plain retry of the dead job is refused by the database."""
    run_obsdb("ingest", night.lights, env=env, check=True)
    with sessions() as session:
        target = _light_ids(session)[0]

    with frame_row_locked(engine, target):
        a = procs.start("worker-a", "-v", "worker", "--concurrency", "2")
        job = wait_until(lambda: _doing_and_blocked(sessions, engine, target),
                         f"the reduction of frame {target} to be running", procs=procs, sessions=sessions)
        # The calibrations arrive; the new masters ask for the frame to be reduced again.
        run_obsdb("ingest", night.calibrations, env=env, check=True)

        def queued_again():
            with sessions() as session:
                return [j for j in _reduce_jobs(session, target, "todo") if j.id != job.id]

        wait_until(queued_again, f"frame {target} to be queued again", procs=procs, sessions=sessions)
        a.kill9()

    b = procs.start("worker-b", "-v", "worker")
    wait_until(lambda: _pipeline_done(sessions, night.n_lights, night.n_calibrations),
               "the night to be finished after the crash", procs=procs, sessions=sessions,
               timeout=DONE_DEADLINE)
    with sessions() as session:
        after = _job(session, job.id)
        assert "deferred_for_retry" in _events(session, job.id)
    assert after.status in ("succeeded", "cancelled"), after
    assert "housekeeping failed" not in b.output(), b.tail(60)
    code = b.terminate_and_wait(timeout=30)
    assert code == 0, b.tail()
    reductions = _check_reductions(sessions, night.n_lights)
    db_runs, log_runs = _check_runs(sessions, [a, b])
    _final_reduction_jobs(sessions, reductions, db_runs, log_runs)


# -- 3. SIGTERM while busy -----------------------------------------------------------------


def test_sigterm_finishes_the_running_job_and_exits_cleanly(night, env, procs, sessions, engine):
    run_obsdb("ingest", night.lights, night.calibrations, env=env, check=True)
    with sessions() as session:
        target = _light_ids(session)[-1]

    with frame_row_locked(engine, target) as release:
        a = procs.start("worker-a", "-v", "worker")
        job = wait_until(lambda: _doing_and_blocked(sessions, engine, target),
                         f"the reduction of frame {target} to be running", procs=procs, sessions=sessions,
                         timeout=DONE_DEADLINE)
        b = procs.start("worker-b", "-v", "worker")
        _wait_registered(sessions, 2, procs)

        a.popen.send_signal(signal.SIGTERM)
        # The job runs on for longer than the stalled time: worker A must keep showing
        # that it is alive, and nobody may take the job from it.
        hold_until = time.monotonic() + STALLED + 3 * HEARTBEAT
        while time.monotonic() < hold_until:
            assert a.alive(), f"worker A exited while its job was still running:\n{a.tail()}"
            with sessions() as session:
                current = _job(session, job.id)
                heartbeat_age = session.scalar(text(
                    "SELECT extract(epoch FROM now() - last_heartbeat) FROM procrastinate_workers WHERE id = :w"
                ), {"w": job.worker_id})
            assert current.status == "doing" and current.attempts == 0 and current.worker_id == job.worker_id, (
                f"the job of a stopping worker was taken from it: {current}\n{b.tail()}"
            )
            assert heartbeat_age is not None and heartbeat_age < STALLED - 1, (
                f"a stopping worker stopped its heartbeat ({heartbeat_age} s old)"
            )
            time.sleep(0.5)
        released_at = time.monotonic()
        release()
        try:
            code = a.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker A did not exit after its job ended:\n{a.tail()}") from None
        exit_seconds = time.monotonic() - released_at
        a.drain()  # the rest of its log

    assert code == 0, a.tail()
    assert exit_seconds < 15, f"worker A took {exit_seconds:.1f} s to exit after its last job"
    out = a.output()
    assert "Waiting for job to finish" in out and "Stopped worker" in out
    assert out.index(f"Job obsdb:reduce_frame[{job.id}]") > out.index("Stop requested")
    with sessions() as session:
        finished = _job(session, job.id)
    assert (finished.status, finished.attempts) == ("succeeded", 1), finished  # finished by A, once
    a.expected_dead = True  # A stopped as asked: no longer expected alive
    a.killed_at = datetime.now()

    wait_until(lambda: _pipeline_done(sessions, night.n_lights, night.n_calibrations),
               "the other worker to finish the night", procs=procs, sessions=sessions, timeout=DONE_DEADLINE)
    code, took = b.terminate_and_wait(timeout=20), b.stopped_in
    assert code == 0 and took < 10, (code, took, b.tail())
    assert "lost its worker" not in b.output()
    reductions = _check_reductions(sessions, night.n_lights)
    db_runs, log_runs = _check_runs(sessions, [a, b])
    _final_reduction_jobs(sessions, reductions, db_runs, log_runs)


# -- 4. a frame that keeps failing --------------------------------------------------------


def test_frame_that_keeps_failing_ends_failed_with_its_reason(night, cli_env, tmp_path, procs, sessions, engine):
    env = {**cli_env, "OBSDB_CONFIG": str(_config(tmp_path, "max_attempts = 2", "obsdb-2-attempts.toml"))}
    procs.env = env
    lights = tmp_path / "lights"
    shutil.copytree(night.lights, lights)
    run_obsdb("ingest", lights, env=env, check=True)
    with sessions() as session:
        bad = session.get(Frame, _light_ids(session)[0])
        bad_path = Path(bad.path)
    bad_path.write_bytes(b"this is not a FITS file any more\n" * 200)  # the disk went bad after ingest

    # Hold the first failure in the middle (recording the attempt on the frame) while the
    # calibrations arrive and their masters queue the frame again: the retry must still
    # happen although a job for the same frame is already waiting.
    with frame_row_locked(engine, bad.id) as release:
        w = procs.start("worker", "-v", "worker", "--concurrency", "2")
        job = wait_until(lambda: _doing_and_blocked(sessions, engine, bad.id),
                         "the first attempt to fail", procs=procs, sessions=sessions)
        run_obsdb("ingest", night.calibrations, env=env, check=True)

        def queued_again():
            with sessions() as session:
                return [j for j in _reduce_jobs(session, bad.id, "todo") if j.id != job.id]

        wait_until(queued_again, f"frame {bad.id} to be queued again", procs=procs, sessions=sessions)
        release()

        def settled():
            with sessions() as session:
                s = status_summary(session)
            states = s["by_type_and_state"]
            done = (s["queue"]["todo"] == 0 and s["queue"]["doing"] == 0
                    and states["light"] == {"measured": night.n_lights - 1, "failed": 1})
            return s if done else None

        summary = wait_until(settled, "the bad frame to fail and the others to be reduced", procs=procs,
                             sessions=sessions, timeout=DONE_DEADLINE)

    with sessions() as session:
        frame = session.get(Frame, bad.id)
        jobs = _reduce_jobs(session, bad.id)
    assert frame.state == "failed"
    assert frame.tries >= 2
    assert re.fullmatch(r"attempt 2/2: \S*FitsFileError: .+ at \w+\.py:\d+", frame.state_reason), frame.state_reason
    assert "not_fits" in frame.state_reason or "not a FITS" in frame.state_reason, frame.state_reason
    assert any(j.status == "failed" and j.attempts == 2 for j in jobs), jobs
    assert summary["queue"]["failed"] >= 1
    assert [f["id"] for f in summary["failed_frames"]] == [bad.id]
    assert w.output().count(f"frame {bad.id}: attempt") >= 2

    status = _status_json(env)
    assert status["failed_frames"] == [{"id": bad.id, "path": bad.path, "reason": frame.state_reason}]
    assert status["by_type_and_state"]["light"] == {"measured": night.n_lights - 1, "failed": 1}
    shown = run_obsdb("status", env=env, check=True).stdout
    assert "failed frames: 1" in shown
    assert f"frame {bad.id} {bad.path}: attempt 2/2: " in shown
    code = w.terminate_and_wait(timeout=30)
    assert code == 0, w.tail()


# -- 5. the daemon --------------------------------------------------------------------------


def test_daemon_reduces_a_night_arriving_lights_first(night, env, procs, sessions, tmp_path):
    watched = tmp_path / "incoming"
    watched.mkdir()
    d = procs.start("daemon", "-v", "daemon", watched)
    _wait_registered(sessions, 1, procs)
    wait_until(lambda: "watching" in d.output(), "the watcher to start", procs=procs)

    for path in sorted(night.lights.iterdir()):
        shutil.copyfile(path, watched / path.name)

    def lights_reduced():
        with sessions() as session:
            rows = session.scalars(select(Reduction)).all()
        return rows if len(rows) == night.n_lights else None

    first = wait_until(lights_reduced, "the lights to be reduced before any calibration", procs=procs,
                       sessions=sessions, timeout=DONE_DEADLINE)
    # with grace_seconds = 0 they are reduced at once, with no master at all
    assert all(r.bias_id is None and r.dark_id is None and r.flat_id is None for r in first)
    assert all(sorted(r.missing) == ["bias", "dark", "flat"] for r in first), [r.missing for r in first]
    first_at = {r.frame_id: r.created_at for r in first}

    # the calibrations come after the lights, in the order the night took them
    for kind in CALIBRATION_TYPES:
        for path in sorted(night.calibrations.glob(f"{kind}-*")):
            shutil.copyfile(path, watched / path.name)

    summary = wait_until(lambda: _pipeline_done(sessions, night.n_lights, night.n_calibrations),
                         "the whole night to be reduced with its masters", procs=procs, sessions=sessions,
                         timeout=DONE_DEADLINE)
    # a master build queues the lights it affects before it ends, so an empty queue means
    # every light has been reduced again with the newest masters
    reductions = _check_reductions(sessions, night.n_lights)
    assert summary["frames"] == night.n_lights + night.n_calibrations
    with sessions() as session:
        masters = session.scalars(select(Master)).all()
    assert {m.kind for m in masters} == set(CALIBRATION_TYPES)
    for frame_id, red in reductions.items():
        assert red.created_at > first_at[frame_id], f"frame {frame_id} was not reduced again"

    code = d.terminate_and_wait(timeout=30)
    assert code == 0, d.tail()
    assert "obsdb daemon stopped" in d.output()
    db_runs, log_runs = _check_runs(sessions, [d])
    _final_reduction_jobs(sessions, reductions, db_runs, log_runs)
