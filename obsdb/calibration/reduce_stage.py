"""The reduce stage: calibrate one light frame with the best masters that exist.

Chooses the masters, waits for missing calibrations up to the grace time, calibrates,
writes the product atomically, and records the reduction in one transaction. Re-running
it replaces the frame's product and its ``reductions`` row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from obsdb.calibration.loading import load_master, sections_of
from obsdb.calibration.products import write_reduced
from obsdb.calibration.reduce import reduce_frame
from obsdb.calibration.selection import best_master
from obsdb.config import Settings
from obsdb.fitsfile import read_data
from obsdb.models import Frame, Master, Reduction
from obsdb.provenance import VERSION, config_hash

KINDS = ("bias", "dark", "flat")


@dataclass(frozen=True)
class FrameReduced:
    frame_id: int
    path: Path | None = None
    missing: list[str] = field(default_factory=list)
    wait_until: datetime | None = None
    reason: str | None = None


def product_path(settings: Settings, frame: Frame) -> Path:
    name = Path(frame.path).name
    for suffix in (".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts", ".fz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    night = frame.night.isoformat() if frame.night else "unknown-night"
    return settings.products_dir / "reduced" / night / f"{name}-f{frame.id}.fits"


def _read_noise_e(frame: Frame, bias: Master | None, settings: Settings, gain: float) -> float:
    if frame.read_noise:
        return frame.read_noise
    if bias is not None and bias.stats.get("read_noise_adu"):
        return float(bias.stats["read_noise_adu"]) * gain
    return settings.calibration.default_read_noise


def _sky(sci: np.ndarray, mask: np.ndarray) -> tuple[float | None, float | None]:
    good = sci[::4, ::4][mask[::4, ::4] == 0]
    good = good[np.isfinite(good)]
    if good.size < 10:
        return None, None
    med = float(np.median(good))
    return med, float(1.4826 * np.median(np.abs(good - med)))


def reduce_light(
    sessions: sessionmaker, settings: Settings, frame_id: int, *, now: datetime, grace_seconds: float
) -> FrameReduced:
    cal = settings.calibration
    with sessions() as session:
        frame = session.get(Frame, frame_id)
        if frame is None or frame.superseded_at is not None:
            return FrameReduced(frame_id, reason="frame gone or superseded")
        masters = {kind: best_master(session, frame, kind, cal) for kind in KINDS}
        missing = [k for k, m in masters.items() if m is None]
        if missing and grace_seconds > 0 and now - frame.ingested_at < timedelta(seconds=grace_seconds):
            until = frame.ingested_at + timedelta(seconds=grace_seconds)
            session.execute(
                update(Frame).where(Frame.id == frame_id).values(
                    state="waiting", state_reason=f"waiting for {', '.join(missing)} until {until:%Y-%m-%d %H:%M} UTC"
                )
            )
            session.commit()
            return FrameReduced(frame_id, missing=missing, wait_until=until)
        session.expunge_all()

    raw, header = read_data(frame.path)
    gain = frame.gain or cal.default_gain
    dark = load_master(masters["dark"].path) if masters["dark"] else None
    reduced = reduce_frame(
        raw,
        gain=gain,
        read_noise=_read_noise_e(frame, masters["bias"], settings, gain),
        saturation=frame.saturation,
        exptime=frame.exptime,
        bias=load_master(masters["bias"].path) if masters["bias"] else None,
        dark=dark,
        dark_exptime=masters["dark"].exptime if masters["dark"] else None,
        flat=load_master(masters["flat"].path) if masters["flat"] else None,
        **sections_of(settings, header),
        steps=cal.steps,
    )
    path = product_path(settings, frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = [frame.path] + [m.path for m in masters.values() if m is not None]
    write_reduced(path, reduced, header=header, inputs=inputs, cards={"OBSDBVER": VERSION, "FRAMEID": frame.id})
    sky, sky_rms = _sky(reduced.sci, reduced.mask)
    dark_scaled = bool(masters["dark"] and abs((masters["dark"].exptime or 0) - (frame.exptime or 0)) > 1e-3)
    values = dict(
        frame_id=frame.id, path=str(path), steps=list(reduced.steps_applied), missing=list(reduced.missing),
        dark_scaled=dark_scaled, sky=sky, sky_rms=sky_rms,
        n_saturated=reduced.stats.get("n_saturated"), n_cosmic=reduced.stats.get("n_cosmic"),
        obsdb_version=VERSION, config_hash=config_hash(settings),
    )
    for kind in KINDS:
        m = masters[kind]
        values[f"{kind}_id"] = m.id if m else None
        values[f"{kind}_version"] = m.version if m else None
    with sessions() as session, session.begin():
        stmt = insert(Reduction).values(**values)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["frame_id"],
                set_={**{k: stmt.excluded[k] for k in values if k != "frame_id"}, "created_at": datetime.now().astimezone()},
            )
        )
        reason = f"reduced without {', '.join(reduced.missing)}" if reduced.missing else None
        session.execute(update(Frame).where(Frame.id == frame.id).values(state="reduced", state_reason=reason))
    return FrameReduced(frame_id, path, list(reduced.missing))


def lights_to_redo(session: Session, master: Master, settings: Settings) -> list[int]:
    """Live light frames whose best master of this kind is now ``master`` (at its current
    version) but which were reduced with another one, or not yet."""
    stmt = select(Frame).where(
        Frame.superseded_at.is_(None), Frame.imagetyp == "light",
        Frame.instrument_id == master.instrument_id,
        Frame.xbinning == master.xbinning, Frame.ybinning == master.ybinning,
        Frame.naxis1 == master.naxis1, Frame.naxis2 == master.naxis2,
        Frame.state.in_(("ingested", "waiting", "reduced", "needs_wcs", "measured")),
    )
    if master.kind == "flat":
        stmt = stmt.where(Frame.filter == master.filter)
    if master.valid_from is not None:
        stmt = stmt.where(Frame.date_obs.between(master.valid_from, master.valid_until))
    redo = []
    reductions = {r.frame_id: r for r in session.scalars(select(Reduction).where(Reduction.frame_id.in_(stmt.with_only_columns(Frame.id))))}
    for frame in session.scalars(stmt):
        best = best_master(session, frame, master.kind, settings.calibration)
        if best is None or best.id != master.id:
            continue
        done = reductions.get(frame.id)
        if done is None or (getattr(done, f"{master.kind}_id"), getattr(done, f"{master.kind}_version")) != (master.id, master.version):
            redo.append(frame.id)
    return redo
