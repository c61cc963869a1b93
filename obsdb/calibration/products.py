"""Calibrated and master FITS products: SCI, ERR and MASK extensions, written atomically.

A product is a primary HDU holding the frame's header plus provenance cards, and three
image extensions: ``SCI`` (float32), ``ERR`` (float32, 1-sigma, same units) and ``MASK``
(uint8 bit flags). Writes go to a temporary file in the target's directory, are flushed
and fsync'ed, then renamed over the target: a reader (or a crash) sees either the old
product or the complete new one, never part of a file. A write that fails (a full disk)
removes its temporary file; one whose process was killed leaves it, and the next write of
the same product, or the workers' sweep of old temporaries, removes it.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

import obsdb

__all__ = ["read_product", "remove_stale_temporaries", "write_master", "write_product", "write_reduced"]

_TEMP_SUFFIX = ".tmp"
_WRITE_CHUNK = 4 << 20

# Structural keywords that belong to the HDU being written, not to the copied header.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO", "BSCALE",
               "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "CHECKSUM", "DATASUM", "BLANK", "INHERIT"}

_MASK_BITS_REDUCED = {1: "bad pixel from the masters", 2: "saturated", 4: "cosmic ray"}
_MASK_BITS_MASTER = {1: "hot", 2: "low response", 4: "unstable", 8: "no data"}


def write_product(path: str | os.PathLike, sci: np.ndarray, err: np.ndarray | None = None,
                  mask: np.ndarray | None = None, *, header: fits.Header | Mapping[str, Any] | None = None,
                  kind: str = "calibrated", inputs: Iterable[str] = (), steps: Iterable[str] = (),
                  cards: Mapping[str, Any] | None = None, mask_bits: Mapping[int, str] | None = None,
                  bunit: str | None = "adu") -> Path:
    """Write a SCI/ERR/MASK product atomically.

    Parameters
    ----------
    path : str or path
        Target file; replaced if it exists.
    sci : ndarray
        Image, stored as float32.
    err : ndarray, optional
        1-sigma uncertainty (float32); omitted if None.
    mask : ndarray, optional
        Bit flags (uint8); omitted if None.
    header : Header or mapping, optional
        Cards of the original frame (observation metadata, WCS), copied to the primary
        header without structural keywords.
    kind : str, optional
        PRODTYPE card: 'calibrated', 'bias', 'dark', 'dark_rate', 'flat'.
    inputs : iterable of str
        Input files, as INPUT1, INPUT2, ... cards (long names continue over cards).
    steps : iterable of str
        Steps applied, as the STEPS card.
    cards : mapping, optional
        More provenance cards (8-character keywords; longer ones become HIERARCH).
    mask_bits : mapping of int to str, optional
        Meaning of the mask bits, written as MASKB<bit> cards in the MASK header.
    bunit : str, optional
        BUNIT of SCI and ERR.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    sci = np.asarray(sci)
    if sci.ndim != 2:
        raise ValueError(f"SCI must be a 2-D image, got {sci.ndim} dimensions")
    for name, image in (("ERR", err), ("MASK", mask)):
        if image is not None and np.shape(image) != sci.shape:
            raise ValueError(f"{name} has shape {np.shape(image)}, SCI {sci.shape}")
    inputs = [str(i) for i in inputs]
    if len(inputs) > 999:
        raise ValueError(f"{len(inputs)} inputs do not fit INPUT1..INPUT999 cards")

    primary = fits.Header()
    source = header if isinstance(header, fits.Header) else fits.Header(header or {})
    for card in source.cards:
        if card.keyword and card.keyword not in _STRUCTURAL:
            primary.append(card)
    primary["OBSDBVER"] = (obsdb.__version__, "obsdb version that wrote this file")
    primary["PRODTYPE"] = (kind, "product type")
    primary["DATE"] = (dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC time written")
    primary["STEPS"] = (",".join(steps), "in order")
    primary["NINPUTS"] = (len(inputs), "number of input files")
    for i, name in enumerate(inputs, start=1):
        primary[f"INPUT{i}"] = name
    for key, value in (cards or {}).items():
        primary[key] = value
    primary["INHERIT"] = (True, "extensions inherit this header")

    hdus = [fits.PrimaryHDU(header=primary)]
    sci_hdu = fits.ImageHDU(np.asarray(sci, dtype=np.float32), name="SCI")
    if bunit:
        sci_hdu.header["BUNIT"] = bunit
    hdus.append(sci_hdu)
    if err is not None:
        err_hdu = fits.ImageHDU(np.asarray(err, dtype=np.float32), name="ERR")
        if bunit:
            err_hdu.header["BUNIT"] = bunit
        hdus.append(err_hdu)
    if mask is not None:
        mask_hdu = fits.ImageHDU(np.asarray(mask).astype(np.uint8), name="MASK")
        for bit, meaning in (mask_bits or {}).items():
            mask_hdu.header[f"MASKB{bit}"] = (meaning, f"meaning of mask bit value {bit}")
        hdus.append(mask_hdu)
    _write_atomically(fits.HDUList(hdus), path)
    return path


def _temporaries_of(path: Path) -> list[Path]:
    """Temporary files of earlier writes of ``path`` (see :func:`_write_atomically`)."""
    directory = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / n for n in names if n.startswith(prefix) and n.endswith(_TEMP_SUFFIX)]


