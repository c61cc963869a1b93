"""The pipeline's jobs. Each is a thin wrapper: the science lives in obsdb.calibration."""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import procrastinate
import psycopg
from procrastinate.exceptions import ConnectorException
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update

from obsdb.calibration.master_stage import build_master, stale_dependents
from obsdb.calibration.reduce_stage import lights_to_redo, reduce_light
from obsdb.models import Frame, Master, MasterInput
from obsdb.photometry.catch_up import measure_new_sources, stale_frames_of_field
from obsdb.photometry.ensemble_stage import solve_field
from obsdb.photometry.frame_wcs import field_key
from obsdb.photometry.measure_stage import measure_frame
from obsdb.pipeline import queue
from obsdb.pipeline.runtime import runtime

log = logging.getLogger("obsdb.pipeline")

# A prerequisite (a master still being built) is checked again after this long, unless
# the last build it waits for wakes it first (queue.wake_waiting_for_masters).
RECHECK = timedelta(seconds=10)


# Errors of the machine, not of the frame: the disk (or the file-size limit) is full, or
# the database connection is gone. They are retried for as long as they last, the wait
# doubling up to TRANSIENT_RETRY_LONGEST, and never make a frame 'failed': an observatory
# that runs out of disk overnight must carry on when space is freed in the morning.
_FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
TRANSIENT_RETRY_LONGEST = 300.0


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) and getattr(
            exc, "connection_invalidated", False):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        exc = exc.orig  # type: ignore[assignment]
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        # No SQLSTATE: the connection could not be made or broke (refused, reset, pool
        # timeout); class 08: connection exception; 57P01-3: the server is shutting down.
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return False


def transient_error(exc: BaseException) -> str | None:
    """What is wrong with the machine, when ``exc`` (or what caused it) is a full disk or
    a lost database connection; None for an error of the frame or of the code."""
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno in _FULL_DISK:
            return "no space to write"
        if isinstance(e, ConnectorException) or _connection_lost(e):
            return "database unavailable"
    return None


class SettingsRetry(BaseRetryStrategy):
    """Retry with exponential back-off, as many times as the settings allow; transient
    errors (:func:`transient_error`) for as long as they last."""

    def get_retry_decision(self, *, exception: BaseException, job) -> RetryDecision | None:
        cal = runtime().settings.calibration
        if transient_error(exception):
            wait = min(cal.retry_wait_seconds * 2 ** min(job.attempts, 30), TRANSIENT_RETRY_LONGEST)
            return RetryDecision(retry_in={"seconds": wait})
        if job.attempts + 1 >= cal.max_attempts:
            return None
        return RetryDecision(retry_in={"seconds": cal.retry_wait_seconds * 2 ** job.attempts})


def _record_attempt(frame_id: int, exc: BaseException, attempt: int) -> bool:
    """Say on the frame what went wrong; on the last attempt, mark it failed. True if the
    job will be retried (always, for a transient error)."""
    rt = runtime()
    transient = transient_error(exc)
    last = attempt >= rt.settings.calibration.max_attempts and transient is None
    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    origin = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
    if transient is not None:
        reason = f"attempt {attempt}: {transient}, will retry until it clears: {summary}{origin}"
    else:
        reason = f"attempt {attempt}/{rt.settings.calibration.max_attempts}: {summary}{origin}"
    values: dict[str, Any] = {"tries": Frame.tries + 1, "state_reason": reason[:2000]}
    if last:
        values["state"] = "failed"
    with rt.sessions() as session, session.begin():
        session.execute(update(Frame).where(Frame.id == frame_id).values(**values))
    log.error("frame %d: %s", frame_id, reason)
    return not last


def _make_room_for_retry(job) -> None:
    """Cancel a copy of this job waiting in the queue (the same queueing lock: the frame was
    asked for again while this attempt ran), so that the retry can take its place.

    The database allows one 'todo' job per queueing lock; procrastinate's retry of this job
    was refused while the copy waited, and the job stayed 'doing' for ever, holding the
    frame's lock, so neither it nor the copy ever ran again. The retry does the copy's work.
    (A copy queued in the instant between this and the retry still meets the refusal.)
    """
    if job.queueing_lock is None:
        return
    with runtime().sessions() as session, session.begin():
        queue.cancel_waiting_copies(session, job.queueing_lock, job.id)


