"""What made a product: the obsdb version and a hash of the settings that shape it."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from obsdb import __version__
from obsdb.config import Settings

VERSION = __version__


def config_hash(settings: Settings) -> str:
    """Short, stable hash of every setting that changes a product's pixels or numbers."""
    shaping = {
        "calibration": dataclasses.asdict(settings.calibration),
        "photometry": dataclasses.asdict(settings.photometry),
        "instruments": settings.instruments,
        "pipeline": settings.pipeline,
    }
    text = json.dumps(shaping, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
