"""Ingest: one file, one transaction, one outcome.

Re-ingesting is always safe: a file's content hash is unique, so the same frame copied or
renamed is recognised (a copy is a duplicate, a moved file keeps its frame); a path whose content changed becomes a new version
and its old frame is marked superseded; a file that cannot be read is recorded with its
reason and a copy is kept in the quarantine folder. The original file is never modified.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from obsdb.config import Settings
from obsdb.fitsfile import FitsFileError, read_header, sha256_file
from obsdb.ingest.discover import iter_candidate_files
from obsdb.ingest.headerjson import header_to_json
from obsdb.ingest.quarantine import quarantine_copy
from obsdb.instruments import FrameInfo, InstrumentProfile, load_profiles, select_profile
from obsdb.models import Frame, Instrument, RejectedFile
from obsdb.nights import observing_night

log = logging.getLogger(__name__)

Status = Literal["new", "new_version", "duplicate", "moved", "unchanged", "rejected", "missing"]


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one file."""

    path: str
    status: Status
    frame_id: int | None = None
    imagetyp: str | None = None
    reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("rejected", "missing")


@dataclass
class IngestReport:
    """Outcomes of one ingest run, for the summary and the exit status."""

    outcomes: list[IngestOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.status for o in self.outcomes))

    def by_type(self) -> dict[str, int]:
        return dict(
            Counter(o.imagetyp for o in self.outcomes if o.status in ("new", "new_version"))
        )

    @property
    def failures(self) -> list[IngestOutcome]:
        return [o for o in self.outcomes if o.failed]

    def as_dict(self) -> dict:
        return {
            "files": len(self.outcomes),
            "counts": self.counts(),
            "new_by_type": self.by_type(),
            "failures": [{"path": o.path, "status": o.status, "reason": o.reason} for o in self.failures],
        }


def _instrument_name(profile: InstrumentProfile, info: FrameInfo) -> str:
    if not profile.is_generic:
        return profile.name
    parts = [p for p in (info.telescope, info.instrument) if p]
    return " / ".join(parts) if parts else "unknown"


def _ensure_instrument(session: Session, name: str, profile: str) -> int:
    session.execute(
        insert(Instrument).values(name=name, profile=profile).on_conflict_do_nothing(index_elements=["name"])
    )
    return session.execute(select(Instrument.id).where(Instrument.name == name)).scalar_one()


def _frame_values(info: FrameInfo, settings: Settings) -> dict:
    night = None
    if info.date_obs is not None:
        lon = info.site_lon if info.site_lon is not None else settings.site.lon
        night = observing_night(info.date_obs, lon)
    return dict(
        imagetyp=info.imagetyp,
        imagetyp_source=info.imagetyp_source,
        object=info.object,
        filter=info.filter,
        exptime=info.exptime,
        xbinning=info.xbinning,
        ybinning=info.ybinning,
        naxis1=info.naxis1,
        naxis2=info.naxis2,
        gain=info.gain,
        read_noise=info.read_noise,
        saturation=info.saturation,
        ccd_temp=info.ccd_temp,
        date_obs=info.date_obs,
        mjd_start=info.mjd_start,
        mjd_mid=info.mjd_mid,
        time_source=info.time_source,
        night=night,
        ra=info.ra,
        dec=info.dec,
        airmass=info.airmass,
        has_wcs=info.has_wcs,
        pixel_scale=info.pixel_scale,
        telescope=info.telescope,
        camera=info.instrument,
        warnings=list(info.warnings),
    )


