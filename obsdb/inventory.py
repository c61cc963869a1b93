"""What the catalog holds: frame listings and the status summary."""

from __future__ import annotations

from datetime import UTC, date
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from obsdb.models import Frame, Master, RejectedFile, Reduction

FRAME_COLUMNS = (
    "id", "path", "imagetyp", "object", "filter", "exptime", "binning",
    "date_obs", "mjd_mid", "night", "state", "product", "state_reason",
)


def list_frames(
    session: Session,
    *,
    imagetyp: str | None = None,
    filter: str | None = None,
    night: date | None = None,
    state: str | None = None,
    include_superseded: bool = False,
) -> list[dict[str, Any]]:
    """Frames matching every given criterion, in observation order."""
    stmt = (
        select(Frame, Reduction.path)
        .outerjoin(Reduction, Reduction.frame_id == Frame.id)
        .order_by(Frame.date_obs.nulls_last(), Frame.id)
    )
    if imagetyp is not None:
        stmt = stmt.where(Frame.imagetyp == imagetyp)
    if filter is not None:
        stmt = stmt.where(Frame.filter == filter)
    if night is not None:
        stmt = stmt.where(Frame.night == night)
    if state is not None:
        stmt = stmt.where(Frame.state == state)
    elif not include_superseded:
        stmt = stmt.where(Frame.superseded_at.is_(None))
    return [
        {
            "id": f.id,
            "path": f.path,
            "imagetyp": f.imagetyp,
            "object": f.object,
            "filter": f.filter,
            "exptime": f.exptime,
            "binning": f.binning,
            "date_obs": f.date_obs.isoformat() if f.date_obs else None,
            "mjd_mid": f.mjd_mid,
            "night": f.night.isoformat() if f.night else None,
            "state": f.state,
            "state_reason": f.state_reason,
            "product": product,
        }
        for f, product in session.execute(stmt)
    ]


def list_masters(session: Session) -> list[dict[str, Any]]:
    """Every master calibration, newest night first."""
    return [
        {
            "id": m.id, "kind": m.kind, "filter": m.filter, "exptime": m.exptime,
            "binning": f"{m.xbinning}x{m.ybinning}", "night": m.night.isoformat() if m.night else None,
            "n_inputs": m.n_inputs, "median": m.stats.get("median"), "version": m.version,
            "is_bad": m.is_bad, "path": m.path,
        }
        for m in session.scalars(select(Master).order_by(Master.night.desc().nulls_last(), Master.kind, Master.id))
    ]


# Seconds since each waiting job could first have run: since its scheduled time, or
# (queued to run at once) since it was queued. Jobs scheduled for later are not waiting.
_OLDEST_PENDING_SQL = text(
    "SELECT extract(epoch FROM now() - min(coalesce(j.scheduled_at, e.at))) FROM procrastinate_jobs j "
    "LEFT JOIN LATERAL (SELECT min(at) AS at FROM procrastinate_events WHERE job_id = j.id) e ON true "
    "WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())"
)

# Rows in measurements from the statistics collector, without counting them: its count of
# live rows, or the planner's estimate when those statistics were lost (after a crash or a
# reset) but the table has rows. Lags writes by a second or so.
_MEASUREMENTS_ESTIMATE_SQL = text(
    "SELECT CASE WHEN pg_stat_get_live_tuples(c.oid) > 0 OR c.reltuples <= 0 "
    "THEN pg_stat_get_live_tuples(c.oid) ELSE c.reltuples::bigint END "
    "FROM pg_class c WHERE c.oid = to_regclass('measurements')"
)


def job_status_counts(session: Session) -> dict[str, int]:
    """Jobs per queue status, every status present (zero when none)."""
    from procrastinate.jobs import Status

    from obsdb.pipeline.queue import queue_counts

    counts = dict.fromkeys((s.value for s in Status if s is not Status.ABORTING), 0)  # legacy, unused
    counts.update(queue_counts(session))
    return counts


