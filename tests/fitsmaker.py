"""Small, real FITS files for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits


def write_frame(path: Path, *, imagetyp: str = "Light Frame", date_obs: str = "2024-03-01T02:00:00",
                exptime: float = 60.0, filter: str | None = "V", seed: int = 0, shape=(32, 48),
                extra: dict | None = None) -> Path:
    """Write a uint16 frame the way a camera does (BITPIX 16, BZERO 32768)."""
    rng = np.random.default_rng(seed)
    data = (1000 + rng.normal(0, 10, shape)).astype(np.uint16)
    hdr = fits.Header()
    hdr["IMAGETYP"] = imagetyp
    hdr["DATE-OBS"] = date_obs
    hdr["EXPTIME"] = exptime
    if filter is not None:
        hdr["FILTER"] = filter
    hdr["INSTRUME"] = "Test Camera"
    for key, value in (extra or {}).items():
        hdr[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data, hdr).writeto(path, overwrite=True)
    return path


def frame_header(tmp_path: Path, cards: dict, name: str = "frame.fits") -> fits.Header:
    """Write a small real FITS file with ``cards`` and read its header back as ingest does."""
    from obsdb.fitsfile import read_header

    hdr = fits.Header()
    for key, value in cards.items():
        hdr[key] = value
    path = tmp_path / name
    fits.PrimaryHDU(np.zeros((4, 6), np.uint16), hdr).writeto(path)
    return read_header(path).header
