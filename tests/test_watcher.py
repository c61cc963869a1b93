"""``obsdb watch`` end to end: a real subprocess, a real PostgreSQL, real FITS files.

The watcher runs as ``obsdb watch DIR --settle 0.5``; files are dropped, renamed, moved in,
written slowly, cut short and copied while it runs, and the tests poll the database with a
deadline until the expected rows are there. Two in-process tests cover what a subprocess
cannot show: lost file-system events (rescan) and a database that goes away.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from obsdb.ingest import Ingestor
from obsdb.models import Frame, RejectedFile
from obsdb.services import watcher as watcher_module
from obsdb.services.watcher import Watcher, is_wanted

from conftest import NGC520, obsdb_command
from fitsmaker import write_frame

pytestmark = pytest.mark.timeout(120)

DEADLINE = 60.0  # seconds any expected database state may take to appear


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frame(path: Path, seed: int, minute: int = 0) -> Path:
    """A small camera-like frame with its own content (seed and DATE-OBS differ)."""
    date_obs = f"2024-03-01T{2 + minute // 60:02d}:{minute % 60:02d}:00"
    return write_frame(path, seed=seed, shape=(64, 64), date_obs=date_obs, exptime=30.0, filter="V")


def _frame_bytes(tmp_path: Path, seed: int) -> bytes:
    scratch = tmp_path / "scratch" / f"s{seed}.fits"
    return _frame(scratch, seed=seed, minute=seed).read_bytes()


def wait_for(condition: Callable[[], object], what: str, log: Callable[[], str] = lambda: "",
             timeout: float = DEADLINE) -> object:
    """Poll ``condition`` until it returns something truthy, or fail with the watcher's log."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n--- log ---\n{log()}")
        time.sleep(0.2)


def live_frames(sessions) -> list[tuple[str, str]]:
    with sessions() as s:
        return [tuple(r) for r in s.execute(select(Frame.path, Frame.sha256).where(Frame.superseded_at.is_(None)))]


def rejected(sessions) -> dict[str, tuple[str, str]]:
    with sessions() as s:
        rows = s.execute(select(RejectedFile.path, RejectedFile.kind, RejectedFile.reason))
        return {r.path: (r.kind, r.reason) for r in rows}


