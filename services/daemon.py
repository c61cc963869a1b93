"""``obsdb daemon``: the watcher and a worker in one service, as a small observatory runs it.

The worker owns the main thread (and SIGTERM/SIGINT: the current job is finished or
released, nothing is lost); the watcher runs beside it and queues each new frame's job.
"""

from __future__ import annotations

import logging
import threading

from obsdb.ingest import Ingestor
from obsdb.metrics import serve_metrics
from obsdb.pipeline.queue import FrameEnqueuer, make_app
from obsdb.pipeline.runtime import Runtime
from obsdb.pipeline.worker import run_worker
from obsdb.services.watcher import Watcher

log = logging.getLogger("obsdb.daemon")


def run_daemon(runtime: Runtime, dirs: list[str], *, concurrency: int = 1, metrics_port: int | None = None) -> None:
    """Watch ``dirs`` and run jobs until stopped; with ``metrics_port``, serve the status
    figures to Prometheus on that port meanwhile."""
    settings = runtime.settings
    app = make_app(settings)
    with serve_metrics(runtime.sessions, metrics_port), app.open():
        ingestor = Ingestor(runtime.sessions, settings, on_new_frame=FrameEnqueuer(app, runtime.sessions))
        watch = settings.watch
        watcher = Watcher(
            dirs, ingestor, settle_seconds=watch.settle_seconds, rescan_seconds=watch.rescan_seconds,
            polling=watch.polling, poll_interval=watch.poll_interval, give_up_seconds=watch.give_up_seconds,
        )
        thread = threading.Thread(target=watcher.run_forever, name="obsdb-watcher", daemon=True)
        thread.start()
        log.info("obsdb daemon watching %s", ", ".join(dirs))
        try:
            run_worker(runtime, concurrency=concurrency)
        finally:
            watcher.stop()
            thread.join(timeout=30)
            log.info("obsdb daemon stopped")
