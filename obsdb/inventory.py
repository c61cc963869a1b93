"""What the catalog holds: frame listings and the status summary."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from obsdb.models import Frame, RejectedFile

FRAME_COLUMNS = (
    "id", "path", "imagetyp", "object", "filter", "exptime", "binning",
    "date_obs", "mjd_mid", "night", "state",
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
    stmt = select(Frame).order_by(Frame.date_obs.nulls_last(), Frame.id)
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
        }
        for f in session.scalars(stmt)
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
    return {
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