class Running:
    """An ``obsdb watch`` subprocess and its combined output."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int, timeout: float = 10) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start_watcher(tmp_path: Path, cli_env: dict[str, str]):
    """Start ``obsdb watch``; every process is killed at the end of the test, whatever happens."""
    started: list[tuple[subprocess.Popen, object]] = []

    def start(*dirs: Path, rescan: float = 2.0, give_up: float | None = None) -> Running:
        env = dict(cli_env)
        if give_up is not None:
            config = tmp_path / "obsdb.toml"
            config.write_text(f"[watch]\ngive_up_seconds = {give_up}\n")
            env["OBSDB_CONFIG"] = str(config)
        log_path = tmp_path / f"watch-{len(started)}.log"
        out = open(log_path, "w")  # noqa: SIM115 - closed by the fixture
        proc = subprocess.Popen(
            [*obsdb_command(), "watch", *map(str, dirs), "--settle", "0.5", "--rescan", str(rescan)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        started.append((proc, out))
        running = Running(proc, log_path)
        wait_for(lambda: "watching" in running.log() or proc.poll() is not None, "the watcher to start",
                 running.log)
        assert proc.poll() is None, f"obsdb watch exited {proc.returncode}:\n{running.log()}"
        return running

    yield start
    for proc, out in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        out.close()


@pytest.mark.parametrize(
    ("rel", "wanted"),
    [("a.fits", True), ("n/b.FIT", True), ("c.fits.gz", True), (".c.fits", False), ("d.fits.part", False),
     ("e.tmp", False), (".incoming/f.fits", False), ("notes.txt", False)],
)
def test_which_names_are_watched(tmp_path, rel, wanted):
    assert is_wanted(str(tmp_path), str(tmp_path / rel)) is wanted


def test_catch_up_then_events_then_sigterm(tmp_path, start_watcher, sessions):
    watched = tmp_path / "incoming"
    before = [_frame(watched / "night1" / f"pre{i}.fits", seed=i, minute=i) for i in range(2)]
    if NGC520.is_dir():  # a real camera file, gzip-compressed (copied: shared/ is read-only)
        before.append(Path(shutil.copy(NGC520 / "NGC520-001-g.fit.gz", watched / "night1")))

    # A long rescan interval: after the catch-up scan, only events can find the new files.
    w = start_watcher(watched, rescan=600)
    expected = {str(p): _sha(p) for p in before}
    wait_for(lambda: set(expected) <= {p for p, _ in live_frames(sessions)}, "the catch-up scan", w.log)

    new = [_frame(watched / "a.fits", seed=10, minute=10)]
    # Written under a temporary or hidden name, then renamed: only the final name counts.
    for seed, temp in ((11, "b.fits.part"), (12, ".c.fits")):
        _frame(watched / temp, seed=seed, minute=seed)
        final = watched / temp.lstrip(".").removesuffix(".part")
        os.rename(watched / temp, final)
        new.append(final)
    # A whole directory moved in from outside the tree: one event for the directory.
    staging = tmp_path / "staging" / "night2"
    moved = [_frame(staging / f"m{i}.fits", seed=20 + i, minute=20 + i) for i in range(2)]
    os.rename(staging, watched / "night2")
    new += [watched / "night2" / p.name for p in moved]
    # A writer's hidden staging folder is left alone (the final check wants no extra rows).
    _frame(watched / ".staging" / "hidden.fits", seed=30)

    expected |= {str(p): _sha(p) for p in new}
    wait_for(lambda: set(expected) <= {p for p, _ in live_frames(sessions)}, "the new files", w.log)
    rows = live_frames(sessions)
    assert sorted(rows) == sorted(expected.items())  # each exactly once, nothing else
    assert f"ingested {watched / 'a.fits'} -> frame" in w.log()

    assert w.stop(signal.SIGTERM) == 0
    assert "stopped on SIGTERM" in w.log()


def test_slow_writer_and_bad_files_then_sigint(tmp_path, start_watcher, sessions):
    watched = tmp_path / "incoming"
    watched.mkdir()
    w = start_watcher(watched, give_up=4)

    not_fits = watched / "notes.fits"
    not_fits.write_text("observing log, not a FITS file\n" * 10)
    truncated = watched / "cut.fits"
    whole = _frame_bytes(tmp_path, seed=2)
    truncated.write_bytes(whole[: 2880 + 4000])  # header and part of the data

    slow = watched / "slow.fits"
    data = _frame_bytes(tmp_path, seed=1)
    with open(slow, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        # Four times the settle time without growing, yet not complete: must not be read.
        stop_at = time.monotonic() + 2.0
        while time.monotonic() < stop_at:
            assert str(slow) not in {p for p, _ in live_frames(sessions)}
            assert str(slow) not in rejected(sessions)
            time.sleep(0.2)
        f.write(data[len(data) // 2 :])

    wait_for(lambda: str(slow) in {p for p, _ in live_frames(sessions)}, "the slowly written file", w.log)
    assert [sha for p, sha in live_frames(sessions) if p == str(slow)] == [_sha(slow)]

    wait_for(lambda: {str(not_fits), str(truncated)} <= set(rejected(sessions)), "the bad files", w.log)
    bad = rejected(sessions)
    assert bad[str(not_fits)][0] == "not_fits"
    assert bad[str(truncated)][0] == "truncated"
    assert str(slow) not in bad
    assert {p for p, _ in live_frames(sessions)} == {str(slow)}
    assert f"rejected {truncated}: truncated" in w.log()

    assert w.stop(signal.SIGINT) == 0
    assert "stopped on SIGINT" in w.log()


def test_burst_of_files_and_copies(tmp_path, start_watcher, sessions):
    watched = tmp_path / "incoming"
    watched.mkdir()
    w = start_watcher(watched)

    burst = [_frame(watched / "burst" / f"f{i:03d}.fits", seed=100 + i, minute=i) for i in range(200)]
    copies = [Path(shutil.copyfile(burst[i], watched / f"copy-of-f{i:03d}.fits")) for i in (0, 50, 199)]
    shas = {_sha(p) for p in burst}
    assert len(shas) == 200

    def all_done():
        return len(live_frames(sessions)) >= 200 and w.log().count("duplicate ") >= len(copies)

    wait_for(all_done, "200 frames and the copies", w.log)
    with sessions() as s:
        n, distinct = s.execute(select(func.count(), func.count(func.distinct(Frame.sha256))).select_from(Frame)).one()
    assert n == distinct == 200
    assert {sha for _, sha in live_frames(sessions)} == shas
    assert not rejected(sessions)
    assert w.stop(signal.SIGTERM) == 0


# -- in process: what a subprocess cannot show ------------------------------------------


def _run_in_thread(watcher: Watcher) -> threading.Thread:
    thread = threading.Thread(target=watcher.run_forever, daemon=True)
    thread.start()
    return thread


def test_rescan_finds_files_whose_events_were_lost(tmp_path, sessions, settings, monkeypatch):
    monkeypatch.setattr(watcher_module._Handler, "on_any_event", lambda self, event: None)
    watched = tmp_path / "incoming"
    early = _frame(watched / "early.fits", seed=1)
    watcher = Watcher([str(watched)], Ingestor(sessions, settings), settle_seconds=0.2, rescan_seconds=1.0,
                      polling=False, poll_interval=1.0)
    thread = _run_in_thread(watcher)
    try:
        wait_for(lambda: str(early) in {p for p, _ in live_frames(sessions)}, "the catch-up scan")
        late = _frame(watched / "sub" / "late.fits", seed=2)
        wait_for(lambda: str(late) in {p for p, _ in live_frames(sessions)}, "the rescan", timeout=20)
    finally:
        watcher.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(live_frames(sessions)) == 2


class FlakyIngestor:
    """The real ingestor, after raising the given exceptions one per call."""

    def __init__(self, real: Ingestor, errors: list[Exception]) -> None:
        self.real = real
        self.errors = errors
        self.calls = 0

    def ingest_file(self, path):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.real.ingest_file(path)


def test_database_outage_and_errors_do_not_stop_the_watcher(tmp_path, sessions, settings):
    watched = tmp_path / "incoming"
    files = [_frame(watched / f"f{i}.fits", seed=i) for i in range(2)]
    outage = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    flaky = FlakyIngestor(Ingestor(sessions, settings), [outage, outage, RuntimeError("a bug")])
    watcher = Watcher([str(watched)], flaky, settle_seconds=0.1, rescan_seconds=60, polling=False,
                      poll_interval=1.0)
    thread = _run_in_thread(watcher)
    try:
        wait_for(lambda: {str(p) for p in files} <= {p for p, _ in live_frames(sessions)},
                 "ingest after the errors", timeout=30)
    finally:
        watcher.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert flaky.calls == 5  # three failures, then each file once
    assert len(live_frames(sessions)) == 2