class Ingestor:
    """Registers files as frames. Configure once, then call on paths.

    Parameters
    ----------
    session_factory
        Makes sessions on the catalog; each file is ingested in its own transaction.
    settings
        Where the quarantine lives, the site, the instrument profiles.
    on_new_frame
        Called with the new frame's id after its transaction commits (the pipeline
        uses it to queue the next job).
    """

    def __init__(
        self,
        session_factory: sessionmaker,
        settings: Settings,
        on_new_frame: Callable[[int, str], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.profiles = load_profiles(settings.instruments)
        self.on_new_frame = on_new_frame

    def ingest(
        self,
        paths: Iterable[str | os.PathLike[str]],
        progress: Callable[[IngestOutcome], None] | None = None,
    ) -> IngestReport:
        report = IngestReport()
        for path in iter_candidate_files(paths):
            outcome = self.ingest_file(path)
            report.outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
        return report

    def ingest_file(self, path: str | os.PathLike[str]) -> IngestOutcome:
        path = Path(os.path.abspath(path))
        try:
            stat = path.stat()
        except FileNotFoundError:
            return IngestOutcome(str(path), "missing", reason="file vanished before it could be read")
        except OSError as exc:
            return self._reject(path, None, None, "unreadable", f"cannot stat file: {exc.strerror}")

        with self.session_factory() as session:
            known = self._unchanged(session, path, stat)
            if known is not None:
                return known

        try:
            digest = sha256_file(path)
        except PermissionError:
            return self._reject(path, None, stat.st_size, "permission", "permission denied reading the file")
        except FileNotFoundError:
            return IngestOutcome(str(path), "missing", reason="file vanished before it could be read")
        except OSError as exc:
            return self._reject(path, None, stat.st_size, "unreadable", f"read error: {exc.strerror}")

        with self.session_factory() as session:
            existing = session.execute(
                select(Frame.id, Frame.path, Frame.imagetyp).where(Frame.sha256 == digest)
            ).first()
            if existing is not None:
                return self._known_content(session, path, stat, existing)

        try:
            hdr = read_header(path)
        except FitsFileError as exc:
            return self._reject(path, digest, stat.st_size, exc.kind, exc.reason)
        except FileNotFoundError:
            return IngestOutcome(str(path), "missing", reason="file vanished before it could be read")

        profile = select_profile(hdr.header, self.profiles)
        info = profile.read(hdr.header, path.name)
        return self._register(path, stat, digest, hdr.header, profile, info)

    # -- storage --------------------------------------------------------------------

    def _unchanged(self, session: Session, path: Path, stat: os.stat_result) -> IngestOutcome | None:
        """A live frame already has this path, size and mtime: nothing to read again."""
        row = session.execute(
            select(Frame.id, Frame.imagetyp).where(
                Frame.path == str(path),
                Frame.superseded_at.is_(None),
                Frame.size_bytes == stat.st_size,
                Frame.file_mtime == _mtime(stat),
            )
        ).first()
        if row is None:
            return None
        return IngestOutcome(str(path), "unchanged", row.id, row.imagetyp)

    def _known_content(self, session: Session, path: Path, stat: os.stat_result, existing) -> IngestOutcome:
        if existing.path == str(path):
            # Same file, touched: remember the new mtime so the next rescan skips it.
            session.execute(update(Frame).where(Frame.id == existing.id).values(file_mtime=_mtime(stat)))
            session.commit()
            return IngestOutcome(str(path), "unchanged", existing.id, existing.imagetyp)
        if not Path(existing.path).exists():
            return self._moved(session, path, stat, existing)
        return IngestOutcome(
            str(path), "duplicate", existing.id, existing.imagetyp,
            reason=f"same content as frame {existing.id} ({existing.path})",
        )

    def _moved(self, session: Session, path: Path, stat: os.stat_result, existing) -> IngestOutcome:
        """The frame's file was renamed or moved (its old path is gone): follow it."""
        _supersede_live(session, path, "another frame's file was moved onto this path")
        session.execute(
            update(Frame).where(Frame.id == existing.id).values(path=str(path), file_mtime=_mtime(stat))
        )
        session.commit()
        return IngestOutcome(
            str(path), "moved", existing.id, existing.imagetyp, reason=f"moved from {existing.path}"
        )

    def _register(self, path, stat, digest, header, profile, info) -> IngestOutcome:
        values = _frame_values(info, self.settings)
        with self.session_factory() as session, session.begin():
            instrument_id = _ensure_instrument(session, _instrument_name(profile, info), profile.name)
            previous = _supersede_live(session, path, "the file's content changed; see the newer version")
            version, supersedes = 1, None
            if previous is not None:
                version, supersedes = previous.version + 1, previous.id
            frame_id = session.execute(
                insert(Frame)
                .values(
                    instrument_id=instrument_id,
                    path=str(path),
                    sha256=digest,
                    size_bytes=stat.st_size,
                    file_mtime=_mtime(stat),
                    header=header_to_json(header),
                    version=version,
                    supersedes_id=supersedes,
                    **values,
                )
                .on_conflict_do_nothing(index_elements=["sha256"])
                .returning(Frame.id)
            ).scalar_one_or_none()
            if frame_id is None:
                # Another process registered the same content between our check and now.
                session.rollback()
                return IngestOutcome(str(path), "duplicate", reason="same content ingested concurrently")
        status: Status = "new" if supersedes is None else "new_version"
        log.debug("ingested %s as frame %d (%s)", path, frame_id, info.imagetyp)
        if self.on_new_frame is not None:
            self.on_new_frame(frame_id, info.imagetyp)
        return IngestOutcome(str(path), status, frame_id, info.imagetyp)

    def _reject(self, path: Path, digest: str | None, size: int | None, kind: str, reason: str) -> IngestOutcome:
        copy = quarantine_copy(path, self.settings.quarantine_dir, digest) if digest else None
        now = datetime.now(UTC)
        with self.session_factory() as session, session.begin():
            if digest is not None:
                stmt = insert(RejectedFile).values(
                    path=str(path), sha256=digest, size_bytes=size, kind=kind, reason=reason,
                    quarantine_path=str(copy) if copy else None,
                )
                session.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["sha256"],
                        set_=dict(path=str(path), last_seen=now, attempts=RejectedFile.attempts + 1),
                    )
                )
            else:
                row = session.execute(
                    select(RejectedFile).where(RejectedFile.path == str(path), RejectedFile.sha256.is_(None))
                ).scalar_one_or_none()
                if row is None:
                    session.add(RejectedFile(path=str(path), size_bytes=size, kind=kind, reason=reason))
                else:
                    row.attempts += 1
                    row.last_seen = now
                    row.reason = reason
        log.debug("rejected %s: %s", path, reason)
        return IngestOutcome(str(path), "rejected", reason=f"{kind}: {reason}")


def _supersede_live(session: Session, path: Path, reason: str):
    """Mark the live frame at ``path`` (if any) superseded; return its id and version."""
    previous = session.execute(
        select(Frame.id, Frame.version)
        .where(Frame.path == str(path), Frame.superseded_at.is_(None))
        .with_for_update()
    ).first()
    if previous is not None:
        session.execute(
            update(Frame)
            .where(Frame.id == previous.id)
            .values(superseded_at=datetime.now(UTC), state="superseded", state_reason=reason)
        )
    return previous


def _mtime(stat: os.stat_result) -> datetime:
    return datetime.fromtimestamp(stat.st_mtime, UTC)
