"""Keeping a copy of every file obsdb could not ingest."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path


def quarantine_copy(path: Path, quarantine_dir: Path, sha256: str | None) -> Path | None:
    """Copy ``path`` into the quarantine folder; never touch the original.

    The copy's name starts with the content hash, so re-ingesting the same bad file does
    not pile up copies. Returns None when the file cannot be read (nothing to keep).
    """
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    target_dir = quarantine_dir / day
    prefix = sha256[:16] if sha256 else "unreadable"
    target = target_dir / f"{prefix}-{path.name}"
    if sha256 and target.exists():
        return target
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(target)
    except OSError:
        return None
    return target
