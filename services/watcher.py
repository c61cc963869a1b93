"""``obsdb watch``: ingest new FITS files as soon as they are complete.

Two sources of work feed one loop. Watchdog events (inotify, or polling on network file
systems) tell us quickly that a path changed; a full rescan at start and every
``rescan_seconds`` catches whatever the events missed (inotify queues overflow, NFS sends
none, a watcher that was down saw nothing). Both only *nominate* paths: a file is
ingested once its size and mtime have stayed unchanged for ``settle_seconds`` and its
FITS structure is complete, so a camera still writing a frame is never caught half-way.
The loop runs in the caller's thread and ingests one file at a time; the watchdog thread
only puts paths on a queue.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from obsdb.fitsfile import FitsFileError, is_fits_name, verify_complete
from obsdb.ingest import IngestOutcome, Ingestor, iter_candidate_files

log = logging.getLogger("obsdb.watcher")

# Name endings of files that are still being written by tools that rename when done.
TEMPORARY_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", "~")

FIRST_CARD = 80  # bytes: a shorter file cannot yet be judged "not FITS"

Stamp = tuple[int, int]  # (size, mtime_ns): what "unchanged" means for a file


def is_wanted(root: str, path: str) -> bool:
    """True when ``path`` (under the watched ``root``) names a FITS file we should ingest.

    Hidden names and hidden folders are skipped, as in :func:`iter_candidate_files`, so
    that a writer's ``.x.fits`` or ``.incoming/`` staging area is left alone until it is
    renamed into view.
    """
    name = os.path.basename(path)
    return is_visible(root, path) and is_fits_name(name) and not name.lower().endswith(TEMPORARY_SUFFIXES)


def is_visible(root: str, path: str) -> bool:
    """True unless ``path`` or one of its folders under ``root`` has a hidden name."""
    parts = Path(os.path.relpath(path, root)).parts
    return bool(parts) and not any(p.startswith(".") for p in parts)


def _stamp(path: str) -> Stamp | None:
    """(size, mtime) of the file, None when it is gone.

    A name that cannot be followed (a symbolic link in a loop, a folder it cannot reach)
    is stamped by the link itself, so that it is handed to ingest, which records why it
    cannot be read, instead of being taken for a deleted file and ignored for ever.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return None
    return st.st_size, st.st_mtime_ns


@dataclass
class _Pending:
    """A nominated file we are waiting on."""

    stamp: Stamp | None = None  # last seen (size, mtime_ns)
    since: float = 0.0  # monotonic time the stamp was first seen
    final: bool | None = None  # no more bytes expected (see _is_final); None = not checked
    failures: int = 0  # ingest errors in a row, for the back-off
    retry_at: float = 0.0


class _Handler(FileSystemEventHandler):
    """Runs in the watchdog thread: turns events into queue entries, nothing more."""

    def __init__(self, root: str, inbox: queue.SimpleQueue) -> None:
        self.root = root
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("created", "modified", "moved", "closed"):
            return
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        if event.is_directory:
            # A directory created or moved in. Watchdog's inotify emitter synthesises events
            # for the files already inside it, but walking it ourselves costs little and
            # does not depend on that (nor on a race with the new watch being added).
            if event.event_type in ("created", "moved") and is_visible(self.root, path):
                self.inbox.put(("dir", path))
        elif is_wanted(self.root, path):
            self.inbox.put(("file", path))