def _write_atomically(hdul: fits.HDUList, path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    # One product is written by one job at a time (the job's lock is the frame's or the
    # master group's), so a temporary file of the same product is what a killed writer
    # left behind: remove it before it fills the disk.
    for stale in _temporaries_of(path):
        try:
            stale.unlink()
        except FileNotFoundError:
            pass
    # Serialised in memory first, then written by Python's own file object: when the disk
    # is full, numpy's tofile() (which astropy uses on real files) raises an OSError with
    # no errno ("65536 requested and 8400 written"), and astropy's clean-up then fails on
    # it with an AttributeError, so that nobody could tell a full disk from a bug.
    buffer = io.BytesIO()
    hdul.writeto(buffer, output_verify="exception")
    data = buffer.getbuffer()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            for start in range(0, len(data), _WRITE_CHUNK):
                f.write(data[start:start + _WRITE_CHUNK])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(root: str | os.PathLike, older_than_seconds: float) -> list[Path]:
    """Remove temporary product files under ``root`` not modified for ``older_than_seconds``.

    A writer streams into its temporary file and renames it at once, so one untouched for
    minutes belongs to a process that was killed mid-write. Returns the files removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_seconds
    removed = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
                continue
            candidate = Path(dirpath) / name
            try:
                if candidate.stat().st_mtime < cutoff:
                    candidate.unlink()
                    removed.append(candidate)
            except FileNotFoundError:
                continue
    return removed


def read_product(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, fits.Header]:
    """Read a product written by :func:`write_product`.

    Returns
    -------
    sci : ndarray of float32
    err : ndarray of float32 or None
    mask : ndarray of uint8 or None
    header : Header
        The primary header (frame metadata and provenance).
    """
    with fits.open(path, memmap=False) as hdul:
        names = {hdu.name for hdu in hdul}
        if "SCI" not in names:
            raise ValueError(f"{path}: not an obsdb product (no SCI extension)")
        sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
        err = np.asarray(hdul["ERR"].data, dtype=np.float32) if "ERR" in names else None
        mask = np.asarray(hdul["MASK"].data, dtype=np.uint8) if "MASK" in names else None
        header = hdul[0].header.copy()
    return sci, err, mask, header


def write_reduced(path: str | os.PathLike, frame: Any, *, header: fits.Header | Mapping[str, Any] | None = None,
                  inputs: Iterable[str] = (), cards: Mapping[str, Any] | None = None) -> Path:
    """Write a :class:`~obsdb.calibration.reduce.ReducedFrame` (MISSING lists absent masters)."""
    extra = {"MISSING": (",".join(frame.missing), "masters not available")}
    for key in ("n_bad", "n_saturated", "n_cosmic"):
        if key in frame.stats:
            extra[f"N{key[2:].upper()}"[:8]] = frame.stats[key]
    extra.update(cards or {})
    return write_product(path, frame.sci, frame.err, frame.mask, header=header, kind="calibrated", inputs=inputs,
                         steps=frame.steps_applied, cards=extra, mask_bits=_MASK_BITS_REDUCED)


def write_master(path: str | os.PathLike, master: Any, *, header: fits.Header | Mapping[str, Any] | None = None,
                 inputs: Iterable[str] = (), cards: Mapping[str, Any] | None = None) -> Path:
    """Write a :class:`~obsdb.calibration.masters.MasterFrame` with its scalar stats as cards."""
    extra: dict[str, Any] = {}
    for key, value in master.stats.items():
        if isinstance(value, (bool, int, float, str, np.integer, np.floating)) and not (
                isinstance(value, float) and not np.isfinite(value)):
            extra[key.upper() if len(key) <= 8 else f"HIERARCH {key.upper()}"] = value
    extra.update(cards or {})
    bunit = {"dark_rate": "adu/s", "flat": None}.get(master.kind, "adu")
    return write_product(path, master.data, master.error, master.mask, header=header, kind=master.kind,
                         inputs=inputs, cards=extra, mask_bits=_MASK_BITS_MASTER, bunit=bunit)
