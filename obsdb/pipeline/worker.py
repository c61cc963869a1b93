"""Running workers: forever (`obsdb worker`, the daemon) or until the queue is empty
(`obsdb process`). Both sweep for frames no job will reach and give the jobs of dead
workers to live ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import procrastinate
from procrastinate.worker import Worker
from sqlalchemy import text

from obsdb.config import Settings
from obsdb.models import Frame
from obsdb.pipeline import queue
from obsdb.pipeline.runtime import Runtime, set_runtime

log = logging.getLogger("obsdb.pipeline")


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


def _worker_options(settings: Settings, concurrency: int, wait: bool) -> dict:
    return dict(
        concurrency=concurrency,
        wait=wait,
        update_heartbeat_interval=settings.queue.heartbeat_seconds,
        stalled_worker_timeout=settings.queue.stalled_seconds,
        fetch_job_polling_interval=1.0,
        listen_notify=True,
        install_signal_handlers=wait,
        delete_jobs="never",  # finished jobs stay as the audit trail of what ran
    )


async def _housekeeping(app: procrastinate.App, runtime: Runtime, running: list[Worker]) -> None:
    """Every heartbeat: beat for our worker, recover stalled jobs; every few minutes: reconcile."""
    beats = 0
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
            if beats % 30 == 0:
                await asyncio.to_thread(reconcile, runtime)
        except Exception:  # the database may be down for a while: try again next beat
            log.exception("housekeeping failed; will retry")


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

    async with app.open_async():
        await recover_stalled(app, runtime)
        housekeeping = asyncio.create_task(_housekeeping(app, runtime, running))
        try:
            if not until_empty:
                await run_one(wait=True)
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
    asyncio.run(_run(runtime, concurrency, until_empty, progress))
