"""Finding the files to ingest under the paths a user names."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from obsdb.fitsfile import is_fits_name


def iter_candidate_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Yield every file to ingest, in a stable order.

    A file named explicitly is always a candidate (if it is not FITS, ingest records why);
    inside directories only files with a FITS name are, recursively. Symbolic links to
    directories are not followed, so a link loop in an observer's tree cannot trap the scan.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames.sort()
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in sorted(filenames):
                    if is_fits_name(name) and not name.startswith("."):
                        yield Path(dirpath) / name
        else:
            yield path
