"""Running a stage again for chosen frames, with the software and configuration of today.

``obsdb reprocess`` chooses frames (a night, a field, frame ids, or all of them), then
queues one stage for them on the job queue; the workers (``obsdb process``, ``obsdb
worker``, the daemon) run the jobs with *their* settings, and each stage queues the next
one as usual, so a stage brings everything downstream of it up to date:

- ``masters``: rebuild the master calibrations of the chosen nights (calibration frames);
  a rebuilt master is a new version, so every light frame reduced with it is reduced,
  measured and solved again. After losing the products folder this rebuilds it all.
- ``reduce``: calibrate the chosen light frames again (then measure, then the ensembles).
- ``measure``: detection, astrometry and photometry of the chosen reduced frames again
  (then their fields' ensembles).
- ``ensemble``: solve the ensembles of the chosen frames' fields and filters again.

Every stage replaces a frame's rows in one transaction (jobs are idempotent): nothing is
measured twice. Each product row records the obsdb version and configuration hash that
made it (:mod:`obsdb.provenance`); :func:`plan` reports them so one can see what is stale.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import procrastinate
from sqlalchemy import select
from sqlalchemy.orm import Session

from obsdb.calibration.grouping import CALIBRATION_KINDS, CalibrationGroup
from obsdb.config import Settings
from obsdb.models import Frame, Master, Reduction
from obsdb.models.photometry import Ensemble, FrameSolution
from obsdb.photometry.frame_wcs import field_key
from obsdb.pipeline import queue
from obsdb.provenance import VERSION, config_hash

STAGES = ("masters", "reduce", "measure", "ensemble")


class NothingToReprocess(LookupError):
    """No frame matches the selection; the message says what there is."""


@dataclass(frozen=True)
class Selection:
    """Which frames: every given criterion must hold (no criterion at all: every frame)."""

    night: date | None = None
    field: str | None = None
    frame_ids: tuple[int, ...] = ()

    @property
    def everything(self) -> bool:
        return self.night is None and self.field is None and not self.frame_ids

    def describe(self) -> str:
        parts = []
        if self.night is not None:
            parts.append(f"night {self.night.isoformat()}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        if self.frame_ids:
            shown = ", ".join(map(str, self.frame_ids[:10])) + (", ..." if len(self.frame_ids) > 10 else "")
            parts.append(f"frame ids {shown}")
        return " and ".join(parts) if parts else "every frame"


@dataclass
class Plan:
    """What :func:`plan` chose and :func:`enqueue` queued."""

    stage: str
    selection: Selection
    frame_ids: list[int] = field(default_factory=list)  # the frames the stage runs for
    jobs: list[dict] = field(default_factory=list)  # one per job to queue (the task's arguments)
    skipped: dict[str, int] = field(default_factory=dict)  # why frames were left out: how many
    made_with: dict[str, int] = field(default_factory=dict)  # "version/config hash" of today's products
    current: str = ""  # this process's "version/config hash"
    queued: int = 0
    already_queued: int = 0

    def as_dict(self) -> dict:
        return {
            "stage": self.stage, "selection": self.selection.describe(), "frames": len(self.frame_ids),
            "frame_ids": self.frame_ids, "jobs": len(self.jobs), "skipped": self.skipped,
            "made_with": self.made_with, "current": self.current, "queued": self.queued,
            "already_queued": self.already_queued,
        }


def normalise_field(text: str) -> str:
    """A field name as :func:`~obsdb.photometry.frame_wcs.field_key` spells it: OBJECT
    names upper case with single spaces; pointing cells ``cell:RRR+DD`` as they are."""
    cleaned = " ".join(text.split())
    if cleaned.lower().startswith("cell:"):
        return "cell:" + cleaned[5:]
    return cleaned.upper()


def _frames(session: Session, selection: Selection, kinds: Sequence[str]) -> list[Frame]:
    stmt = select(Frame).where(Frame.superseded_at.is_(None), Frame.imagetyp.in_(list(kinds)))
    if selection.night is not None:
        stmt = stmt.where(Frame.night == selection.night)
    if selection.frame_ids:
        stmt = stmt.where(Frame.id.in_(list(selection.frame_ids)))
    frames = list(session.scalars(stmt.order_by(Frame.id)))
    if selection.field is not None:
        wanted = normalise_field(selection.field)
        frames = [f for f in frames if field_key(f) == wanted]
    return frames


def _nothing(session: Session, selection: Selection, what: str) -> NothingToReprocess:
    fields = sorted({field_key(f) for f in session.scalars(
        select(Frame).where(Frame.superseded_at.is_(None), Frame.imagetyp == "light"))})
    nights = sorted({n for n in session.scalars(
        select(Frame.night).where(Frame.superseded_at.is_(None)).distinct()) if n is not None})
    known = ""
    if fields:
        known += "; fields: " + ", ".join(fields[:20]) + (" ..." if len(fields) > 20 else "")
    if nights:
        known += "; nights: " + ", ".join(n.isoformat() for n in nights[-10:]) + (" ..." if len(nights) > 10 else "")
    return NothingToReprocess(f"no {what} matches {selection.describe()}{known}")


def _tally(rows) -> dict[str, int]:
    return dict(sorted(Counter(f"{version}/{digest}" for version, digest in rows).items()))


def plan(session: Session, settings: Settings, stage: str, selection: Selection) -> Plan:
    """Choose the frames and the jobs of ``stage``; changes nothing.

    Raises
    ------
    ValueError
        For an unknown stage, or a field given for the masters stage.
    NothingToReprocess
        When no frame matches.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    result = Plan(stage, selection, current=f"{VERSION}/{config_hash(settings)}")

    if stage == "masters":
        if selection.field is not None:
            raise ValueError("calibration frames have no field: choose masters by --night or --frame-id")
        frames = _frames(session, selection, CALIBRATION_KINDS)
        if not frames:
            raise _nothing(session, selection, "calibration frame")
        groups: dict[str, Frame] = {}
        for frame in frames:
            groups.setdefault(CalibrationGroup.of(frame).key, frame)
        result.frame_ids = [f.id for f in frames]
        result.jobs = [{"frame_id": f.id} for f in groups.values()]
        result.made_with = _tally(session.execute(
            select(Master.obsdb_version, Master.config_hash).where(Master.group_key.in_(list(groups)))).all())
        return result

    frames = _frames(session, selection, ("light",))
    if not frames:
        raise _nothing(session, selection, "light frame")
    ids = [f.id for f in frames]

    if stage == "reduce":
        result.frame_ids = ids
        result.jobs = [{"frame_id": i} for i in ids]
        result.made_with = _tally(session.execute(
            select(Reduction.obsdb_version, Reduction.config_hash).where(Reduction.frame_id.in_(ids))).all())
        return result

    if stage == "measure":
        reduced = set(session.scalars(select(Reduction.frame_id).where(Reduction.frame_id.in_(ids))))
        result.frame_ids = [i for i in ids if i in reduced]
        if len(reduced) < len(ids):
            result.skipped["not reduced (use --stage reduce)"] = len(ids) - len(reduced)
        result.jobs = [{"frame_id": i} for i in result.frame_ids]
        result.made_with = _tally(session.execute(
            select(FrameSolution.obsdb_version, FrameSolution.config_hash)
            .where(FrameSolution.frame_id.in_(ids))).all())
        return result

    # ensemble: the fields and filters of the chosen frames that have been measured
    rows = session.execute(
        select(FrameSolution.frame_id, FrameSolution.field, Frame.filter)
        .join(Frame, Frame.id == FrameSolution.frame_id).where(FrameSolution.frame_id.in_(ids))
    ).all()
    result.frame_ids = sorted(r.frame_id for r in rows)
    if len(rows) < len(ids):
        result.skipped["not measured (use --stage measure)"] = len(ids) - len(rows)
    pairs = sorted({(r.field, r.filter) for r in rows if r.filter is not None})
    if any(r.filter is None for r in rows):
        result.skipped["no filter (no ensemble)"] = sum(1 for r in rows if r.filter is None)
    result.jobs = [{"field": f, "filter_name": b} for f, b in pairs]
    if pairs:
        result.made_with = _tally(
            (e.obsdb_version, e.config_hash) for e in session.scalars(select(Ensemble))
            if (e.field, e.filter) in set(pairs)
        )
    return result


def enqueue(session: Session, app: procrastinate.App, result: Plan) -> Plan:
    """Queue the jobs of ``result`` (the app must be open). A job whose twin already
    waits in the queue is not queued again (``already_queued``)."""
    for job in result.jobs:
        if result.stage == "ensemble":
            done = queue.enqueue_ensemble(app, job["field"], job["filter_name"])
        elif result.stage == "measure":
            done = queue.enqueue_measure(app, job["frame_id"])
        else:  # masters, reduce: the frame's own next job (build its group's master / reduce it)
            done = queue.enqueue_frame_id(app, session, job["frame_id"])
        if done:
            result.queued += 1
        else:
            result.already_queued += 1
    return result

