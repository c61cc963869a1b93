"""Observing obsdb: JSON log lines, ``obsdb status --format json``, the Prometheus endpoint.

Real ``obsdb`` subprocesses on a test database. The database gets a light frame whose file
does not exist: ``obsdb process`` (one attempt allowed) fails it for real, so there is a
failed frame with its reason and a failed job; then jobs are queued the way the pipeline
queues them (obsdb.pipeline.queue).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from obsdb.config import Settings
from obsdb.models import Frame, Instrument
from obsdb.pipeline import queue
from conftest import obsdb_command, run_obsdb

pytestmark = pytest.mark.timeout(120)

LOG_FIELDS = {"time", "level", "logger", "message"}


@pytest.fixture
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """One attempt per job (the failure is final at once), no worker taken for dead."""
    config = tmp_path / "obsdb.toml"
    config.write_text("[calibration]\nmax_attempts = 1\n\n[queue]\nstalled_seconds = 600\n")
    return {**cli_env, "OBSDB_CONFIG": str(config)}


def _light_frame(sessions, path: Path, n: int = 1) -> int:
    """A light frame row whose raw file is missing: its reduction can only fail."""
    with sessions() as session, session.begin():
        instrument = session.query(Instrument).filter_by(name="observe-cam").one_or_none()
        if instrument is None:
            instrument = Instrument(name="observe-cam", profile="generic")
            session.add(instrument)
            session.flush()
        frame = Frame(
            instrument_id=instrument.id, path=str(path), sha256=f"{n:064x}", size_bytes=2880,
            file_mtime=datetime.now(UTC), header={}, imagetyp="light", object="M 1", filter="V",
            exptime=30.0, naxis1=64, naxis2=64, date_obs=datetime(2024, 1, 1, 22, tzinfo=UTC),
            mjd_mid=60310.92, night=date(2024, 1, 1),
        )
        session.add(frame)
        session.flush()
        return frame.id


def _fail_one_frame(sessions, env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, subprocess.CompletedProcess]:
    frame_id = _light_frame(sessions, tmp_path / "gone.fits")
    proc = run_obsdb(*args, "process", "--no-progress", env=env, timeout=90, check=True)
    return frame_id, proc


def _json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no log output"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {line!r}")
    for entry in parsed:
        assert LOG_FIELDS <= entry.keys(), entry
        assert datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0)
    return parsed


def _status(env: dict[str, str]) -> dict:
    return json.loads(run_obsdb("status", "--format", "json", env=env, check=True).stdout)


def test_json_logs_and_status_figures(sessions, settings: Settings, env, tmp_path: Path) -> None:
    frame_id, proc = _fail_one_frame(sessions, env, tmp_path, "--log-format", "json", "-v")

    # Every stderr line is one JSON object; procrastinate's lines and ours alike.
    entries = _json_lines(proc.stderr)
    loggers = {e["logger"] for e in entries}
    assert any(name.startswith("procrastinate") for name in loggers), loggers
    assert any(name.startswith("obsdb") for name in loggers), loggers
    # The failure, logged by the task while the job ran, names the job and the frame.
    failure = next(e for e in entries if e["logger"] == "obsdb.pipeline" and e["level"] == "ERROR")
    assert failure["frame_id"] == frame_id
    assert failure["job"]["task_name"] == queue.REDUCE_FRAME
    # procrastinate's own end-of-job line carries its extra fields.
    ended = next(e for e in entries if e.get("action") == "job_error")
    assert ended["job"]["id"] == failure["job"]["id"] and ended["frame_id"] == frame_id
    assert "exception" in ended and "\n" in ended["exception"]

    # Without -v, no INFO lines (procrastinate's neither); the format also comes from
    # OBSDB_LOG_FORMAT. A second frame fails: the most recent failure.
    second = _light_frame(sessions, tmp_path / "lost.fits", n=3)
    quiet = run_obsdb("process", "--no-progress", env={**env, "OBSDB_LOG_FORMAT": "json"}, check=True)
    entries = _json_lines(quiet.stderr)
    assert {e["level"] for e in entries} == {"ERROR"}, entries
    assert {e["frame_id"] for e in entries} == {second}

    # Queue: one job waiting since two minutes ago, one scheduled for tomorrow.
    waiting = _light_frame(sessions, tmp_path / "later.fits", n=2)
    app = queue.make_app(settings)
    with app.open(), sessions() as session:
        assert queue.enqueue_frame(app, session.get(Frame, waiting),
                                   schedule_at=datetime.now(UTC) - timedelta(seconds=120))
        assert queue.enqueue_measure(app, waiting, schedule_at=datetime.now(UTC) + timedelta(days=1))
    with sessions() as session, session.begin():
        session.execute(text("UPDATE frames SET state = 'needs_wcs' WHERE id = :id"), {"id": waiting})

    status = _status(env)
    q = status["queue"]
    assert (q["todo"], q["doing"], q["failed"]) == (2, 0, 2)
    assert (q["depth"], q["ready"], q["scheduled"]) == (2, 1, 1)
    assert 120 <= q["oldest_pending_seconds"] < 180
    assert q["by_status"]["succeeded"] == 0 and q["by_status"]["failed"] == 2
    assert status["by_type_and_state"] == {"light": {"failed": 2, "needs_wcs": 1}}
    assert status["by_state"] == {"failed": 2, "needs_wcs": 1}
    assert (status["frames"], status["failed"], status["needs_wcs"]) == (3, 2, 1)
    assert [f["id"] for f in status["failed_frames"]] == [second, frame_id]
    assert status["measurements_estimate"] == 0
    last = status["last_error"]
    assert last["frame"]["id"] == second and "lost.fits" in last["frame"]["reason"]
    assert datetime.fromisoformat(last["frame"]["at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert last["job"]["task"] == queue.REDUCE_FRAME and last["job"]["args"] == {"frame_id": second}
    assert last["job"]["reason"] == last["frame"]["reason"] and last["job"]["at"] is not None

    # The table shows the same figures.
    table = run_obsdb("status", env=env, check=True).stdout
    assert "depth 2 (1 ready, 1 scheduled for later, 0 running); 2 failed; oldest waiting 2 min" in table
    assert "needs a WCS: 1; failed: 2" in table
    assert f"last failed frame: {second} " in table
    assert f"last failed job: {last['job']['id']} {queue.REDUCE_FRAME}(frame_id={second})" in table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _hold_frame_lock(settings: Settings, frame_id: int) -> None:
    """A job of a frame running on a live worker (not this test's daemon): the frame's next
    job must wait behind it, and stays 'todo' for as long as the test needs."""
    app = queue.make_app(settings)
    async with app.open_async():
        worker_id = await app.job_manager.register_worker()
        await app.configure_task(queue.REDUCE_FRAME, lock=queue.frame_lock(frame_id)).defer_async(frame_id=frame_id)
        job = await app.job_manager.fetch_job(queues=None, worker_id=worker_id)
        assert job is not None and job.task_kwargs == {"frame_id": frame_id}


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_daemon_serves_status_figures_to_prometheus(sessions, settings: Settings, env, tmp_path: Path) -> None:
    frame_id, _ = _fail_one_frame(sessions, env, tmp_path)
    asyncio.run(_hold_frame_lock(settings, 10**9))
    app = queue.make_app(settings)
    with app.open():
        assert queue.enqueue_measure(app, 10**9)  # waits behind the running job

    watched = tmp_path / "incoming"
    watched.mkdir()
    port = _free_port()
    daemon = subprocess.Popen(
        [*obsdb_command(), "--log-format", "json", "-v", "daemon", str(watched), "--metrics-port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                metrics = _scrape(port)
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        status = _status(env)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            _, stderr = daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, stderr = daemon.communicate()
    assert daemon.returncode == 0, stderr
    _json_lines(stderr)

    def value(name: str, **labels: str) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    assert value("obsdb_up") == 1
    q = status["queue"]
    assert q["by_status"]["todo"] == 1 and q["by_status"]["doing"] == 1 and q["by_status"]["failed"] == 1
    for job_status, n in q["by_status"].items():
        assert value("obsdb_queue_jobs", status=job_status) == n, job_status
    assert value("obsdb_queue_depth") == q["depth"] == 2
    assert value("obsdb_queue_ready_jobs") == q["ready"] == 1
    # The status was read a moment after the scrape.
    assert 0 < value("obsdb_oldest_pending_job_seconds") <= q["oldest_pending_seconds"]
    assert q["oldest_pending_seconds"] - value("obsdb_oldest_pending_job_seconds") < 15
    assert value("obsdb_frames", type="light", state="failed") == status["by_type_and_state"]["light"]["failed"] == 1
    assert value("obsdb_frames", type="light", state="measured") == 0
    assert sum(v for (name, _), v in metrics.items() if name == "obsdb_frames") == status["frames"] == 1
    assert value("obsdb_failed_frames") == status["failed"] == 1
    assert value("obsdb_needs_wcs_frames") == status["needs_wcs"] == 0
    assert value("obsdb_measurements_total") == status["measurements_estimate"] == 0
    assert status["last_error"]["frame"]["id"] == frame_id


def test_metrics_port_in_use_is_a_clear_error(env, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_obsdb("worker", "--metrics-port", str(port), env=env, timeout=60)
    assert proc.returncode == 1
    assert f"cannot serve metrics on port {port}" in proc.stderr and "--metrics-port" in proc.stderr


def test_metrics_say_down_when_the_database_does_not_answer() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from obsdb.metrics import ObsdbCollector

    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        families = list(ObsdbCollector(sessionmaker(engine)).collect())
    finally:
        engine.dispose()
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [("obsdb_up", [0])]


def test_text_logs_stay_as_they_were(env) -> None:
    proc = run_obsdb("-v", "status", env={**env, "OBSDB_LOG_FORMAT": "text"}, check=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(" INFO " in line or " WARNING " in line for line in lines), lines
    assert not any(line.startswith("{") for line in lines)


def test_succeeded_jobs_are_pruned_after_the_kept_days_and_failed_ones_stay(settings):
    """The queue table does not grow for ever: housekeeping deletes old succeeded jobs."""
    import asyncio
    import dataclasses

    from sqlalchemy import create_engine, text

    from obsdb.pipeline import queue
    from obsdb.pipeline.worker import prune_finished_jobs

    app = queue.make_app(settings)
    engine = create_engine(queue.database_url(settings))
    with app.open():
        for frame_id in (1, 2, 3):
            assert queue.enqueue_catch_up(app, frame_id)
        with engine.begin() as c:
            ids = dict(c.execute(text("SELECT (args->>'frame_id')::int, id FROM procrastinate_jobs")).all())
            # 1 succeeded 40 days ago, 2 succeeded yesterday, 3 failed 40 days ago
            for frame_id, status, days in ((1, "succeeded", 40), (2, "succeeded", 1), (3, "failed", 40)):
                c.execute(text("UPDATE procrastinate_jobs SET status = CAST(:s AS procrastinate_job_status) "
                               "WHERE id = :id"), {"s": status, "id": ids[frame_id]})
                c.execute(text("UPDATE procrastinate_events SET at = now() - make_interval(days => :d) "
                               "WHERE job_id = :id"), {"d": days, "id": ids[frame_id]})

    async def prune(with_settings) -> None:
        async with app.open_async():
            await prune_finished_jobs(app, with_settings)

    def left() -> set[int]:
        with engine.connect() as c:
            return set(c.execute(text("SELECT (args->>'frame_id')::int FROM procrastinate_jobs")).scalars())

    keep_all = dataclasses.replace(settings, queue=dataclasses.replace(settings.queue, keep_finished_days=0))
    asyncio.run(prune(keep_all))
    assert left() == {1, 2, 3}
    assert settings.queue.keep_finished_days == 30.0
    asyncio.run(prune(settings))
    assert left() == {2, 3}
    engine.dispose()