def _guarded(context: procrastinate.JobContext, frame_id: int, work: Callable[[], None]) -> None:
    try:
        work()
    except Exception as exc:
        if _record_attempt(frame_id, exc, context.job.attempts + 1):
            _make_room_for_retry(context.job)
        raise


def _later(until: datetime) -> datetime:
    return max(until, datetime.now(UTC) + timedelta(seconds=1))


def _wait_for_masters(rt, app, frame_id: int) -> bool:
    """True (and the frame's job queued again for later) while masters that the frame
    needs (queue.MASTERS_NEEDED) are still queued or being built for its instrument: do
    the work once, after."""
    with rt.sessions() as session:
        frame = session.get(Frame, frame_id)
        if frame is None:
            return True
        wanted = queue.MASTERS_NEEDED.get(frame.imagetyp, ())
        if wanted and queue.pending_masters(session, frame.instrument_id, wanted):
            queue.enqueue_frame(app, frame, schedule_at=datetime.now(UTC) + RECHECK)
            return True
    return False


def _queue_again_at(rt, app, frame_id: int, until: datetime) -> None:
    with rt.sessions() as session:
        queue.enqueue_frame_id(app, session, frame_id, schedule_at=_later(until))


def build_master_task(context: procrastinate.JobContext, frame_id: int) -> None:
    """Build (or rebuild) the master of the group of calibration frame ``frame_id``."""
    rt = runtime()
    app = rt.queue_app()

    def work() -> None:
        if _wait_for_masters(rt, app, frame_id):
            return
        built = build_master(rt.sessions, rt.settings, frame_id, now=datetime.now(UTC),
                             quiet_seconds=rt.quiet_seconds)
        if built.wait_until is not None:
            _queue_again_at(rt, app, frame_id, built.wait_until)
            return
        if built.master_id is None:
            log.warning("no master for %s: %s", built.group_key, built.reason)
        else:
            log.info("built master %d v%d for %s", built.master_id, built.version, built.group_key)
            _queue_what_the_master_changes(rt, app, built.master_id)
        # Built or not, the group is settled: what waited for it goes on.
        _wake_waiting(rt, frame_id, context.job.id)

    _guarded(context, frame_id, work)


def _queue_what_the_master_changes(rt, app, master_id: int) -> None:
    """Masters built from this one, now stale, and lights that it calibrates better."""
    with rt.sessions() as session:
        master = session.get(Master, master_id)
        for dependent in stale_dependents(session, master, rt.settings.calibration):
            member = session.scalar(
                select(MasterInput.frame_id).where(MasterInput.master_id == dependent.id).limit(1)
            )
            if member is not None:
                queue.enqueue_frame_id(app, session, member)
        for light_id in lights_to_redo(session, master, rt.settings):
            queue.enqueue_frame_id(app, session, light_id)


def _wake_waiting(rt, frame_id: int, job_id: int | None) -> None:
    """The jobs waiting for this instrument's masters run now if this build was the last
    they wait for."""
    with rt.sessions() as session, session.begin():
        frame = session.get(Frame, frame_id)
        if frame is not None:
            woken = queue.wake_waiting_for_masters(session, frame.instrument_id, job_id)
            if woken:
                log.info("%d job(s) waiting for masters of instrument %d run now", woken, frame.instrument_id)


