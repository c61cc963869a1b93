"""The Prometheus endpoint of the daemon and the workers: the figures of ``obsdb status``.

The gauges are read from the database when Prometheus scrapes (a custom collector), not
kept up to date by a thread: every process serving /metrics reports the whole
observatory, as the catalog sees it at that moment. When the database does not answer,
only ``obsdb_up 0`` is served (and the process's own figures).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from obsdb import __version__
from obsdb.models import FRAME_STATES, IMAGE_TYPES

log = logging.getLogger("obsdb.metrics")

# A scrape must not hang on a stuck query: Prometheus gives up after 10 s by default.
SCRAPE_STATEMENT_TIMEOUT_MS = 8000


class ObsdbCollector(Collector):
    """Reads :func:`obsdb.inventory.figures` at each scrape and turns it into gauges."""

    def __init__(self, sessions: sessionmaker) -> None:
        self.sessions = sessions
        self._down_logged = False
        self._lock = threading.Lock()  # one scrape's queries at a time

    def describe(self):  # registering must not query the database
        return []

    def _read(self) -> dict:
        from obsdb.inventory import figures

        with self._lock, self.sessions() as session, session.begin():
            session.execute(text(f"SET LOCAL statement_timeout = {SCRAPE_STATEMENT_TIMEOUT_MS}"))
            return figures(session)

    def collect(self):
        started = time.monotonic()
        try:
            f = self._read()
        except Exception as exc:  # the database is down or unreachable: say so, do not fail the scrape
            if not self._down_logged:
                log.warning("metrics: cannot read the catalog: %s", exc)
                self._down_logged = True
            yield GaugeMetricFamily("obsdb_up", "1 if the catalog database answered this scrape.", value=0)
            return
        if self._down_logged:
            log.info("metrics: the catalog answers again")
            self._down_logged = False
        yield GaugeMetricFamily("obsdb_up", "1 if the catalog database answered this scrape.", value=1)

        info = GaugeMetricFamily("obsdb_build_info", "obsdb version of the process serving these metrics.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        frames = GaugeMetricFamily("obsdb_frames", "Live frames by image type and pipeline state.",
                                   labels=["type", "state"])
        by_type_state = f["by_type_and_state"]
        for imagetyp in sorted(set(IMAGE_TYPES) | set(by_type_state)):
            states = by_type_state.get(imagetyp, {})
            for state in sorted(set(FRAME_STATES) | set(states)):
                frames.add_metric([imagetyp, state], states.get(state, 0))
        yield frames

        q = f["queue"]
        jobs = GaugeMetricFamily("obsdb_queue_jobs", "Jobs in the queue by status (finished jobs are kept).",
                                 labels=["status"])
        for status, n in sorted(q["by_status"].items()):
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("obsdb_queue_depth", "Jobs not finished: waiting (now or later) or running.",
                                value=q["depth"])
        yield GaugeMetricFamily("obsdb_queue_ready_jobs", "Waiting jobs that may run now.", value=q["ready"])
        yield GaugeMetricFamily(
            "obsdb_oldest_pending_job_seconds",
            "Seconds the oldest job that may run now has waited (0 when none waits).",
            value=q["oldest_pending_seconds"] or 0.0,
        )
        yield GaugeMetricFamily("obsdb_failed_frames", "Live frames in state failed.", value=f["failed"])
        yield GaugeMetricFamily("obsdb_needs_wcs_frames", "Live frames left without a WCS.", value=f["needs_wcs"])
        yield GaugeMetricFamily("obsdb_rejected_files", "Files that could not be ingested.",
                                value=f["rejected_files"])
        yield GaugeMetricFamily("obsdb_masters", "Master calibrations.", value=f["masters"])
        yield GaugeMetricFamily(
            "obsdb_measurements_total",
            "Rows in measurements (PostgreSQL's statistics, not a count: lags writes by about a second).",
            value=f["measurements_estimate"],
        )
        yield GaugeMetricFamily("obsdb_scrape_duration_seconds", "Time to read these figures from the catalog.",
                                value=time.monotonic() - started)


def metrics_registry(sessions: sessionmaker) -> CollectorRegistry:
    """A registry with the catalog's figures and this process's CPU, memory and files."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ObsdbCollector(sessions))
    ProcessCollector(registry=registry)
    return registry


@contextlib.contextmanager
def serve_metrics(sessions: sessionmaker, port: int | None, addr: str = "0.0.0.0") -> Iterator[int | None]:
    """Serve /metrics on ``port`` (every interface) while the block runs; nothing if
    ``port`` is None. Yields the port (useful with port 0: a free one)."""
    if port is None:
        yield None
        return
    try:
        server, thread = start_http_server(port, addr=addr, registry=metrics_registry(sessions))
    except OSError as exc:
        raise MetricsPortError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from exc
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class MetricsPortError(RuntimeError):
    """The metrics port could not be opened (in use, or not allowed)."""
