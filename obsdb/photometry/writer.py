"""Writing a frame's measurements with COPY (row-by-row INSERTs are ~30x slower)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sqlalchemy.orm import Session

COLUMNS = (
    "frame_id", "source_id", "x", "y", "ra", "dec", "mjd", "bjd_tdb", "fluxes", "flux_errs", "flux", "flux_err",
    "background", "snr", "inst_mag", "inst_mag_err", "mag", "mag_err", "upper_limit", "flags", "forced",
)
_ARRAYS = {"fluxes", "flux_errs"}
_INTEGERS = {"frame_id", "source_id", "flags"}


def _as_list(name: str, values, n: int) -> list:
    if values is None:
        return [None] * n
    a = np.asarray(values)
    if name in _ARRAYS:
        a = a.astype(float)
        return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]
    if name in _INTEGERS:
        return a.astype(np.int64).tolist()
    if a.dtype == bool:
        return a.tolist()
    a = a.astype(float)
    return np.where(np.isfinite(a), a, None).tolist()


def copy_measurements(session: Session, columns: Mapping[str, object]) -> int:
    """COPY rows into ``measurements`` inside the session's transaction; returns the count.

    ``columns`` maps column names to equal-length arrays (None: all NULL); NaN is NULL.
    """
    n = len(np.asarray(columns["source_id"]))
    if n == 0:
        return 0
    names = [c for c in COLUMNS if c in columns]
    lists = [_as_list(c, columns[c], n) for c in names]
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY measurements ({', '.join(names)}) FROM STDIN") as copy:
        for row in zip(*lists, strict=True):
            copy.write_row(row)
    return n