def reduce_frame_task(context: procrastinate.JobContext, frame_id: int) -> None:
    """Calibrate light frame ``frame_id`` with the best masters there are."""
    rt = runtime()
    app = rt.queue_app()

    def work() -> None:
        if _wait_for_masters(rt, app, frame_id):
            return
        done = reduce_light(rt.sessions, rt.settings, frame_id, now=datetime.now(UTC),
                            grace_seconds=rt.grace_seconds)
        if done.wait_until is not None:
            _queue_again_at(rt, app, frame_id, done.wait_until)
            return
        if done.path is not None:
            log.info("reduced frame %d%s", frame_id, f" without {', '.join(done.missing)}" if done.missing else "")
            queue.enqueue_measure(app, frame_id)

    _guarded(context, frame_id, work)


def measure_frame_task(context: procrastinate.JobContext, frame_id: int) -> None:
    """Detect, solve, measure and crossmatch reduced frame ``frame_id``; then queue its
    field's ensemble, and the frames of the field that were waiting for a WCS."""
    rt = runtime()
    app = rt.queue_app()

    def work() -> None:
        done = measure_frame(rt.sessions, rt.settings, frame_id)
        if done.state != "measured":
            if done.state == "needs_wcs":
                log.warning("frame %d needs a WCS: %s", frame_id, done.reason)
            return
        queue.enqueue_ensemble(app, done.field, done.filter)
        with rt.sessions() as session:
            frame = session.get(Frame, frame_id)
            waiting = session.scalars(
                select(Frame).where(Frame.state == "needs_wcs", Frame.instrument_id == frame.instrument_id,
                                    Frame.superseded_at.is_(None))
            ).all()
            for other in waiting:
                if field_key(other) == done.field:
                    queue.enqueue_measure(app, other.id)

    _guarded(context, frame_id, work)


def solve_ensemble_task(field: str, filter_name: str) -> None:
    """Solve the ensemble of one field in one filter and revise its magnitudes; queue the
    forced photometry of its frames at sources found since they were measured (their
    ensemble is then solved once more, with those points)."""
    rt = runtime()
    with rt.sessions() as session:
        stale = stale_frames_of_field(session, field, filter_name)
    if stale:
        app = rt.queue_app()
        queued = sum(queue.enqueue_catch_up(app, frame_id) for frame_id in stale)
        log.info("%s/%s: %d frame(s) to measure at sources found since (%d queued)", field, filter_name,
                 len(stale), queued)
    solve_field(rt.sessions, rt.settings, field, filter_name)


def catch_up_frame_task(context: procrastinate.JobContext, frame_id: int) -> None:
    """Forced photometry of a measured frame at the sources found since it was measured."""
    rt = runtime()
    try:
        done = measure_new_sources(rt.sessions, rt.settings, frame_id)
    except Exception:
        # Retried (SettingsRetry); the frame stays measured: its own measurement stands.
        _make_room_for_retry(context.job)
        raise
    if done.added:
        log.info("frame %d: %d measurement(s) at sources found since it was measured", frame_id, done.added)
        queue.enqueue_ensemble(rt.queue_app(), done.field, done.filter)
    elif done.reason:
        log.info("frame %d: no catching up: %s", frame_id, done.reason)


def make_blueprint() -> procrastinate.Blueprint:
    """The pipeline's tasks on a new blueprint, for one app.

    A new one each time: ``App.add_tasks_from`` renames a blueprint's tasks in place and
    binds them to that app, so one module-level blueprint shared by the several apps of a
    process (the daemon's, its worker's, the one jobs queue with) ended up with tasks named
    ``obsdb:obsdb:...`` bound to the last app made: the worker found no task to run
    (TaskNotFound) and ingest deferred through an app that was already closed.
    """
    blueprint = procrastinate.Blueprint()
    blueprint.task(name="build_master", pass_context=True, retry=SettingsRetry())(build_master_task)
    blueprint.task(name="reduce_frame", pass_context=True, retry=SettingsRetry())(reduce_frame_task)
    blueprint.task(name="measure_frame", pass_context=True, retry=SettingsRetry())(measure_frame_task)
    blueprint.task(name="solve_ensemble", retry=SettingsRetry())(solve_ensemble_task)
    blueprint.task(name="catch_up_frame", pass_context=True, retry=SettingsRetry())(catch_up_frame_task)
    return blueprint
