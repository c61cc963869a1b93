"""What a running job needs: settings, the database, and whether this is a batch run."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from obsdb.config import Settings, load_settings
from obsdb.database import connect


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    # `obsdb process` reduces an old night now: no quiet time, no grace time.
    batch: bool = False
    _queue_app: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def queue_app(self):
        """A procrastinate app opened for synchronous use, for jobs that queue jobs.

        The worker's own app is opened on its event loop; jobs run in threads, so they
        get one of their own (its connection pool is thread-safe).
        """
        with self._lock:
            if self._queue_app is None:
                from obsdb.pipeline.queue import make_app

                self._queue_app = make_app(self.settings).open()
            return self._queue_app

    @property
    def quiet_seconds(self) -> float:
        return 0.0 if self.batch else self.settings.calibration.quiet_seconds

    @property
    def grace_seconds(self) -> float:
        return 0.0 if self.batch else self.settings.calibration.grace_seconds


_current: Runtime | None = None


def set_runtime(runtime: Runtime) -> None:
    global _current
    _current = runtime


def runtime() -> Runtime:
    """The process's runtime; built from the environment if nobody set one."""
    global _current
    if _current is None:
        settings = load_settings()
        engine, sessions = connect(settings)
        _current = Runtime(settings, engine, sessions)
    return _current
