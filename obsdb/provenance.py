"""What made a product: the obsdb version and a hash of the settings that shape it."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from obsdb import __version__
from obsdb.config import Settings

VERSION = __version__


#: Settings that decide when work runs, not what it makes: changing them must not make
#: every product look stale.
SCHEDULING = {"calibration": ("quiet_seconds", "grace_seconds", "max_attempts", "retry_wait_seconds")}


def config_hash(settings: Settings) -> str:
    """Short, stable hash of every setting that changes a product's pixels or numbers (the
    site too: it moves BJD_TDB)."""
    shaping = {
        "calibration": dataclasses.asdict(settings.calibration),
        "photometry": dataclasses.asdict(settings.photometry),
        "instruments": settings.instruments,
        "pipeline": settings.pipeline,
        "site": dataclasses.asdict(settings.site),
    }
    for section, keys in SCHEDULING.items():
        for key in keys:
            shaping[section].pop(key)
    text = json.dumps(shaping, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
