"""Reading one file for ingest, without the database: hash, header, frame description.

This is the CPU-bound half of ingest, kept free of database handles so that a batch can
run it in several processes while the main process writes to the catalog.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from obsdb.fitsfile import FitsFileError, read_header, sha256_file
from obsdb.ingest.headerjson import header_to_json
from obsdb.instruments import FrameInfo, InstrumentProfile, select_profile


@dataclass(frozen=True)
class Inspection:
    """What one file is: a frame description, or why it cannot be one."""

    path: str
    size: int | None = None
    mtime: datetime | None = None
    sha256: str | None = None
    header: dict[str, Any] | None = None
    info: FrameInfo | None = None
    profile: str | None = None
    instrument: str | None = None
    error_kind: str | None = None  # set when the file cannot be a frame
    error_reason: str | None = None
    vanished: bool = False


def file_mtime(stat: os.stat_result) -> datetime:
    return datetime.fromtimestamp(stat.st_mtime, UTC)


def instrument_name(profile: InstrumentProfile, info: FrameInfo) -> str:
    """A configured profile names its instrument; otherwise the header does."""
    if not profile.is_generic:
        return profile.name
    parts = [p for p in (info.telescope, info.instrument) if p]
    return " / ".join(parts) if parts else "unknown"


def inspect_file(path: str | os.PathLike[str], profiles: list[InstrumentProfile]) -> Inspection:
    """Hash ``path`` and read its header (never its pixels). Never raises for a bad file."""
    path = str(Path(os.path.abspath(path)))
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return Inspection(path, vanished=True)
    except OSError as exc:
        return Inspection(path, error_kind="unreadable", error_reason=f"cannot stat file: {exc.strerror}")
    base = dict(path=path, size=stat.st_size, mtime=file_mtime(stat))
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        return Inspection(path, vanished=True)
    except PermissionError:
        return Inspection(**base, error_kind="permission", error_reason="permission denied reading the file")
    except OSError as exc:
        return Inspection(**base, error_kind="unreadable", error_reason=f"read error: {exc.strerror}")
    try:
        hdr = read_header(path)
    except FileNotFoundError:
        return Inspection(path, vanished=True)
    except FitsFileError as exc:
        return Inspection(**base, sha256=digest, error_kind=exc.kind, error_reason=exc.reason)
    profile = select_profile(hdr.header, profiles)
    info = profile.read(hdr.header, Path(path).name)
    return Inspection(
        **base, sha256=digest, header=header_to_json(hdr.header), info=info,
        profile=profile.name, instrument=instrument_name(profile, info),
    )


def inspect_many(args: tuple[str, list[InstrumentProfile]]) -> Inspection:
    """:func:`inspect_file` for a process pool's ``map``."""
    return inspect_file(*args)