class Watcher:
    """Watch directories and ingest every FITS file that appears in them, once complete.

    Parameters
    ----------
    dirs
        Directories to watch, recursively.
    ingestor
        Registers one file; it decides new / duplicate / rejected.
    settle_seconds
        How long a file's size and mtime must stay unchanged before it is considered.
    rescan_seconds
        Interval between full rescans of ``dirs`` (events get lost).
    polling
        Use watchdog's polling observer (network file systems, where inotify sees nothing).
    poll_interval
        Seconds between polls of the polling observer.
    give_up_seconds
        A file that is settled but still structurally incomplete for this long is ingested
        anyway, so that it is recorded as truncated instead of waited on forever.
        Default ``max(10 * settle_seconds, 60)``.
    tick_seconds
        How often pending files are checked.
    """

    def __init__(
        self,
        dirs: list[str],
        ingestor: Ingestor,
        *,
        settle_seconds: float = 2.0,
        rescan_seconds: float = 60.0,
        polling: bool = False,
        poll_interval: float = 1.0,
        give_up_seconds: float | None = None,
        tick_seconds: float = 0.25,
    ) -> None:
        if settle_seconds < 0 or rescan_seconds <= 0 or tick_seconds <= 0:
            raise ValueError("settle_seconds must be >= 0, rescan_seconds and tick_seconds > 0")
        self.dirs = [os.path.abspath(d) for d in dirs]
        self.ingestor = ingestor
        self.settle_seconds = settle_seconds
        self.rescan_seconds = rescan_seconds
        self.polling = polling
        self.poll_interval = poll_interval
        if give_up_seconds is None:
            give_up_seconds = max(10 * settle_seconds, 60.0)
        self.give_up_seconds = max(give_up_seconds, settle_seconds)
        self.tick_seconds = tick_seconds

        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, _Pending] = {}
        # Files already handed to ingest, with the stamp they had: a rescan skips them
        # with one stat() each, without touching the database.
        self._handed: dict[str, Stamp] = {}
        self._next_rescan = 0.0
        self._db_failures = 0
        self._db_pause_until = 0.0
        self._stop = threading.Event()
        self._signalled: int | None = None
        self._observer = None

    # -- life cycle -----------------------------------------------------------------

    def run_forever(self) -> None:
        """Watch until :meth:`stop`, SIGTERM or SIGINT; finish the current file, then return."""
        _ensure_visible_logging()
        restore = self._install_signal_handlers()
        try:
            self._start_observer()
            log.info(
                "watching %s (settle %.1f s, rescan %.0f s, %s)",
                ", ".join(self.dirs), self.settle_seconds, self.rescan_seconds,
                "polling" if self.polling else "inotify",
            )
            while not self._stopping():
                self.step()
                self._stop.wait(self.tick_seconds)
        finally:
            self._stop_observer()
            restore()
            why = f" on {signal.Signals(self._signalled).name}" if self._signalled else ""
            log.info("stopped%s; %d file(s) still pending", why, len(self._pending))

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after the file being ingested (thread-safe)."""
        self._stop.set()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._signalled is not None

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signals can only be handled in the main thread

        def handler(signum, frame):
            # Only a plain assignment: Event.set() takes a lock the interrupted main
            # thread may be holding inside Event.wait(), which would deadlock.
            self._signalled = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def _start_observer(self) -> None:
        observer = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
        for d in self.dirs:
            observer.schedule(_Handler(d, self._inbox), d, recursive=True)
        try:
            observer.start()
        except OSError as exc:
            if self.polling:
                raise
            # Typically the inotify watch limit (fs.inotify.max_user_watches) on a big tree.
            log.warning("cannot watch with inotify (%s); polling instead", exc)
            self.polling = True
            return self._start_observer()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    # -- the loop -------------------------------------------------------------------

    def step(self) -> None:
        """One pass: take in events, rescan when due, ingest the files that are ready."""
        now = time.monotonic()
        self._drain_inbox()
        if now >= self._next_rescan:
            # The first pass is the catch-up scan; the observer is already running, so
            # nothing created from now on can fall between the scan and the events.
            self._rescan()
            self._next_rescan = now + self.rescan_seconds
        for path in list(self._pending):
            if self._stopping():
                return
            if self._ready(path, time.monotonic()):
                self._ingest(path)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, path = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "dir":
                for file in iter_candidate_files([path]):
                    self._nominate(str(file))
            else:
                self._nominate(path)

    def _rescan(self) -> None:
        seen: dict[str, Stamp] = {}
        for file in iter_candidate_files(self.dirs):
            path = str(file)
            stamp = _stamp(path)
            if stamp is None:
                continue
            seen[path] = stamp
            if self._handed.get(path) != stamp:
                self._nominate(path)
        # Forget deleted files, so that the map does not grow without bound.
        self._handed = {p: s for p, s in self._handed.items() if p in seen}

    def _nominate(self, path: str) -> None:
        self._pending.setdefault(path, _Pending(since=time.monotonic()))

    def _ready(self, path: str, now: float) -> bool:
        """Whether ``path`` should be ingested now; drops it when there is nothing to do."""
        entry = self._pending[path]
        if now < entry.retry_at or now < self._db_pause_until:
            return False
        stamp = _stamp(path)
        if stamp is None:  # deleted or renamed away (a rename brings its own event)
            del self._pending[path]
            return False
        if stamp != entry.stamp:  # new, or still being written: restart the clock
            entry.stamp, entry.since, entry.final = stamp, now, None
            if self.settle_seconds > 0:
                return False
        elif now - entry.since < self.settle_seconds:
            return False
        if self._handed.get(path) == stamp:  # an event without a change (chmod, touch -a)
            del self._pending[path]
            return False
        return self._complete(path, entry, now)

    def _complete(self, path: str, entry: _Pending, now: float) -> bool:
        """Settled; is the file whole (or hopeless), or have we waited long enough?"""
        assert entry.stamp is not None
        if time.time() - entry.stamp[1] / 1e9 >= self.give_up_seconds:
            # Untouched for longer than we would ever wait (e.g. the catch-up scan after
            # a restart): skip the check, which decompresses a .gz whole; ingest skips
            # files it knows by size and mtime without reading them.
            return True
        if entry.final is None:
            # Checked once per stamp: the answer cannot change while the file does not.
            entry.final = _is_final(path, entry.stamp[0])
        if entry.final:
            return True
        if now - entry.since >= self.give_up_seconds:
            log.warning("%s has not changed for %.0f s but is incomplete; ingesting it anyway",
                        path, now - entry.since)
            return True
        return False

    def _ingest(self, path: str) -> None:
        entry = self._pending[path]
        try:
            outcome = self.ingestor.ingest_file(path)
        except (OperationalError, InterfaceError) as exc:
            # The database is away: pause all ingest with back-off, keep the file pending.
            self._db_failures += 1
            delay = min(2.0 ** (self._db_failures - 1), 60.0)
            self._db_pause_until = time.monotonic() + delay
            log.error("database unavailable while ingesting %s; retrying in %.0f s: %s",
                      path, delay, getattr(exc, "orig", exc))
            return
        except Exception:
            # A problem with this one file (a bug, most likely): retry it later, go on.
            entry.failures += 1
            delay = min(2.0 ** entry.failures, 300.0)
            entry.retry_at = time.monotonic() + delay
            log.exception("error ingesting %s; retrying in %.0f s", path, delay)
            return
        self._db_failures = 0
        del self._pending[path]
        if outcome.status != "missing" and entry.stamp is not None:
            self._handed[path] = entry.stamp
        _log_outcome(outcome)


def _is_final(path: str, size: int) -> bool:
    """True when the file is complete FITS, or is bad in a way that waiting cannot fix."""
    try:
        verify_complete(path)  # has_end_card(), telling us why when it says no
    except FitsFileError as exc:
        # An empty or truncated file is what a frame still being written looks like. Any
        # other fault (not FITS, corrupt gzip) will not go away by appending, once the
        # first card is there to be judged.
        # A file that cannot be opened (permissions, a link loop) will not open better later.
        return exc.kind in ("permission", "unreadable") or (
            exc.kind not in ("empty", "truncated") and size >= FIRST_CARD)
    except OSError:
        return True  # vanished or unreadable: ingest records which
    return True


def _log_outcome(o: IngestOutcome) -> None:
    if o.status in ("new", "new_version"):
        extra = ", new version" if o.status == "new_version" else ""
        log.info("ingested %s -> frame %d (%s%s)", o.path, o.frame_id, o.imagetyp, extra)
    elif o.status == "duplicate":
        log.info("duplicate %s: %s", o.path, o.reason)
    elif o.status == "rejected":
        log.warning("rejected %s: %s", o.path, o.reason)
    elif o.status == "unchanged":
        # Every known file passes here once after a restart; keep that quiet.
        log.debug("unchanged %s (frame %s)", o.path, o.frame_id)
    else:
        log.info("%s %s: %s", o.status, o.path, o.reason)


def _ensure_visible_logging() -> None:
    """Per-file lines are the watcher's output: show them even without ``-v``."""
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    if not log.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
