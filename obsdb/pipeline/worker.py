"""Running workers: forever (`obsdb worker`, the daemon) or until the queue is empty
(`obsdb process`). Both sweep for frames no job will reach and give the jobs of dead
workers to live ones.

A worker that runs forever outlives its database: procrastinate's worker loop ends (or
raises) when the server goes away (its heartbeat, its listener or its next fetch fails),
so :func:`_run_forever` starts a new one, with back-off, until it is asked to stop. The
jobs the old loop was running stay 'doing' under a worker whose heartbeat has stopped,
and are recovered like the jobs of a killed worker once the server is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import procrastinate
from procrastinate import signals
from procrastinate.worker import Worker
from sqlalchemy import text

from obsdb.calibration.products import remove_stale_temporaries
from obsdb.config import Settings
from obsdb.models import Frame
from obsdb.pipeline import queue
from obsdb.pipeline.memory import keep_freed_memory
from obsdb.pipeline.runtime import Runtime, set_runtime

log = logging.getLogger("obsdb.pipeline")

# Back-off before a worker loop that lost the database is started again (seconds).
RESTART_FIRST, RESTART_LONGEST = 1.0, 30.0
# A loop that ran this long before it ended is healthy again: its back-off starts over.
RESTART_HEALTHY_AFTER = 60.0
# Temporary product files untouched this long belong to a writer that died (kill -9).
STALE_TEMPORARY_SECONDS = 600.0


def reconcile(runtime: Runtime) -> int:
    """Queue every frame that waits for the pipeline but has no job; returns how many."""
    app = queue.make_app(runtime.settings)
    queued = 0
    with app.open(), runtime.sessions() as session:
        for frame_id in queue.frames_without_jobs(session):
            frame = session.get(Frame, frame_id)
            if frame is not None and queue.enqueue_frame(app, frame):
                queued += 1
        for frame_id in queue.frames_without_jobs(session, "reduced"):
            queued += queue.enqueue_measure(app, frame_id)
    if queued:
        log.info("queued %d frame(s) that had no job", queued)
    return queued


def _requeue_lost_job(runtime: Runtime, job_id: int, worker_id: int | None) -> bool:
    """Put back to 'todo' a job whose worker died, in one transaction; False if it is not
    (or no longer) that dead worker's.

    The job must still be 'doing' for the same worker: between reading the stalled jobs and
    now, another worker may have put it back and a third be running it, and turning that
    run back to 'todo' would let the job run twice at once. A copy of the same work already
    waiting in the queue (same queueing lock: the frame was asked for again meanwhile) is
    cancelled: the database allows one 'todo' job per queueing lock, and a plain retry
    (procrastinate's ``retry_job``) is refused, which left the dead job 'doing' for ever,
    holding its lock, so the frame was never processed again.
    """
    with runtime.sessions() as session, session.begin():
        row = session.execute(
            text(
                "SELECT queueing_lock FROM procrastinate_jobs WHERE id = :id AND status = 'doing' "
                "AND worker_id IS NOT DISTINCT FROM :worker FOR UPDATE"
            ),
            {"id": job_id, "worker": worker_id},
        ).first()
        if row is None:
            return False
        if row.queueing_lock is not None:
            queue.cancel_waiting_copies(session, row.queueing_lock, job_id)
        # What procrastinate_retry_job does (its triggers record a 'deferred_for_retry' event).
        session.execute(
            text("UPDATE procrastinate_jobs SET status = 'todo', attempts = attempts + 1, scheduled_at = now() "
                 "WHERE id = :id"),
            {"id": job_id},
        )
    return True


async def recover_stalled(app: procrastinate.App, runtime: Runtime) -> int:
    """Jobs left 'doing' by a worker that stopped sending heartbeats go back to the queue."""
    stalled = list(await app.job_manager.get_stalled_jobs(
        seconds_since_heartbeat=runtime.settings.queue.stalled_seconds))
    recovered = 0
    for job in stalled:
        try:
            if await asyncio.to_thread(_requeue_lost_job, runtime, job.id, job.worker_id):
                log.warning("job %s (%s %s) lost its worker; retrying it", job.id, job.task_name, job.task_kwargs)
                recovered += 1
        except Exception:  # one job's trouble must not keep the others from being recovered
            log.exception("could not put job %s back in the queue; will try again", job.id)
    return recovered


def _doing_for(runtime: Runtime, worker_id: int) -> dict[int, str]:
    with runtime.sessions() as session:
        return dict(session.execute(
            text("SELECT id, task_name FROM procrastinate_jobs WHERE status = 'doing' AND worker_id = :w"),
            {"w": worker_id},
        ).all())


async def recover_unrecorded(runtime: Runtime, running: list[Worker], suspects: set[int]) -> set[int]:
    """Put back in the queue the jobs a live worker of ours holds as 'doing' in the database
    although it runs them no more: the database went away as the job ended, so its result
    (success, failure or retry) could not be written, and procrastinate does not try again.
    Nobody else would ever take such a job: its worker's heartbeat goes on.

    A job is taken back when it is seen so on two beats in a row (a job just fetched is
    'doing' in the database a moment before the worker holds it). Returns this beat's
    suspects, for the next one.
    """
    seen: set[int] = set()
    for worker in running:
        worker_id = worker.worker_id
        if worker_id is None:
            continue
        held = {ctx.job.id for ctx in dict(getattr(worker, "_running_jobs", {}) or {}).values()}
        doing = await asyncio.to_thread(_doing_for, runtime, worker_id)
        for job_id, task_name in doing.items():
            if job_id in held:
                continue
            if job_id not in suspects:
                seen.add(job_id)
            elif await asyncio.to_thread(_requeue_lost_job, runtime, job_id, worker_id):
                log.warning("job %s (%s) ended but its result could not be saved (database unavailable); "
                            "retrying it", job_id, task_name)
    return seen


def _worker_options(settings: Settings, concurrency: int, wait: bool) -> dict:
    return dict(
        concurrency=concurrency,
        wait=wait,
        update_heartbeat_interval=settings.queue.heartbeat_seconds,
        stalled_worker_timeout=settings.queue.stalled_seconds,
        fetch_job_polling_interval=1.0,
        listen_notify=True,
        # A worker that runs forever gets SIGTERM/SIGINT from _run_forever, which outlives
        # the procrastinate workers it starts one after the other.
        install_signal_handlers=False,
        delete_jobs="never",  # finished jobs stay as the audit trail of what ran
    )


def sweep_temporaries(runtime: Runtime) -> None:
    """Remove the temporary files of product writes that a killed process left behind."""
    try:
        removed = remove_stale_temporaries(runtime.settings.products_dir, STALE_TEMPORARY_SECONDS)
    except OSError as exc:
        log.warning("could not sweep %s for stale temporary files: %s", runtime.settings.products_dir, exc)
        return
    for path in removed:
        log.warning("removed %s, left by a product write that never finished", path)


async def prune_finished_jobs(app: procrastinate.App, settings: Settings) -> None:
    """Delete the jobs that succeeded more than ``queue.keep_finished_days`` ago (the products
    record what made them; the queue is for work still to do, and for failures)."""
    days = settings.queue.keep_finished_days
    if days > 0:
        await app.job_manager.delete_old_jobs(nb_hours=max(1, round(days * 24)))


async def _housekeeping(app: procrastinate.App, runtime: Runtime, running: list[Worker]) -> None:
    """Every heartbeat: beat for our worker, recover stalled jobs; every few minutes:
    reconcile, sweep temporary files and prune old finished jobs."""
    beats = 0
    failing_since: float | None = None
    suspects: set[int] = set()
    while True:
        await asyncio.sleep(runtime.settings.queue.heartbeat_seconds)
        beats += 1
        try:
            # procrastinate stops a worker's heartbeat as soon as the worker is asked to stop,
            # then waits for its running jobs: a job still running stalled_seconds after a
            # SIGTERM was taken for lost by the other workers and run a second time, at once.
            # This beats for the worker until it has unregistered (its id is None then).
            for worker in running:
                if worker.worker_id is not None:
                    await app.job_manager.update_heartbeat(worker.worker_id)
            await recover_stalled(app, runtime)
            suspects = await recover_unrecorded(runtime, running, suspects)
            if beats % 30 == 0:
                await asyncio.to_thread(reconcile, runtime)
                await asyncio.to_thread(sweep_temporaries, runtime)
                await prune_finished_jobs(app, runtime.settings)
        except Exception as exc:  # the database may be down for a while: try again next beat
            if failing_since is None:
                failing_since = time.monotonic()
                log.exception("housekeeping failed; will retry every %.0f s", runtime.settings.queue.heartbeat_seconds)
            else:
                log.warning("housekeeping still failing (%.0f s): %s", time.monotonic() - failing_since,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        if failing_since is not None:
            log.warning("housekeeping works again after %.0f s", time.monotonic() - failing_since)
            failing_since = None


async def _run_forever(runtime: Runtime, run_one: Callable[[], Awaitable[None]], running: list[Worker]) -> None:
    """Run procrastinate workers one after the other until SIGTERM/SIGINT.

    procrastinate's worker ends when it loses the database: its next fetch raises, or a
    side task (heartbeat, listener) fails and stops it, and then unregistering raises
    too. Each time, a new worker is started after a back-off (1 s, doubling up to 30 s),
    so that a database restart costs a pause, not the service.
    """
    stop = asyncio.Event()

    def request_stop() -> None:
        stop.set()
        for worker in running:
            worker.stop()

    failures = 0
    # procrastinate's own helper: the first signal asks for a clean stop, and uninstalls
    # itself, so that a second one stops the process at once.
    with signals.on_stop(request_stop):
        while True:
            started = time.monotonic()
            loop_task = asyncio.ensure_future(run_one())
            stop_task = asyncio.ensure_future(stop.wait())
            await asyncio.wait({loop_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() and not loop_task.done():
                # Asked again now that the new worker has started: a stop requested before
                # its run() began would have been forgotten (run() clears old requests).
                for worker in running:
                    worker.stop()
            stop_task.cancel()
            try:
                await loop_task
                why = "its worker loop ended by itself (a heartbeat or the listener failed)"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop.is_set():
                    raise
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                why = f"its worker loop failed: {type(exc).__name__}: {first}"
            if stop.is_set():
                return
            failures = 1 if time.monotonic() - started > RESTART_HEALTHY_AFTER else failures + 1
            delay = min(RESTART_FIRST * 2 ** (failures - 1), RESTART_LONGEST)
            log.error("the worker lost the database: %s; starting it again in %.0f s", why, delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return  # asked to stop while waiting
            except TimeoutError:
                pass
            try:
                # What the database missed meanwhile: frames registered whose job could not
                # be queued. (The lost loop's own jobs come back through recover_stalled.)
                await asyncio.to_thread(reconcile, runtime)
            except Exception as exc:
                log.warning("database still unavailable (%s); trying again", str(exc).strip().splitlines()[0]
                            if str(exc).strip() else type(exc).__name__)
                continue
            log.warning("database reachable again; starting a new worker loop")


def _active_jobs(runtime: Runtime) -> tuple[int, float | None]:
    """Jobs still to run ('todo' or 'doing') and seconds until the next scheduled one."""
    with runtime.sessions() as session:
        row = session.execute(
            text(
                "SELECT count(*), extract(epoch FROM min(scheduled_at) - now()) FROM procrastinate_jobs "
                "WHERE status IN ('todo', 'doing')"
            )
        ).one()
    return row[0], (float(row[1]) if row[1] is not None else None)


async def _run(runtime: Runtime, concurrency: int, until_empty: bool,
               progress: Callable[[int], None] | None) -> None:
    app = queue.make_app(runtime.settings)
    await asyncio.to_thread(reconcile, runtime)
    running: list[Worker] = []  # the worker housekeeping beats for

    async def run_one(wait: bool) -> None:
        worker = Worker(app=app, **_worker_options(runtime.settings, concurrency, wait=wait))
        running[:] = [worker]
        await worker.run()

    await asyncio.to_thread(sweep_temporaries, runtime)
    async with app.open_async():
        await recover_stalled(app, runtime)
        housekeeping = asyncio.create_task(_housekeeping(app, runtime, running))
        try:
            if not until_empty:
                await _run_forever(runtime, lambda: run_one(wait=True), running)
                return
            while True:
                await run_one(wait=False)
                active, next_in = await asyncio.to_thread(_active_jobs, runtime)
                if progress is not None:
                    progress(active)
                if active == 0:
                    break
                # What is left is scheduled for later, or held by a worker that may be dead.
                await asyncio.sleep(min(max(next_in or 1.0, 0.2), 5.0))
        finally:
            housekeeping.cancel()


def run_worker(runtime: Runtime, *, concurrency: int = 1, until_empty: bool = False,
               progress: Callable[[int], None] | None = None) -> None:
    """Run jobs in this process; with ``until_empty``, return when the queue is empty."""
    set_runtime(runtime)
    keep_freed_memory()
    asyncio.run(_run(runtime, concurrency, until_empty, progress))
