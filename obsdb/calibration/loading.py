"""Reading raw frames and master products for the calibration stages."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from obsdb.calibration.masters import MasterFrame
from obsdb.calibration.products import read_product
from obsdb.config import Settings
from obsdb.fitsfile import read_data, read_header
from obsdb.instruments import load_profiles, select_profile


def raw_loader(path: str) -> Callable[[], np.ndarray]:
    """A loader for the combine: frames are read one at a time, when needed."""
    return lambda: read_data(path)[0]


@lru_cache(maxsize=12)
def load_master(path: str) -> MasterFrame:
    """A master product as a :class:`MasterFrame`; cached, since every light of a night
    reads the same few masters (a rebuilt master is a new file, so never stale)."""
    sci, err, mask, header = read_product(path)
    stats = {"exptime": header.get("EXPTIME")} if header.get("EXPTIME") is not None else {}
    kind = str(header.get("PRODTYPE", "master"))
    if mask is None:
        mask = np.zeros(sci.shape, dtype=np.uint8)
    if err is None:
        err = np.zeros(sci.shape, dtype=np.float32)
    return MasterFrame(kind=kind, data=sci, error=err, mask=mask, stats=stats)


def sections_of(settings: Settings, header) -> dict[str, str | None]:
    """Overscan and trim sections the instrument profile gives for a header."""
    info = select_profile(header, load_profiles(settings.instruments)).read(header)
    return {"overscan": info.overscan, "trim": info.trim}


def frame_sections(settings: Settings, path: str) -> dict[str, str | None]:
    return sections_of(settings, read_header(path).header)
