"""Running workers: forever (`obsdb worker`, the daemon) or until the queue is empty
(`obsdb process`). Both sweep for frames no job will reach and give the jobs of dead
workers to live ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import procrastinate
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
    if queued:
        log.info("queued %d frame(s) that had no job", queued)
    return queued


async def recover_stalled(app: procrastinate.App, settings: Settings) -> int:
    """Jobs left 'doing' by a worker that stopped sending heartbeats go back to the queue."""
    stalled = list(await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=settings.queue.stalled_seconds))
    for job in stalled:
        log.warning("job %s (%s %s) lost its worker; retrying it", job.id, job.task_name, job.task_kwargs)
        await app.job_manager.retry_job(job)
    return len(stalled)


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


async def _housekeeping(app: procrastinate.App, runtime: Runtime) -> None:
    """Every heartbeat: recover stalled jobs; every few minutes: reconcile."""
    beats = 0
    while True:
        await asyncio.sleep(runtime.settings.queue.heartbeat_seconds)
        beats += 1
        try:
            await recover_stalled(app, runtime.settings)
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
    async with app.open_async():
        await recover_stalled(app, runtime.settings)
        housekeeping = asyncio.create_task(_housekeeping(app, runtime))
        try:
            if not until_empty:
                await app.run_worker_async(**_worker_options(runtime.settings, concurrency, wait=True))
                return
            while True:
                await app.run_worker_async(**_worker_options(runtime.settings, concurrency, wait=False))
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