def figures(session: Session) -> dict[str, Any]:
    """The counts that tell whether the pipeline keeps up: frames per type and state, jobs
    per status, the queue's depth and its oldest waiting job. Cheap enough to be read at
    every metrics scrape (the status command and the Prometheus endpoint both use it)."""
    live = Frame.superseded_at.is_(None)
    by_type_state: dict[str, dict[str, int]] = {}
    for imagetyp, state, n in session.execute(
        select(Frame.imagetyp, Frame.state, func.count()).where(live).group_by(Frame.imagetyp, Frame.state)
    ):
        by_type_state.setdefault(imagetyp, {})[state] = n
    by_state: dict[str, int] = {}
    for states in by_type_state.values():
        for state, n in states.items():
            by_state[state] = by_state.get(state, 0) + n
    jobs = job_status_counts(session)
    ready = session.scalar(text(
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' "
        "AND (scheduled_at IS NULL OR scheduled_at <= now())"
    )) or 0
    oldest = session.scalar(_OLDEST_PENDING_SQL)
    return {
        "queue": {
            "todo": jobs["todo"], "doing": jobs["doing"], "failed": jobs["failed"],
            # Jobs not yet finished; of the waiting ones, those that may run now and
            # those scheduled for later (a retry's back-off, a light waiting for masters).
            "depth": jobs["todo"] + jobs["doing"],
            "ready": ready,
            "scheduled": jobs["todo"] - ready,
            "oldest_pending_seconds": float(oldest) if oldest is not None else None,
            "by_status": jobs,
        },
        "frames": sum(by_state.values()),
        "by_type": {t: sum(s.values()) for t, s in by_type_state.items()},
        "by_state": by_state,
        "by_type_and_state": by_type_state,
        "failed": by_state.get("failed", 0),
        "needs_wcs": by_state.get("needs_wcs", 0),
        "masters": session.scalar(select(func.count()).select_from(Master)),
        "rejected_files": session.scalar(select(func.count()).select_from(RejectedFile)),
        "measurements_estimate": int(session.scalar(_MEASUREMENTS_ESTIMATE_SQL) or 0),
    }


def last_errors(session: Session) -> dict[str, Any]:
    """The most recent failed frame (its reason and when) and the most recent failed job."""
    frame = session.execute(
        select(Frame.id, Frame.path, Frame.state_reason, Frame.updated_at)
        .where(Frame.superseded_at.is_(None), Frame.state == "failed")
        .order_by(Frame.updated_at.desc(), Frame.id.desc())
        .limit(1)
    ).first()
    job = session.execute(text(
        "SELECT j.id, j.task_name, j.args, j.attempts, e.at, "
        "       CASE WHEN f.state = 'failed' THEN f.state_reason END AS state_reason "
        "FROM procrastinate_jobs j "
        "LEFT JOIN LATERAL (SELECT max(at) AS at FROM procrastinate_events "
        "                   WHERE job_id = j.id AND type = 'failed') e ON true "
        "LEFT JOIN frames f ON f.id = CASE WHEN jsonb_typeof(j.args->'frame_id') = 'number' "
        "                                  THEN (j.args->>'frame_id')::bigint END "
        "WHERE j.status = 'failed' ORDER BY e.at DESC NULLS LAST, j.id DESC LIMIT 1"
    )).first()
    return {
        "frame": None if frame is None else {
            "id": frame.id, "path": frame.path, "reason": frame.state_reason,
            "at": frame.updated_at.astimezone(UTC).isoformat() if frame.updated_at else None,
        },
        "job": None if job is None else {
            "id": job.id, "task": job.task_name, "args": job.args, "attempts": job.attempts,
            "at": job.at.astimezone(UTC).isoformat() if job.at else None,
            # procrastinate keeps no error text; a frame's job leaves it on the frame it failed
            "reason": job.state_reason,
        },
    }


def status_summary(session: Session, *, max_failures: int = 50) -> dict[str, Any]:
    """Counts by type and state, the job queue, the last errors, and the files and frames
    that failed, with reasons."""
    live = Frame.superseded_at.is_(None)
    summary = figures(session)
    rejected = session.scalars(
        select(RejectedFile).order_by(RejectedFile.last_seen.desc()).limit(max_failures)
    ).all()
    failed = session.execute(
        select(Frame.id, Frame.path, Frame.state_reason)
        .where(live, Frame.state == "failed")
        .order_by(Frame.updated_at.desc())
        .limit(max_failures)
    ).all()
    summary.update(
        superseded=session.scalar(select(func.count()).select_from(Frame).where(~live)),
        last_error=last_errors(session),
        rejected=[
            {"path": r.path, "kind": r.kind, "reason": r.reason, "quarantine_path": r.quarantine_path}
            for r in rejected
        ],
        failed_frames=[{"id": f.id, "path": f.path, "reason": f.state_reason} for f in failed],
    )
    return summary
