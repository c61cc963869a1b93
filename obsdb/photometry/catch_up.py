"""Measurements a frame lacks because sources appeared on it after it was measured.

A frame gets forced photometry at the sources that exist when it is measured. A star
first detected on a later frame (a faint one, a spell of better seeing, frames measured
out of order by several workers), or a target added afterwards, would have no point on
the earlier frames of its light curve. Such frames are found here, by the
``frame_solutions.sources_upto`` mark their measurement left, and measured at those
sources (:func:`measure_new_sources`): forced photometry with the frame's own apertures,
WCS and zero point, added to its measurements, at a few hundredths of a second a frame
where measuring it all again would take a second. A source counts when:

- it is a target, or was detected (not forced) on at least ``CONFIRM_DETECTIONS``
  frames: a single detection may be noise (a cosmic ray, a hot pixel), and every frame
  of its field would be measured at it;
- it is newer than the frame's mark, and falls on the frame's pixels by the frame's WCS
  (the measure stage's own test for forced photometry);
- the frame has no measurement of it.

The frame's mark then moves to the newest source, so it is found again only for newer
sources, and the catching up ends.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from obsdb.calibration.products import read_product
from obsdb.catalog import sources as source_table
from obsdb.catalog.healpix import angular_separation_deg
from obsdb.config import Settings
from obsdb.models import Frame, Reduction
from obsdb.models.photometry import FrameSolution, Measurement, ZeroPoint
from obsdb.photometry.apertures import measure_apertures
from obsdb.photometry.frame_wcs import field_cone
from obsdb.photometry.measure_stage import (
    complete_planes,
    inst_mag,
    measurement_columns,
    point_flags,
    scintillation_of,
    site_of,
)
from obsdb.photometry.refstars import reference_stars
from obsdb.photometry.writer import copy_measurements

__all__ = ["CONFIRM_DETECTIONS", "CaughtUp", "frames_missing_source", "measure_new_sources",
           "stale_frames_of_field"]

#: Detections (not forced) that make a source worth measuring earlier frames at.
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
    """Measured frames that a source (a new target, say) falls on, newer than their mark,
    with no measurement there."""
    rows = session.execute(text("SELECT id, ra, dec FROM sources WHERE id = :s"), {"s": source_id}).all()
    if not rows:
        return []
    frames = session.execute(text(
        f"SELECT {_FRAME_COLUMNS} FROM frame_solutions AS fs JOIN frames AS f ON f.id = fs.frame_id "
        f"WHERE {_LIVE} AND obsdb_ang_sep_deg(fs.ra_center, fs.dec_center, :ra, :dec) <= fs.radius_deg"),
        {"ra": rows[0].ra, "dec": rows[0].dec}).all()
    return _missing(session, frames, rows)


def _missing(session: Session, frames, rows) -> list[int]:
    """The frames that ``rows`` (id, ra, dec), where newer than a frame's mark, fall on
    without a measurement there. (Sources up to the mark were measured wherever they fall
    on the frame: the measure stage forces photometry at every known source.)"""
    if not rows:
        return []
    src = _Sources(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], float),
                   np.array([r[2] for r in rows], float))
    candidates: dict[int, np.ndarray] = {}
    for f in frames:
        near = (src.id > f.upto) & (angular_separation_deg(f.ra_center, f.dec_center, src.ra, src.dec) <= f.radius_deg)
        if not near.any():
            continue
        x, y = _celestial_wcs(f.wcs_header).world_to_pixel_values(src.ra[near], src.dec[near])
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


@functools.lru_cache(maxsize=1024)
def _celestial_wcs(header: str) -> WCS:
    # A worker solves the same fields night after night: the frames whose circle (not
    # their pixels) holds a newer source are the same at every ensemble, so their WCS
    # is parsed once per process.
    return WCS(fits.Header.fromstring(header)).celestial


@dataclass(frozen=True)
class CaughtUp:
    frame_id: int
    added: int  # measurements added
    field: str | None = None
    filter: str | None = None
    reason: str | None = None  # why nothing was done


def measure_new_sources(sessions: sessionmaker, settings: Settings, frame_id: int) -> CaughtUp:
    """Forced photometry of a measured frame at every source newer than its mark that falls
    on it and has no measurement there, with the frame's own apertures, WCS, PSF and zero
    point (the ensemble then revises the magnitudes); the mark moves to the newest source."""
    with sessions() as session:
        frame = session.get(Frame, frame_id)
        sol = session.get(FrameSolution, frame_id)
        if frame is None or sol is None or frame.state != "measured" or frame.superseded_at is not None:
            return CaughtUp(frame_id, 0, reason="not a measured frame")
        reduction = session.get(Reduction, sol.reduction_id)
        zp_row = session.get(ZeroPoint, frame_id)
        session.expunge_all()
    if reduction is None or not Path(reduction.path).is_file():
        return CaughtUp(frame_id, 0, sol.field, frame.filter, "its calibrated product is gone (obsdb reprocess)")
    sci, err, mask, header = read_product(reduction.path)
    err, mask = complete_planes(frame, sci, err, mask)
    wcs = _celestial_wcs(sol.wcs_header)
    location, height = site_of(header, settings)
    k = sol.aperture_index
    zp = (SimpleNamespace(zp=zp_row.zp, zp_err=zp_row.zp_err, colour_term=zp_row.colour_term)
          if zp_row is not None and zp_row.zp is not None else None)
    cone = (sol.ra_center, sol.dec_center, sol.radius_deg)

    with sessions() as session, session.begin():
        # Under the sources' lock, no source appears meanwhile: the new mark is true.
        source_table.lock_sources(session)
        upto = source_table.newest_source_id(session)
        known = source_table.sources_in_cone(session, *cone)
        rows = session.execute(select(Measurement.source_id, Measurement.x, Measurement.y, Measurement.forced)
                               .where(Measurement.frame_id == frame_id)).all()
        have = np.array([r.source_id for r in rows], np.int64)
        new = np.flatnonzero((known.id > (sol.sources_upto or 0)) & ~np.isin(known.id, have))
        x, y = (np.asarray(v, float) for v in wcs.world_to_pixel_values(known.ra[new], known.dec[new]))
        inside = (x >= 0) & (y >= 0) & (x <= frame.naxis1 - 1) & (y <= frame.naxis2 - 1)
        new, x, y = new[inside], x[inside], y[inside]
        if len(new):
            refstars = reference_stars(session, settings, settings.photometry.band_of(frame.filter), cone,
                                       frame.mjd_mid)
            detections = np.array([(r.x, r.y) for r in rows if not r.forced], float).reshape(-1, 2)
            ap = measure_apertures(sci, err, mask, x, y, radii=np.asarray(sol.apertures, float),
                                   annulus=(float(sol.annulus[0]), float(sol.annulus[1])), neighbours_xy=detections,
                                   saturation=None, scintillation=scintillation_of(settings, header, frame, height),
                                   recenter=False)
            is_forced = np.ones(len(new), bool)
            catalog_pos = np.full(len(new), -1)
            if refstars is not None:
                linked = known.refcat_id[new] == refstars.refcat_id
                catalog_pos = refstars.index_of(np.where(linked, known.refstar_id[new], -1))
            imag, imag_err = inst_mag(ap.flux[:, k], ap.flux_err[:, k])
            imag = imag + (sol.aperture_correction or 0.0)
            flags = point_flags(ap, k, is_forced, sol.flags or 0, refstars, catalog_pos, wcs, sol.fwhm or 2.5,
                                sol.psf_beta or 3.0)
            copy_measurements(session, measurement_columns(frame, known.id[new], is_forced, ap, k, imag, imag_err,
                                                           sol.aperture_correction, flags, zp, refstars,
                                                           catalog_pos, wcs, location))
        session.execute(update(FrameSolution).where(FrameSolution.frame_id == frame_id).values(sources_upto=upto))
    return CaughtUp(frame_id, len(new), sol.field, frame.filter)
