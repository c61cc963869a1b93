"""The ``sources`` table: stars at fixed sky positions that measurements hang on.

Storage functions take a session and never commit; the photometry stage owns the
transaction (and the lock that keeps two workers from creating the same star twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from obsdb.catalog.healpix import cone_ranges, healpix_index

# Key of the transaction-scoped advisory lock under which sources are matched and created:
# two workers measuring frames of one field must not both create the same new star.
SOURCES_LOCK = 0x6F627364_01  # "obsd" + 1


@dataclass(frozen=True)
class SourceList:
    id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    refcat_id: np.ndarray  # -1 where not linked
    refstar_id: np.ndarray

    def __len__(self) -> int:
        return len(self.id)


def lock_sources(session: Session) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SOURCES_LOCK})


def _ranges(ra: float, dec: float, radius_deg: float) -> tuple[list[int], list[int]]:
    ranges = cone_ranges(ra, dec, radius_deg)
    return [int(lo) for lo, _ in ranges], [int(hi) for _, hi in ranges]


def sources_in_cone(session: Session, ra: float, dec: float, radius_deg: float) -> SourceList:
    """Sources within ``radius_deg`` of (ra, dec), by a HEALPix index range scan."""
    lo, hi = _ranges(ra, dec, radius_deg)
    rows = session.execute(
        text(
            "SELECT s.id, s.ra, s.dec, coalesce(s.refcat_id, -1), coalesce(s.refstar_id, -1) "
            "FROM unnest(CAST(:lo AS bigint[]), CAST(:hi AS bigint[])) AS r(lo, hi) "
            "JOIN sources s ON s.healpix BETWEEN r.lo AND r.hi "
            "WHERE degrees(acos(least(1.0, sin(radians(s.dec)) * sin(radians(:dec)) + "
            "cos(radians(s.dec)) * cos(radians(:dec)) * cos(radians(s.ra - :ra))))) <= :radius"
        ),
        {"lo": lo, "hi": hi, "ra": ra, "dec": dec, "radius": radius_deg},
    ).all()
    arr = np.array(rows, dtype=float).reshape(-1, 5)
    return SourceList(arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], arr[:, 3].astype(int),
                      arr[:, 4].astype(np.int64))


def create_sources(session: Session, ra, dec, *, frame_id: int | None, refcat_id=None, refstar_id=None,
                   pm_ra=None, pm_dec=None, epoch=None) -> np.ndarray:
    """Insert new sources; returns their ids in input order."""
    ra = np.asarray(ra, dtype=float) % 360.0
    dec = np.asarray(dec, dtype=float)
    n = len(ra)
    if n == 0:
        return np.array([], dtype=np.int64)

    def column(values, dtype=float):
        if values is None:
            return [None] * n
        out = np.asarray(values, dtype=dtype)
        return [None if (dtype is float and not np.isfinite(v)) or (dtype is not float and v < 0) else v.item()
                for v in out]

    rows = session.execute(
        text(
            "INSERT INTO sources (ra, dec, healpix, refcat_id, refstar_id, pm_ra, pm_dec, epoch, first_frame_id) "
            "SELECT ra, dec, hp, rc, rs, pmra, pmdec, epoch, frame FROM unnest(CAST(:ra AS float8[]), "
            "CAST(:dec AS float8[]), CAST(:hp AS bigint[]), CAST(:rc AS smallint[]), CAST(:rs AS bigint[]), "
            "CAST(:pmra AS float8[]), CAST(:pmdec AS float8[]), CAST(:epoch AS float8[]), CAST(:frame AS bigint[])) "
            "WITH ORDINALITY AS t(ra, dec, hp, rc, rs, pmra, pmdec, epoch, frame, n) ORDER BY n RETURNING id"
        ),
        {
            "ra": ra.tolist(), "dec": dec.tolist(), "hp": healpix_index(ra, dec).tolist(),
            "rc": column(refcat_id, np.int64), "rs": column(refstar_id, np.int64),
            "pmra": column(pm_ra), "pmdec": column(pm_dec), "epoch": column(epoch),
            "frame": [frame_id] * n,
        },
    ).scalars().all()
    # Identity values are handed out in insertion order, which follows ORDER BY n.
    return np.sort(np.asarray(rows, dtype=np.int64))


def newest_source_id(session: Session) -> int:
    """The largest source id (0 when there is none). Under :func:`lock_sources` ids rise
    in the order sources were created, so this marks what a measurement has seen."""
    return int(session.scalar(text("SELECT coalesce(max(id), 0) FROM sources")))


def delete_orphans_of(session: Session, frame_id: int) -> int:
    """Remove sources a frame created that nothing else uses (before the frame is measured
    again), so a re-run leaves no orphans behind."""
    return session.execute(
        text(
            "DELETE FROM sources s WHERE s.first_frame_id = :f "
            "AND NOT EXISTS (SELECT 1 FROM measurements m WHERE m.source_id = s.id AND m.frame_id <> :f) "
            "AND NOT EXISTS (SELECT 1 FROM targets t WHERE t.source_id = s.id)"
        ),
        {"f": frame_id},
    ).rowcount
