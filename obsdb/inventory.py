"""What the catalog holds: frame listings and the status summary."""

from __future__ import annotations

from datetime import date
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


def status_summary(session: Session, *, max_failures: int = 50) -> dict[str, Any]:
    """Counts by type and state, and the files and frames that failed, with reasons."""
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
    rejected = session.scalars(
        select(RejectedFile).order_by(RejectedFile.last_seen.desc()).limit(max_failures)
    ).all()
    failed = session.execute(
        select(Frame.id, Frame.path, Frame.state_reason)
        .where(live, Frame.state == "failed")
        .order_by(Frame.updated_at.desc())
        .limit(max_failures)
    ).all()
    from obsdb.pipeline.queue import queue_counts

    oldest = session.scalar(text(
        "SELECT extract(epoch FROM now() - min(coalesce(scheduled_at, e.at))) FROM procrastinate_jobs j "
        "LEFT JOIN LATERAL (SELECT min(at) AS at FROM procrastinate_events WHERE job_id = j.id) e ON true "
        "WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())"
    ))
    jobs = queue_counts(session)
    return {
        "queue": {
            "todo": jobs.get("todo", 0), "doing": jobs.get("doing", 0), "failed": jobs.get("failed", 0),
            "oldest_pending_seconds": float(oldest) if oldest is not None else None,
        },
        "masters": session.scalar(select(func.count()).select_from(Master)),
        "frames": sum(by_state.values()),
        "by_type": {t: sum(s.values()) for t, s in by_type_state.items()},
        "by_state": by_state,
        "by_type_and_state": by_type_state,
        "superseded": session.scalar(select(func.count()).select_from(Frame).where(~live)),
        "rejected_files": session.scalar(select(func.count()).select_from(RejectedFile)),
        "rejected": [
            {"path": r.path, "kind": r.kind, "reason": r.reason, "quarantine_path": r.quarantine_path}
            for r in rejected
        ],
        "failed_frames": [{"id": f.id, "path": f.path, "reason": f.state_reason} for f in failed],
    }
