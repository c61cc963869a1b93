"""Ingest: registering raw files as frames, safely re-runnable.

A file's content hash is unique, so the same frame copied or renamed is recognised (a copy
is a duplicate, a moved file keeps its frame); a path whose content changed becomes a new
version and its old frame is marked superseded; a file that cannot be read is recorded
with its reason and a copy is kept in the quarantine folder. The original file is never
modified.

A batch runs in three steps: files whose path, size and mtime match a live frame are
skipped with one query; the others are hashed and their headers read (in several
processes for large batches: that part is CPU-bound and needs no database); the results
are written in transactions of many files, each file in its own savepoint, so one bad
row cannot undo its neighbours.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from obsdb.config import Settings
from obsdb.ingest import register
from obsdb.ingest.discover import iter_candidate_files
from obsdb.ingest.inspect import Inspection, file_mtime, inspect_file
from obsdb.instruments import InstrumentProfile, load_profiles
from obsdb.models import Frame

log = logging.getLogger(__name__)

Status = Literal["new", "new_version", "duplicate", "moved", "unchanged", "rejected", "missing"]

# Below this many files to read, starting worker processes costs more than it saves.
_POOL_THRESHOLD = 64
_WRITE_BATCH = 64


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
        return dict(Counter(o.imagetyp for o in self.outcomes if o.status in ("new", "new_version")))

    @property
    def failures(self) -> list[IngestOutcome]:
        return [o for o in self.outcomes if o.failed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": len(self.outcomes),
            "counts": self.counts(),
            "new_by_type": self.by_type(),
            "failures": [{"path": o.path, "status": o.status, "reason": o.reason} for o in self.failures],
        }


_worker_profiles: list[InstrumentProfile] = []


def _init_worker(instruments: dict[str, dict[str, Any]]) -> None:
    global _worker_profiles
    _worker_profiles = load_profiles(instruments)


def _inspect_in_worker(path: str) -> Inspection:
    return inspect_file(path, _worker_profiles)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Ingestor:
    """Registers files as frames. Configure once, then call on paths.

    Parameters
    ----------
    session_factory
        Makes sessions on the catalog.
    settings
        Where the quarantine lives, the site, the instrument profiles.
    on_new_frame
        Called with a new frame's id and type after its transaction commits (the
        pipeline uses it to queue the next job).
    processes
        Processes that read headers in large batches (default: the number of CPUs).
    """

    def __init__(
        self,
        session_factory: sessionmaker,
        settings: Settings,
        on_new_frame: Callable[[int, str], None] | None = None,
        processes: int | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.profiles = load_profiles(settings.instruments)
        self.on_new_frame = on_new_frame
        self.processes = processes if processes is not None else (os.cpu_count() or 1)
        self._instrument_ids: dict[str, int] = {}
        self._live_paths: set[str] = set()

    def ingest(
        self,
        paths: Iterable[str | os.PathLike[str]],
        progress: Callable[[IngestOutcome], None] | None = None,
    ) -> IngestReport:
        """Ingest files and directories (recursively); one outcome per candidate file."""
        files = [os.path.abspath(p) for p in iter_candidate_files(paths)]
        report = IngestReport()

        def emit(outcome: IngestOutcome) -> None:
            report.outcomes.append(outcome)
            if progress is not None:
                progress(outcome)

        pool = None
        try:
            for chunk in _chunks(files, 4 * _WRITE_BATCH):
                todo = self._skip_unchanged(chunk, emit)
                if len(todo) >= _POOL_THRESHOLD and self.processes > 1 and pool is None:
                    pool = self._start_pool()
                inspections = (
                    pool.map(_inspect_in_worker, todo, chunksize=4) if pool is not None
                    else (inspect_file(p, self.profiles) for p in todo)
                )
                batch: list[Inspection] = []
                for item in inspections:
                    batch.append(item)
                    if len(batch) == _WRITE_BATCH:
                        self._write(batch, emit)
                        batch = []
                self._write(batch, emit)
        finally:
            if pool is not None:
                pool.shutdown()
        return report

    def ingest_file(self, path: str | os.PathLike[str]) -> IngestOutcome:
        """Ingest one file (whatever its name) in its own transaction."""
        outcomes: list[IngestOutcome] = []
        todo = self._skip_unchanged([os.path.abspath(path)], outcomes.append)
        self._write([inspect_file(p, self.profiles) for p in todo], outcomes.append)
        return outcomes[0]

    # -- steps ------------------------------------------------------------------------

    def _start_pool(self) -> ProcessPoolExecutor:
        # "spawn": the workers must not inherit this process's database connections.
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.settings.instruments,),
        )

    def _skip_unchanged(self, paths: Sequence[str], emit: Callable[[IngestOutcome], None]) -> list[str]:
        """Emit 'unchanged' for files a live frame already has (same path, size, mtime)."""
        with self.session_factory() as session:
            rows = session.execute(
                select(Frame.id, Frame.path, Frame.size_bytes, Frame.file_mtime, Frame.imagetyp).where(
                    Frame.path.in_(paths), Frame.superseded_at.is_(None)
                )
            ).all()
        known = {r.path: r for r in rows}
        self._live_paths = set(known)
        todo = []
        for path in paths:
            row = known.get(path)
            if row is not None:
                try:
                    stat = os.stat(path)
                except OSError:
                    stat = None
                if stat is not None and stat.st_size == row.size_bytes and file_mtime(stat) == row.file_mtime:
                    emit(IngestOutcome(path, "unchanged", row.id, row.imagetyp))
                    continue
            todo.append(path)
        return todo

    def _write(self, batch: list[Inspection], emit: Callable[[IngestOutcome], None]) -> None:
        """One transaction for the batch, one savepoint per file."""
        if not batch:
            return
        outcomes: list[IngestOutcome] = []
        with self.session_factory() as session, session.begin():
            digests = [i.sha256 for i in batch if i.sha256 and i.info is not None]
            known = {
                r.sha256: r
                for r in session.execute(
                    select(Frame.id, Frame.path, Frame.imagetyp, Frame.sha256).where(Frame.sha256.in_(digests))
                )
            }
            inserted = self._insert_new_files(session, batch, known)
            for item in batch:
                if item.sha256 in inserted:
                    frame_id = inserted[item.sha256]
                    assert item.info is not None
                    outcomes.append(
                        IngestOutcome(item.path, "new", frame_id, item.info.imagetyp) if frame_id is not None
                        else IngestOutcome(item.path, "duplicate", reason="same content as another file of this batch")
                    )
                    continue
                with session.begin_nested():
                    outcomes.append(self._write_one(session, item, known.get(item.sha256)))
        # Only now are new instruments committed and safe to remember.
        for item in batch:
            if item.instrument is not None and item.instrument not in self._instrument_ids:
                with self.session_factory() as session:
                    found = register.find_instrument(session, item.instrument)
                if found is not None:
                    self._instrument_ids[item.instrument] = found
        for outcome in outcomes:
            if outcome.status in ("new", "new_version"):
                log.debug("ingested %s as frame %d (%s)", outcome.path, outcome.frame_id, outcome.imagetyp)
                if self.on_new_frame is not None:
                    try:
                        self.on_new_frame(outcome.frame_id, outcome.imagetyp)
                    except Exception:
                        # The frame is safely registered; the pipeline's reconciliation
                        # sweep queues frames whose job could not be queued here.
                        log.exception("could not queue the next job of frame %d", outcome.frame_id)
            elif outcome.status == "rejected":
                log.debug("rejected %s: %s", outcome.path, outcome.reason)
            emit(outcome)

    def _insert_new_files(self, session: Session, batch: list[Inspection], known: dict) -> dict[str, int | None]:
        """Insert, in one statement, the files that are plainly new (the common case).

        Returns sha256 -> new frame id (None: the same content twice in the batch). Files
        with anything special (rejected, known content, a path with a live frame), and
        the whole lot if the statement fails, go through :meth:`_write_one` instead.
        """
        plain = [
            i for i in batch
            if i.info is not None and i.sha256 not in known and i.path not in self._live_paths
        ]
        if len(plain) < 2:
            return {}
        try:
            with session.begin_nested():
                for name, profile in {(i.instrument, i.profile) for i in plain}:
                    if name not in self._instrument_ids:
                        self._instrument_ids[name] = register.ensure_instrument(session, name, profile)
                rows = [
                    register.frame_row(i, self.settings, self._instrument_ids[i.instrument]) for i in plain
                ]
                created = register.insert_frames(session, rows)
        except IntegrityError:
            self._instrument_ids.clear()  # ids seen inside the rolled-back savepoint
            return {}
        return {i.sha256: created.pop(i.sha256, None) for i in plain}

    def _write_one(self, session: Session, item: Inspection, existing) -> IngestOutcome:
        if item.vanished:
            return IngestOutcome(item.path, "missing", reason="file vanished before it could be read")
        if item.error_kind is not None:
            register.record_rejection(session, item, self.settings.quarantine_dir)
            return IngestOutcome(item.path, "rejected", reason=f"{item.error_kind}: {item.error_reason}")
        if existing is not None:
            if existing.path == item.path:
                register.touch(session, existing.id, item)
                return IngestOutcome(item.path, "unchanged", existing.id, existing.imagetyp)
            if not Path(existing.path).exists():
                register.follow_move(session, existing.id, item)
                return IngestOutcome(item.path, "moved", existing.id, existing.imagetyp,
                                     reason=f"moved from {existing.path}")
            return IngestOutcome(item.path, "duplicate", existing.id, existing.imagetyp,
                                 reason=f"same content as frame {existing.id} ({existing.path})")
        assert item.instrument is not None and item.profile is not None
        instrument_id = self._instrument_ids.get(item.instrument)
        if instrument_id is None:
            instrument_id = register.ensure_instrument(session, item.instrument, item.profile)
        frame_id, superseded = register.insert_frame(
            session, item, self.settings, instrument_id, path_known=item.path in self._live_paths
        )
        if frame_id is None:
            return IngestOutcome(item.path, "duplicate", reason="same content ingested at the same moment")
        assert item.info is not None
        return IngestOutcome(item.path, "new" if superseded is None else "new_version", frame_id, item.info.imagetyp)
