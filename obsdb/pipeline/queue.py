"""The procrastinate app on the catalog database, and queueing a frame's next job."""

from __future__ import annotations

import logging

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from obsdb.calibration.grouping import CALIBRATION_KINDS, CalibrationGroup
from obsdb.config import Settings
from obsdb.database import database_url
from obsdb.models import Frame

log = logging.getLogger(__name__)

# Masters before the frames they calibrate, biases before darks before flats.
# Ensembles last: in a batch run every frame of a field is measured before it is solved.
PRIORITY = {"bias": 30, "dark": 20, "flat": 10, "light": 0, "measure": 0, "catch_up": -5, "ensemble": -10}
BUILD_MASTER = "obsdb:build_master"
REDUCE_FRAME = "obsdb:reduce_frame"
MEASURE_FRAME = "obsdb:measure_frame"
SOLVE_ENSEMBLE = "obsdb:solve_ensemble"
CATCH_UP_FRAME = "obsdb:catch_up_frame"


def conninfo(settings: Settings) -> str:
    """libpq connection string of the catalog (procrastinate speaks psycopg directly)."""
    return make_url(database_url(settings)).set(drivername="postgresql").render_as_string(hide_password=False)


def make_app(settings: Settings) -> procrastinate.App:
    from obsdb.pipeline.tasks import make_blueprint

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(settings)))
    app.add_tasks_from(make_blueprint(), namespace="obsdb")
    return app


def master_lock(group: CalibrationGroup) -> str:
    return f"master:{group.key}"


def frame_lock(frame_id: int) -> str:
    return f"frame:{frame_id}"


def _defer(app: procrastinate.App, task: str, *, lock: str, priority: int, schedule_at=None,
           queueing_lock: str | None = None, **kwargs) -> bool:
    try:
        app.configure_task(
            task, lock=lock, queueing_lock=queueing_lock or lock, priority=priority, schedule_at=schedule_at
        ).defer(**kwargs)
        return True
    except AlreadyEnqueued:
        # The same work is already waiting in the queue, but perhaps for later: a light
        # frame waiting out its grace time for calibrations is asked for again when its
        # masters are built, and must then run now, not when the grace time ends.
        _bring_forward(app, queueing_lock or lock, schedule_at)
        return False


def _bring_forward(app: procrastinate.App, queueing_lock: str, schedule_at) -> None:
    """Move the waiting job holding ``queueing_lock`` to ``schedule_at`` (None: now) if it
    is scheduled later than that."""
    app.connector.get_sync_connector().execute_query(
        "UPDATE procrastinate_jobs SET scheduled_at = coalesce(%(at)s, now()) "
        "WHERE queueing_lock = %(lock)s AND status = 'todo' AND scheduled_at > coalesce(%(at)s, now())",
        lock=queueing_lock, at=schedule_at,
    )


def enqueue_frame(app: procrastinate.App, frame: Frame, schedule_at=None) -> bool:
    """Queue what comes next for a frame: its master's build, or its reduction."""
    if frame.imagetyp in CALIBRATION_KINDS:
        group = CalibrationGroup.of(frame)
        return _defer(app, BUILD_MASTER, lock=master_lock(group), priority=PRIORITY[frame.imagetyp],
                      schedule_at=schedule_at, frame_id=frame.id)
    if frame.imagetyp == "light":
        return _defer(app, REDUCE_FRAME, lock=frame_lock(frame.id), priority=PRIORITY["light"],
                      schedule_at=schedule_at, frame_id=frame.id)
    return False  # unclassified frames wait for a person


def enqueue_measure(app: procrastinate.App, frame_id: int, schedule_at=None) -> bool:
    """Queue the measure stage of a reduced frame. It shares the frame's execution lock
    with its reduction (never both at once) but not the queueing lock: a reduction asked
    for again must not be refused because a measurement waits."""
    return _defer(app, MEASURE_FRAME, lock=frame_lock(frame_id), queueing_lock=f"measure:{frame_id}",
                  priority=PRIORITY["measure"], schedule_at=schedule_at, frame_id=frame_id)


def enqueue_catch_up(app: procrastinate.App, frame_id: int) -> bool:
    """Queue the forced photometry of a measured frame at sources found since (under the
    frame's lock: never beside its measurement)."""
    return _defer(app, CATCH_UP_FRAME, lock=frame_lock(frame_id), queueing_lock=f"catch-up:{frame_id}",
                  priority=PRIORITY["catch_up"], frame_id=frame_id)


