"""Attaching a plate solution somebody made (astrometry.net, PinPoint, ASTAP) to a frame."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from obsdb.fitsfile import sha256_file
from obsdb.models import Frame
from obsdb.models.photometry import WcsAttachment


class AttachError(ValueError):
    """The frame or the WCS file cannot be used; the message says why."""


def read_wcs_file(path: str | os.PathLike) -> fits.Header:
    """The celestial WCS cards of a FITS file (header-only ``wcs.fits`` or an image)."""
    try:
        with fits.open(path) as hdul, warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            for hdu in hdul:
                wcs = WCS(hdu.header)
                if wcs.has_celestial:
                    celestial = wcs.celestial
                    if celestial.naxis != 2 or not celestial.wcs.ctype[0].startswith("RA"):
                        continue
                    return celestial.to_header(relax=True)
    except (OSError, ValueError) as exc:
        raise AttachError(f"{path}: not a readable FITS file ({exc})") from exc
    raise AttachError(f"{path} holds no celestial WCS (CTYPE1/2 RA---TAN/DEC--TAN with CD or CDELT)")


def find_frame(session: Session, frame_file: str | os.PathLike) -> Frame:
    """The live frame of a raw file, by its path or, when moved or copied, its content."""
    path = Path(frame_file).expanduser()
    frame = session.scalar(select(Frame).where(Frame.path == str(path.resolve()), Frame.superseded_at.is_(None)))
    if frame is None and path.is_file():
        frame = session.scalar(select(Frame).where(Frame.sha256 == sha256_file(path)))
    if frame is None:
        raise AttachError(f"{frame_file} is not an ingested frame (obsdb ingest it first)")
    if frame.imagetyp != "light":
        raise AttachError(f"{frame_file} is a {frame.imagetyp} frame; a WCS belongs on a light frame")
    return frame


def attach_wcs(session: Session, frame_file, wcs_file) -> Frame:
    """Store the WCS of ``wcs_file`` for the frame of ``frame_file`` (caller commits)."""
    header = read_wcs_file(wcs_file)
    frame = find_frame(session, frame_file)
    stmt = insert(WcsAttachment).values(frame_id=frame.id, header=header.tostring(), source_path=str(wcs_file))
    session.execute(stmt.on_conflict_do_update(index_elements=["frame_id"],
                                               set_={"header": stmt.excluded.header,
                                                     "source_path": stmt.excluded.source_path}))
    return frame
