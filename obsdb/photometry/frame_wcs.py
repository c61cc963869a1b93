"""Finding a frame's WCS, in the order an observer would trust them.

1. A solution somebody attached (``obsdb wcs attach``), refined against the catalog.
2. The header's own WCS, refined against the catalog (stale plate solutions, pointing
   errors of tens of pixels and small rotations are common).
3. The star pattern of a solved frame of the same field (same OBJECT or pointing within
   ``photometry.same_field_deg``), then refined against the catalog when there is one.
4. With no catalog, the header's WCS as it is. It comes after the alignment: header
   solutions of one field disagree by their pointing errors (several pixels, often
   tens), more than the crossmatch radius, and each frame would then create its own
   copy of every star. Aligned to one frame, the field's frames agree to a fraction of
   a pixel, and the sky positions are as good as that frame's header.
5. The header pointing and pixel scale (FOCALLEN and XPIXSZ), refined against the catalog.

When none works the frame waits in ``needs_wcs`` with a reason that says what to do.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from obsdb.astrometry.align import align_to_reference
from obsdb.astrometry.errors import AstrometryError
from obsdb.astrometry.initial import pixel_scale_from_header, wcs_from_header, wcs_from_pointing
from obsdb.astrometry.match import refine_wcs
from obsdb.config import PhotometrySettings
from obsdb.calibration.products import read_product
from obsdb.models import Frame, Reduction
from obsdb.models.photometry import FrameSolution
from obsdb.photometry.background import estimate_background
from obsdb.photometry.detect import detect_stars


class NeedsWcs(Exception):
    """No WCS could be found for the frame; the message tells the user what to do."""


@dataclass(frozen=True)
class FrameWcs:
    wcs: WCS
    method: str
    rms_px: float | None = None
    rms_arcsec: float | None = None
    n_matches: int | None = None
    reference_frame_id: int | None = None


def pixel_scale_of(wcs: WCS) -> float:
    """Arcsec per pixel (geometric mean of the two axes)."""
    cd = wcs.celestial.pixel_scale_matrix
    return float(math.sqrt(abs(np.linalg.det(cd))) * 3600.0)


def footprint(wcs: WCS, shape: tuple[int, int]) -> tuple[float, float, float]:
    """(ra, dec) of the frame centre and the angular distance to its farthest corner (deg)."""
    ny, nx = shape
    xs = np.array([(nx - 1) / 2, 0, nx - 1, 0, nx - 1])
    ys = np.array([(ny - 1) / 2, 0, 0, ny - 1, ny - 1])
    ra, dec = wcs.celestial.pixel_to_world_values(xs, ys)
    ra0, dec0 = np.radians(ra[0]), np.radians(dec[0])
    ra1, dec1 = np.radians(ra[1:]), np.radians(dec[1:])
    cos_d = np.sin(dec0) * np.sin(dec1) + np.cos(dec0) * np.cos(dec1) * np.cos(ra1 - ra0)
    radius = float(np.degrees(np.arccos(np.clip(cos_d, -1, 1))).max())
    return float(ra[0] % 360.0), float(dec[0]), radius


def field_cone(rows) -> tuple[float, float, float]:
    """(ra, dec, radius) in degrees of a cone holding the footprints of ``rows`` (each with
    ``ra_center``, ``dec_center`` and ``radius_deg``, as frame_solutions has them)."""
    ra = np.radians([r.ra_center for r in rows])
    dec = np.radians([r.dec_center for r in rows])
    v = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=0)
    v /= np.linalg.norm(v)
    ra0, dec0 = np.degrees(np.arctan2(v[1], v[0])) % 360.0, np.degrees(np.arcsin(v[2]))
    cos_d = np.sin(np.radians(dec0)) * np.sin(dec) + np.cos(np.radians(dec0)) * np.cos(dec) * np.cos(ra - np.radians(ra0))
    spread = np.degrees(np.arccos(np.clip(cos_d, -1, 1)))
    return float(ra0), float(dec0), float((spread + np.array([r.radius_deg for r in rows])).max())


def _refine(initial: WCS, method: str, stars, refstars, shape, ph: PhotometrySettings,
            reference_frame_id: int | None = None) -> FrameWcs:
    sol = refine_wcs(stars["x"], stars["y"], stars["flux"], refstars.ra, refstars.dec, refstars.rank_mag,
                     initial, shape=shape, search_radius_px=ph.search_radius_px,
                     min_matches=ph.min_astrometric_matches, sip=ph.sip_degree > 0)
    return FrameWcs(sol.wcs, method, sol.rms_px, sol.rms_arcsec, sol.n_matches, reference_frame_id)


def _same_field_reference(session: Session, frame: Frame, ph: PhotometrySettings) -> FrameSolution | None:
    """A solved frame of the same field (not aligned itself when possible, and not
    aligned to this one), the one with most detections."""
    same_object = FrameSolution.field == field_key(frame)
    near = None
    if frame.ra is not None and frame.dec is not None:
        near = text(
            "degrees(acos(least(1.0, sin(radians(frame_solutions.dec_center)) * sin(radians(:dec)) + "
            "cos(radians(frame_solutions.dec_center)) * cos(radians(:dec)) * "
            "cos(radians(frame_solutions.ra_center - :ra))))) < :within"
        ).bindparams(ra=frame.ra, dec=frame.dec, within=ph.same_field_deg)
    cond = same_object if near is None else (same_object | near)
    return session.scalar(
        select(FrameSolution)
        .join(Frame, Frame.id == FrameSolution.frame_id)
        .where(cond, Frame.instrument_id == frame.instrument_id, FrameSolution.frame_id != frame.id,
               Frame.superseded_at.is_(None),
               # not one aligned to this frame: measured again, the field's first frame
               # keeps its own solution rather than take it back from a copy
               FrameSolution.reference_frame_id.is_distinct_from(frame.id))
        .order_by((FrameSolution.method == "aligned").asc(), FrameSolution.n_detections.desc())
        .limit(1)
    )


def _reference_stars(session: Session, reference: FrameSolution, ph: PhotometrySettings):
    """The point sources of a solved frame, detected again on its calibrated product (all
    of them, with S/N: its measurements hold only the stars that made sources)."""
    reduction = session.scalar(select(Reduction).where(Reduction.frame_id == reference.frame_id))
    if reduction is None or not Path(reduction.path).is_file():
        return None
    product = Path(reduction.path)
    return _point_sources(str(product), product.stat().st_mtime_ns, ph.detect_threshold, ph.detect_min_area)


@functools.lru_cache(maxsize=8)
def _point_sources(path: str, mtime_ns: int, threshold: float, min_area: int):
    """Point sources of a calibrated product; cached, since every frame of a field aligns
    to the same reference (the modification time keys a product written again)."""
    sci, err, mask, _ = read_product(path)
    if mask is None:
        mask = np.zeros(sci.shape, np.uint8)
    sky = estimate_background(sci, mask)
    found = detect_stars(sci, sky, mask, threshold=threshold, min_area=min_area, err=err)
    found = found[found["point"]]
    found.flags.writeable = False  # shared between callers
    return found


def field_key(frame: Frame) -> str:
    """The ensemble group of a frame: its OBJECT, else a 1-degree cell of its pointing."""
    if frame.object and frame.object.strip():
        return " ".join(frame.object.split()).upper()
    if frame.ra is not None and frame.dec is not None:
        return f"cell:{round(frame.ra):03d}{round(frame.dec):+03d}"
    return "unknown"


def solve_frame_wcs(session: Session, frame: Frame, header: fits.Header, stars, shape: tuple[int, int],
                    refstars, ph: PhotometrySettings, attached: str | None = None) -> FrameWcs:
    """The best WCS for a frame, or :class:`NeedsWcs` with advice.

    ``stars``: detections (x, y, flux, brightest first); ``refstars``: the catalog
    around the frame (:class:`~obsdb.photometry.refstars.RefStars`, None when no catalog
    is loaded).
    """
    if len(stars) < ph.min_astrometric_matches:
        raise NeedsWcs(f"only {len(stars)} stars detected; too few to fix the astrometry "
                       "(clouds, or a frame with no stars?)")
    has_catalog = refstars is not None and len(refstars) >= ph.min_astrometric_matches
    problems: list[str] = []

    def attempt(initial: WCS, method: str, reference_frame_id: int | None = None) -> FrameWcs | None:
        if not has_catalog:
            return None
        try:
            return _refine(initial, method, stars, refstars, shape, ph, reference_frame_id)
        except AstrometryError as exc:
            problems.append(f"{method}: {exc}")
            return None

    if attached is not None:
        wcs = WCS(fits.Header.fromstring(attached)).celestial
        return attempt(wcs, "attached") or FrameWcs(wcs, "attached")

    header_wcs = wcs_from_header(header)
    if header_wcs is not None and has_catalog:
        solved = attempt(header_wcs, "refcat")
        if solved is not None:
            return solved

    reference = _same_field_reference(session, frame, ph)
    if reference is not None:
        ref = _reference_stars(session, reference, ph)
        if ref is not None and len(ref) >= ph.min_astrometric_matches:
            ref_wcs = WCS(fits.Header.fromstring(reference.wcs_header)).celestial
            try:
                aligned = align_to_reference(stars["x"], stars["y"], stars["flux"], ref["x"], ref["y"], ref["flux"],
                                             ref_wcs, shape=shape, snr=stars["snr"], ref_snr=ref["snr"])
            except AstrometryError as exc:
                problems.append(f"aligning to frame {reference.frame_id}: {exc}")
            else:
                refined = attempt(aligned.wcs, "aligned", reference.frame_id)
                return refined or FrameWcs(aligned.wcs, "aligned", aligned.rms_px, aligned.rms_arcsec,
                                           aligned.n_matches, reference.frame_id)

    if header_wcs is not None and not has_catalog:
        return FrameWcs(header_wcs, "header")  # nothing to refine against: the observer's own

    scale = pixel_scale_from_header(header)
    if scale is not None and frame.ra is not None and frame.dec is not None:
        solved = attempt(wcs_from_pointing(frame.ra, frame.dec, scale, shape), "refcat")
        if solved is not None:
            return solved

    raise NeedsWcs(_advice(frame, header_wcs is not None, scale, has_catalog, problems))


def _advice(frame: Frame, had_wcs: bool, scale: float | None, has_catalog: bool, problems: list[str]) -> str:
    field = field_key(frame)
    why = []
    if not had_wcs:
        why.append("no WCS in the header")
    if scale is None:
        why.append("no pixel scale (FOCALLEN/XPIXSZ)")
    if not has_catalog:
        why.append("no reference catalog covers it (obsdb refcat load)")
    why.append(f"no solved frame of field {field!r} to align to")
    detail = f" ({'; '.join(problems)})" if problems else ""
    return (f"cannot fix the astrometry: {', '.join(why)}{detail}. Attach a plate solution to one frame "
            f"of this field with `obsdb wcs attach FRAME_FILE WCS_FILE` (e.g. the wcs.fits astrometry.net "
            f"writes); the other frames of the field are then aligned to it")
