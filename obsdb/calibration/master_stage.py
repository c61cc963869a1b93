"""The masters stage: build (or rebuild) the master of one calibration group.

Reads the group's raw frames and the masters it depends on, combines, writes the product
atomically, then records the master, its inputs and the members' states in one
transaction. Re-running it for an unchanged group rewrites the same file and rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from statistics import median

import numpy as np
from astropy.stats import sigma_clipped_stats
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from obsdb.calibration.grouping import CalibrationGroup
from obsdb.calibration.loading import frame_sections, load_master, raw_loader
from obsdb.calibration.masters import MasterFrame, make_master_bias, make_master_dark, make_master_flat
from obsdb.calibration.products import write_master
from obsdb.calibration.selection import best_master
from obsdb.config import Settings
from obsdb.fitsfile import read_data
from obsdb.models import Frame, Master, MasterInput
from obsdb.provenance import VERSION, config_hash


@dataclass(frozen=True)
class MasterBuilt:
    """What a build did: the master, or why there is none (yet)."""

    group_key: str
    master_id: int | None = None
    version: int | None = None
    wait_until: datetime | None = None  # the group is still growing: try again then
    reason: str | None = None
    depends_on_missing: list[str] = field(default_factory=list)


def _validity_days(settings: Settings, kind: str) -> float:
    cal = settings.calibration
    return {"bias": cal.bias_validity_days, "dark": cal.dark_validity_days, "flat": cal.flat_validity_days}[kind]


def _product_path(settings: Settings, group: CalibrationGroup, frames: list[Frame]) -> Path:
    # Named after its inputs: the same inputs give the same file (idempotent), a new
    # member gives a new file, and reductions made with the old one stay readable.
    digest = hashlib.sha256("".join(sorted(f.sha256 for f in frames)).encode()).hexdigest()[:12]
    detail = f"-{group.filter}" if group.kind == "flat" else (f"-{group.exptime:g}s" if group.kind == "dark" else "")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in detail)
    night = group.night.isoformat() if group.night else "unknown-night"
    return settings.products_dir / "masters" / night / f"{group.kind}{safe}-i{group.instrument_id}-{digest}.fits"


def _read_noise_adu(frames: list[Frame]) -> float | None:
    """Read noise from the difference of two biases (robust, ADU).

    A sigma-clipped standard deviation, not a MAD: the difference of two integer frames
    is integer, so its MAD is a whole number and 1.4826 * MAD / sqrt(2) moves in steps of
    1.05 ADU (a read noise of 6.67 ADU came out as 6.29).
    """
    if len(frames) < 2:
        return None
    a, _ = read_data(frames[0].path)
    b, _ = read_data(frames[1].path)
    diff = (np.asarray(a, dtype=np.float64) - b).ravel()
    _, _, std = sigma_clipped_stats(diff, sigma=5.0, maxiters=5)
    return float(std / np.sqrt(2.0))


def build_master(
    sessions: sessionmaker, settings: Settings, frame_id: int, *, now: datetime, quiet_seconds: float
) -> MasterBuilt:
    """Build the master of the group ``frame_id`` belongs to."""
    cal = settings.calibration
    with sessions() as session:
        frame = session.get(Frame, frame_id)
        if frame is None or frame.superseded_at is not None:
            return MasterBuilt(group_key="", reason="frame gone or superseded")
        group = CalibrationGroup.of(frame)
        members = list(session.scalars(group.members()))
        newest = max(m.ingested_at for m in members)
        if quiet_seconds > 0 and now - newest < timedelta(seconds=quiet_seconds):
            return MasterBuilt(group.key, wait_until=newest + timedelta(seconds=quiet_seconds))
        representative = members[len(members) // 2]
        bias_row = best_master(session, representative, "bias", cal) if group.kind != "bias" else None
        dark_row = best_master(session, representative, "dark", cal) if group.kind == "flat" else None
        session.expunge_all()

    gain = next((m.gain for m in members if m.gain), None) or cal.default_gain
    read_noise_e = next((m.read_noise for m in members if m.read_noise), None)
    # The noise-model error needs both; without a known read noise, the scatter of the
    # inputs gives the error instead.
    noise = dict(gain=gain, read_noise=read_noise_e) if read_noise_e else {}
    loaders = [raw_loader(m.path) for m in members]
    sections = frame_sections(settings, members[0].path)
    inputs: list[tuple[Frame, bool, str | None]] = []
    stats_extra: dict = {}
    if group.kind == "bias":
        master = make_master_bias(loaders, **sections, **noise)
        rn_adu = _read_noise_adu(members)
        if rn_adu is not None:
            stats_extra["read_noise_adu"] = rn_adu
            stats_extra["read_noise_e"] = rn_adu * gain
        inputs = [(m, True, None) for m in members]
    elif group.kind == "dark":
        bias = load_master(bias_row.path) if bias_row else None
        master, _rate = make_master_dark(loaders, bias, group.exptime, **sections, **noise)
        inputs = [(m, True, None) for m in members]
    else:
        bias = load_master(bias_row.path) if bias_row else None
        dark = load_master(dark_row.path) if dark_row else None
        rate = None
        if dark is not None:
            t = float(dark.stats.get("exptime") or dark_row.exptime or 0) or None
            rate = MasterFrame("dark_rate", dark.data / t, dark.error / t, dark.mask, {}) if t else None
        saturation = next((m.saturation for m in members if m.saturation), None)
        max_level = cal.flat_max_level or (0.8 * saturation if saturation else None)
        try:
            master = make_master_flat(
                loaders, bias, rate, [m.exptime or 0.0 for m in members], min_level=cal.flat_min_level,
                max_level=max_level, saturation=saturation, **sections, **noise,
            )
        except ValueError as exc:
            if "every flat was rejected" not in str(exc):
                raise
            return _record_unusable(sessions, group, members, str(exc))
        rejected = {r["index"]: r["reason"] for r in master.stats.get("rejected", [])}
        inputs = [(m, i not in rejected, rejected.get(i)) for i, m in enumerate(members)]

    missing = [k for k, row in (("bias", bias_row), ("dark", dark_row)) if row is None and (
        (k == "bias" and group.kind != "bias") or (k == "dark" and group.kind == "flat"))]
    stats = {**_json_stats(master.stats), **stats_extra, "missing": missing}
    for name, row in (("bias", bias_row), ("dark", dark_row)):
        if row is not None:
            stats[f"{name}_id"], stats[f"{name}_version"] = row.id, row.version
    path = _product_path(settings, group, members)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_master(path, master, header=None, inputs=[m.path for m in members],
                 cards={"GROUPKEY": group.key[:68], "OBSDBVER": VERSION})
    return _record(sessions, settings, group, members, inputs, path, stats)


def _json_value(v):
    """JSONB takes no numpy scalars and no NaN."""
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (np.integer, np.floating)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _json_stats(stats: dict) -> dict:
    return _json_value(dict(stats))


def _upsert_master(session: Session, settings: Settings, group: CalibrationGroup, members: list[Frame],
                   path: Path | None, stats: dict, n_used: int) -> tuple[int, int]:
    times = [m.date_obs for m in members if m.date_obs is not None]
    mid = sorted(times)[len(times) // 2] if times else None
    days = timedelta(days=_validity_days(settings, group.kind))
    temps = [m.ccd_temp for m in members if m.ccd_temp is not None]
    values = dict(
        group_key=group.key, instrument_id=group.instrument_id, kind=group.kind, filter=group.filter,
        exptime=group.exptime if group.kind == "dark" else (0.0 if group.kind == "bias" else None),
        xbinning=group.xbinning, ybinning=group.ybinning, naxis1=group.naxis1, naxis2=group.naxis2,
        night=group.night, ccd_temp=median(temps) if temps else None, date_obs=mid,
        valid_from=min(times) - days if times else None, valid_until=max(times) + days if times else None,
        n_inputs=n_used, stats=stats, path=str(path) if path else None,
        obsdb_version=VERSION, config_hash=config_hash(settings),
    )
    stmt = insert(Master).values(**values)
    row = session.execute(
        stmt.on_conflict_do_update(
            index_elements=["group_key"],
            set_={**{k: stmt.excluded[k] for k in values if k != "group_key"},
                  "version": Master.version + 1, "built_at": datetime.now().astimezone()},
        ).returning(Master.id, Master.version)
    ).one()
    return row.id, row.version


def _record(sessions, settings, group, members, inputs, path, stats) -> MasterBuilt:
    with sessions() as session, session.begin():
        n_used = sum(1 for _, used, _ in inputs if used)
        master_id, version = _upsert_master(session, settings, group, members, path, stats, n_used)
        session.execute(delete(MasterInput).where(MasterInput.master_id == master_id))
        for frame, used, reason in inputs:
            session.add(MasterInput(master_id=master_id, frame_id=frame.id, used=used, reason=reason))
            session.execute(
                update(Frame).where(Frame.id == frame.id).values(
                    state="combined" if used else "unused", state_reason=reason,
                )
            )
    return MasterBuilt(group.key, master_id, version)


def _record_unusable(sessions, group, members, reason) -> MasterBuilt:
    with sessions() as session, session.begin():
        session.execute(
            update(Frame).where(Frame.id.in_([m.id for m in members])).values(state="unused", state_reason=reason)
        )
    return MasterBuilt(group.key, reason=reason)


def stale_dependents(session: Session, master: Master, cal) -> list[Master]:
    """Darks and flats whose best bias (or dark) is now ``master`` at a version they were
    not built with: they must be rebuilt."""
    kinds = {"bias": ("dark", "flat"), "dark": ("flat",)}.get(master.kind, ())
    if not kinds:
        return []
    candidates = session.scalars(
        select(Master).where(
            Master.instrument_id == master.instrument_id, Master.kind.in_(kinds),
            Master.xbinning == master.xbinning, Master.ybinning == master.ybinning,
            Master.naxis1 == master.naxis1, Master.naxis2 == master.naxis2,
        )
    ).all()
    stale = []
    for dep in candidates:
        best = best_master(session, dep, master.kind, cal)  # a master has a frame's attributes
        if best is not None and best.id == master.id and (
            dep.stats.get(f"{master.kind}_id"), dep.stats.get(f"{master.kind}_version")
        ) != (master.id, master.version):
            stale.append(dep)
    return stale