def enqueue_ensemble(app: procrastinate.App, field: str, filter_name: str, schedule_at=None) -> bool:
    """Queue the ensemble solution of a field in a filter (one waiting copy at most)."""
    lock = f"ensemble:{field}/{filter_name}"
    return _defer(app, SOLVE_ENSEMBLE, lock=lock, priority=PRIORITY["ensemble"], schedule_at=schedule_at,
                  field=field, filter_name=filter_name)


def enqueue_frame_id(app: procrastinate.App, session: Session, frame_id: int, schedule_at=None) -> bool:
    frame = session.get(Frame, frame_id)
    return frame is not None and enqueue_frame(app, frame, schedule_at)


def pending_masters(session: Session, instrument_id: int, kinds: tuple[str, ...],
                    except_job: int | None = None) -> int:
    """Master builds of these kinds for this instrument still queued or running (other
    than job ``except_job``)."""
    patterns = [f"master:{kind}/instrument={instrument_id}/%" for kind in kinds]
    return session.scalar(
        text(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') "
            "AND task_name = :task AND lock LIKE ANY(:patterns) AND id IS DISTINCT FROM :except_job"
        ),
        {"task": BUILD_MASTER, "patterns": patterns, "except_job": except_job},
    ) or 0


#: The masters of its instrument that a frame's job waits for while any is queued or
#: being built, by the frame's type: a light's reduction, a flat's or a dark's build.
MASTERS_NEEDED = {"light": ("bias", "dark", "flat"), "flat": ("bias", "dark"), "dark": ("bias",)}


def wake_waiting_for_masters(session: Session, instrument_id: int, finishing_job: int) -> int:
    """Bring forward to now the waiting jobs of this instrument whose masters are no
    longer pending once ``finishing_job`` (a master build) ends; returns how many.

    They would otherwise find out at their next re-check. Only when none of the kinds a
    job waits for is pending: a burst of builds wakes each waiting job once, after the
    last build it needs, not after every build. A job woken while it must still wait
    (its grace or quiet time) checks and goes back to sleep.
    """
    woken = 0
    for imagetyp, kinds in MASTERS_NEEDED.items():
        if pending_masters(session, instrument_id, kinds, except_job=finishing_job):
            continue
        task = REDUCE_FRAME if imagetyp == "light" else BUILD_MASTER
        woken += session.execute(
            text(
                "UPDATE procrastinate_jobs j SET scheduled_at = now() FROM frames f "
                "WHERE j.status = 'todo' AND j.task_name = :task AND j.scheduled_at > now() "
                "AND f.id = (j.args->>'frame_id')::bigint AND f.instrument_id = :instrument "
                "AND f.imagetyp = :imagetyp"
            ),
            {"task": task, "instrument": instrument_id, "imagetyp": imagetyp},
        ).rowcount
    return woken


def frames_without_jobs(session: Session, state: str = "ingested") -> list[int]:
    """Frames left in ``state`` (ingested: for their master or reduction; reduced: for
    their measurement) that no job will reach (a lost enqueue, a crash, a database
    restored from backup): the reconciliation sweep queues them again."""
    return list(
        session.scalars(
            text(
                "SELECT f.id FROM frames f WHERE f.superseded_at IS NULL AND f.state = :state "
                "AND f.imagetyp IN ('bias', 'dark', 'flat', 'light') AND NOT EXISTS ("
                " SELECT 1 FROM procrastinate_jobs j WHERE j.status IN ('todo', 'doing')"
                " AND (j.args->>'frame_id')::bigint = f.id) ORDER BY f.id"
            ),
            {"state": state},
        )
    )


def queue_counts(session: Session) -> dict[str, int]:
    rows = session.execute(text("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY status")).all()
    return {status: n for status, n in rows}


class FrameEnqueuer:
    """Ingest's ``on_new_frame``: queue the new frame's next job (the app must be open)."""

    def __init__(self, app: procrastinate.App, sessions) -> None:
        self.app = app
        self.sessions = sessions

    def __call__(self, frame_id: int, imagetyp: str) -> None:
        with self.sessions() as session:
            enqueue_frame_id(self.app, session, frame_id)


def cancel_waiting_copies(session: Session, queueing_lock: str, keep_id: int) -> None:
    """Cancel 'todo' jobs holding ``queueing_lock`` other than ``keep_id``.

    The database allows one 'todo' job per queueing lock, so a job that goes back to the
    queue (a retry, a recovered job) is refused while a copy of the same work waits there;
    the job going back does the copy's work.
    """
    session.execute(
        text("UPDATE procrastinate_jobs SET status = 'cancelled' WHERE queueing_lock = :lock "
             "AND status = 'todo' AND id <> :id"),
        {"lock": queueing_lock, "id": keep_id},
    )
