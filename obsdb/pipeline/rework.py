"""Redoing work when a person changes their mind about a master."""

from __future__ import annotations

import procrastinate
from sqlalchemy import or_, select, update
from sqlalchemy.orm import sessionmaker

from obsdb.config import Settings
from obsdb.models import Frame, Master, MasterInput, Reduction
from obsdb.pipeline.queue import enqueue_frame


def mark_master_bad(sessions: sessionmaker, app: procrastinate.App, settings: Settings, master_id: int,
                    reason: str) -> int:
    """Mark a master bad and queue everything made with it; returns the frames queued."""
    with sessions() as session, session.begin():
        master = session.get(Master, master_id)
        if master is None:
            raise LookupError(f"there is no master {master_id}; `obsdb masters` lists them")
        session.execute(update(Master).where(Master.id == master_id).values(is_bad=True, bad_reason=reason))
    with sessions() as session:
        frames = list(session.scalars(
            select(Frame).join(Reduction, Reduction.frame_id == Frame.id).where(
                or_(Reduction.bias_id == master_id, Reduction.dark_id == master_id, Reduction.flat_id == master_id)
            )
        ))
        dependents = session.scalars(select(Master).where(Master.is_bad.is_(False))).all()
        for dep in dependents:
            if master_id in (dep.stats.get("bias_id"), dep.stats.get("dark_id")):
                member = session.scalar(select(MasterInput.frame_id).where(MasterInput.master_id == dep.id).limit(1))
                if member is not None:
                    frames.append(session.get(Frame, member))
        return sum(1 for frame in frames if enqueue_frame(app, frame))
