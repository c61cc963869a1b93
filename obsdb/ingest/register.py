"""Ingest's writes to the catalog. Functions take a session and never commit: the caller
(:class:`obsdb.ingest.service.Ingestor`) owns the transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from obsdb.config import Settings
from obsdb.ingest.inspect import Inspection
from obsdb.ingest.quarantine import quarantine_copy
from obsdb.instruments import FrameInfo
from obsdb.models import Frame, Instrument, RejectedFile
from obsdb.nights import observing_night


def ensure_instrument(session: Session, name: str, profile: str) -> int:
    session.execute(
        insert(Instrument).values(name=name, profile=profile).on_conflict_do_nothing(index_elements=["name"])
    )
    return session.execute(select(Instrument.id).where(Instrument.name == name)).scalar_one()


def find_instrument(session: Session, name: str) -> int | None:
    return session.execute(select(Instrument.id).where(Instrument.name == name)).scalar_one_or_none()


def frame_values(info: FrameInfo, settings: Settings) -> dict[str, Any]:
    """Columns of a frame row from what its header says."""
    night = None
    if info.date_obs is not None:
        lon = info.site_lon if info.site_lon is not None else settings.site.lon
        night = observing_night(info.date_obs, lon)
    return dict(
        imagetyp=info.imagetyp, imagetyp_source=info.imagetyp_source, object=info.object,
        filter=info.filter, exptime=info.exptime, xbinning=info.xbinning, ybinning=info.ybinning,
        naxis1=info.naxis1, naxis2=info.naxis2, gain=info.gain, read_noise=info.read_noise,
        saturation=info.saturation, ccd_temp=info.ccd_temp, date_obs=info.date_obs,
        mjd_start=info.mjd_start, mjd_mid=info.mjd_mid, time_source=info.time_source, night=night,
        ra=info.ra, dec=info.dec, airmass=info.airmass, has_wcs=info.has_wcs,
        pixel_scale=info.pixel_scale, telescope=info.telescope, camera=info.instrument,
        warnings=list(info.warnings),
    )


def supersede_live(session: Session, path: str, reason: str):
    """Mark the live frame at ``path`` (if any) superseded; return its id and version."""
    previous = session.execute(
        select(Frame.id, Frame.version)
        .where(Frame.path == path, Frame.superseded_at.is_(None))
        .with_for_update()
    ).first()
    if previous is not None:
        session.execute(
            update(Frame)
            .where(Frame.id == previous.id)
            .values(superseded_at=datetime.now(UTC), state="superseded", state_reason=reason)
        )
    return previous


def frame_row(item: Inspection, settings: Settings, instrument_id: int, previous=None) -> dict[str, Any]:
    """The ``frames`` row of a newly seen file."""
    assert item.info is not None
    return dict(
        instrument_id=instrument_id, path=item.path, sha256=item.sha256, size_bytes=item.size,
        file_mtime=item.mtime, header=item.header,
        version=1 if previous is None else previous.version + 1,
        supersedes_id=None if previous is None else previous.id,
        **frame_values(item.info, settings),
    )


def insert_frames(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert frame rows in one statement; returns sha256 -> id of those inserted (a
    content already there, or twice in ``rows``, is skipped)."""
    # Core insert: the ORM's bulk machinery costs more than the rows themselves here.
    table = Frame.__table__
    result = session.execute(
        insert(table).values(rows).on_conflict_do_nothing(index_elements=["sha256"])
        .returning(table.c.id, table.c.sha256)
    )
    return {r.sha256: r.id for r in result}


def insert_frame(session: Session, item: Inspection, settings: Settings, instrument_id: int,
                 path_known: bool = True) -> tuple[int | None, int | None]:
    """Register a new frame (a new version if its path had another content).

    ``path_known=False`` says no live frame had this path a moment ago, which spares a
    query. Returns the new frame's id (None when the same content was registered
    concurrently) and the id of the frame it supersedes.
    """
    previous = None
    if path_known:
        previous = supersede_live(session, item.path, "the file's content changed; see the newer version")
    created = insert_frames(session, [frame_row(item, settings, instrument_id, previous)])
    return created.get(item.sha256), None if previous is None else previous.id


def follow_move(session: Session, frame_id: int, item: Inspection) -> None:
    """The frame's file was renamed or moved (its old path is gone): follow it."""
    supersede_live(session, item.path, "another frame's file was moved onto this path")
    session.execute(update(Frame).where(Frame.id == frame_id).values(path=item.path, file_mtime=item.mtime))


def touch(session: Session, frame_id: int, item: Inspection) -> None:
    """Same content at the same path, new mtime: remember it so rescans skip the file."""
    session.execute(update(Frame).where(Frame.id == frame_id).values(file_mtime=item.mtime))


def record_rejection(session: Session, item: Inspection, quarantine_dir: Path) -> None:
    """Record why a file is not a frame, keeping a copy of it in the quarantine."""
    now = datetime.now(UTC)
    if item.sha256 is not None:
        copy = quarantine_copy(Path(item.path), quarantine_dir, item.sha256)
        stmt = insert(RejectedFile).values(
            path=item.path, sha256=item.sha256, size_bytes=item.size, kind=item.error_kind,
            reason=item.error_reason, quarantine_path=str(copy) if copy else None,
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["path", "sha256"],
                set_=dict(last_seen=now, attempts=RejectedFile.attempts + 1, reason=item.error_reason),
            )
        )
        return
    row = session.execute(
        select(RejectedFile).where(RejectedFile.path == item.path, RejectedFile.sha256.is_(None))
    ).scalar_one_or_none()
    if row is None:
        session.add(RejectedFile(path=item.path, size_bytes=item.size, kind=item.error_kind, reason=item.error_reason))
    else:
        row.attempts += 1
        row.last_seen = now
        row.reason = item.error_reason
