"""Frames to measure again because sources appeared on them after they were measured.

A frame gets forced photometry at the sources that exist when it is measured. A star
first detected on a later frame (a faint one, a spell of better seeing, frames measured
out of order by several workers), or a target added afterwards, would have no point on
the earlier frames of its light curve. Such frames are found here, by the
``frame_solutions.sources_upto`` mark their measurement left, and measured again (the
measure stage is idempotent). A source counts when:

- it is a target, or was detected (not forced) on at least ``CONFIRM_DETECTIONS``
  frames: a single detection may be noise, and each would have every frame of its
  field measured again;
- it is newer than the frame's mark, and falls on the frame's pixels by the frame's WCS
  (the measure stage's own test for forced photometry);
- the frame has no measurement of it.

A frame measured again leaves a new mark, so it is found again only for newer sources,
and the catching up ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy import text
from sqlalchemy.orm import Session

from obsdb.catalog.healpix import angular_separation_deg
from obsdb.photometry.frame_wcs import field_cone

__all__ = ["CONFIRM_DETECTIONS", "frames_missing_source", "stale_frames_of_field"]

#: Detections (not forced) that make a source real enough to measure earlier frames at.
CONFIRM_DETECTIONS = 2

_FRAME_COLUMNS = ("fs.frame_id, fs.ra_center, fs.dec_center, fs.radius_deg, coalesce(fs.sources_upto, 0) AS upto, "
                  "fs.wcs_header, f.naxis1, f.naxis2")
_LIVE = "f.state = 'measured' AND f.superseded_at IS NULL"
#: A target, or detected on CONFIRM_DETECTIONS frames (counting stops there).
_COUNTS = ("(EXISTS (SELECT 1 FROM targets AS t WHERE t.source_id = {s}) "
           "OR (SELECT count(*) FROM (SELECT 1 FROM measurements AS d WHERE d.source_id = {s} AND NOT d.forced "
           "LIMIT :confirm) AS n) >= :confirm)")


@dataclass(frozen=True)
class _Sources:
    id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray


def stale_frames_of_field(session: Session, field: str, filter_name: str) -> list[int]:
    """Measured frames of a field in a filter that lack a newer source falling on them."""
    frames = session.execute(text(
        f"SELECT {_FRAME_COLUMNS} FROM frame_solutions AS fs JOIN frames AS f ON f.id = fs.frame_id "
        f"WHERE {_LIVE} AND fs.field = :field AND f.filter = :filter"),
        {"field": field, "filter": filter_name}).all()
    if not frames:
        return []
    ra, dec, radius = field_cone(frames)
    rows = session.execute(text(
        "SELECT c.source_id, c.ra, c.dec FROM obsdb_source_cone(:ra, :dec, :radius) AS c "
        f"WHERE c.source_id > :upto AND {_COUNTS.format(s='c.source_id')}"),
        {"ra": ra, "dec": dec, "radius": radius, "upto": min(f.upto for f in frames),
         "confirm": CONFIRM_DETECTIONS}).all()
    return _missing(session, frames, rows)


def frames_missing_source(session: Session, source_id: int) -> list[int]:
    """Measured frames that a source (a new target, say) falls on but has no measurement on."""
    rows = session.execute(text("SELECT id, ra, dec FROM sources WHERE id = :s"), {"s": source_id}).all()
    if not rows:
        return []
    frames = session.execute(text(
        f"SELECT {_FRAME_COLUMNS} FROM frame_solutions AS fs JOIN frames AS f ON f.id = fs.frame_id "
        f"WHERE {_LIVE} AND obsdb_ang_sep_deg(fs.ra_center, fs.dec_center, :ra, :dec) <= fs.radius_deg"),
        {"ra": rows[0].ra, "dec": rows[0].dec}).all()
    # Older than the frames' marks, it was seen by them: only a frame that did not have
    # it in its cone then (a target placed later on a known source's spot cannot be) is
    # missing it, so no mark test here.
    return _missing(session, frames, rows, use_marks=False)


def _missing(session: Session, frames, rows, use_marks: bool = True) -> list[int]:
    if not rows:
        return []
    src = _Sources(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], float),
                   np.array([r[2] for r in rows], float))
    candidates: dict[int, np.ndarray] = {}
    for f in frames:
        newer = src.id > f.upto if use_marks else np.ones(len(src.id), bool)
        near = newer & (angular_separation_deg(f.ra_center, f.dec_center, src.ra, src.dec) <= f.radius_deg)
        if not near.any():
            continue
        wcs = WCS(fits.Header.fromstring(f.wcs_header)).celestial
        x, y = wcs.world_to_pixel_values(src.ra[near], src.dec[near])
        x, y = np.asarray(x, float), np.asarray(y, float)
        inside = (x >= 0) & (y >= 0) & (x <= f.naxis1 - 1) & (y <= f.naxis2 - 1)
        if inside.any():
            candidates[f.frame_id] = src.id[near][inside]
    if not candidates:
        return []
    measured = set(map(tuple, session.execute(text(
        "SELECT frame_id, source_id FROM measurements WHERE frame_id = ANY(:f) AND source_id = ANY(:s)"),
        {"f": list(candidates), "s": sorted({int(s) for ids in candidates.values() for s in ids})}).all()))
    return sorted(frame_id for frame_id, ids in candidates.items()
                  if any((frame_id, int(s)) not in measured for s in ids))

