"""Instruments, frames and the files that could not be ingested."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import Text

from obsdb.models.base import Base, created_at_column

IMAGE_TYPES = ("bias", "dark", "flat", "light", "unclassified")

# Life of a frame through the pipeline. Ingest leaves a frame 'ingested'; a light frame
# may wait for its calibrations ('waiting'), is 'reduced', then measured (or 'needs_wcs');
# a calibration frame ends 'combined' into a master or 'unused' (with the reason).
FRAME_STATES = (
    "ingested",
    "waiting",
    "calibrating",
    "reduced",
    "combined",
    "unused",
    "needs_wcs",
    "measured",
    "failed",
    "superseded",
)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Instrument(Base):
    """A camera on a telescope, read with one instrument profile."""

    __tablename__ = "instruments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    profile: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()

    frames: Mapped[list[Frame]] = relationship(back_populates="instrument")


class Frame(Base):
    """One version of one raw FITS file, with what its header says."""

    __tablename__ = "frames"
    __table_args__ = (
        CheckConstraint(_in_list("imagetyp", IMAGE_TYPES), name="imagetyp"),
        CheckConstraint(_in_list("state", FRAME_STATES), name="state"),
        CheckConstraint("xbinning >= 1 AND ybinning >= 1", name="binning"),
        CheckConstraint("exptime IS NULL OR exptime >= 0", name="exptime"),
        # One live frame per path; older contents of the same path stay as superseded.
        Index(
            "uq_frames_live_path",
            "path",
            unique=True,
            postgresql_where=text("superseded_at IS NULL"),
        ),
        Index("ix_frames_type_filter_night", "imagetyp", "filter", "night"),
        Index("ix_frames_date_obs", "date_obs"),
        Index("ix_frames_state", "state"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    file_mtime: Mapped[datetime]  # lets a rescan skip unchanged files without hashing
    header: Mapped[dict[str, Any]]

    imagetyp: Mapped[str] = mapped_column(Text)
    imagetyp_source: Mapped[str | None] = mapped_column(Text)
    object: Mapped[str | None] = mapped_column(Text)
    filter: Mapped[str | None] = mapped_column(Text)
    exptime: Mapped[float | None]
    xbinning: Mapped[int] = mapped_column(server_default="1")
    ybinning: Mapped[int] = mapped_column(server_default="1")
    naxis1: Mapped[int]
    naxis2: Mapped[int]
    gain: Mapped[float | None]
    read_noise: Mapped[float | None]
    saturation: Mapped[float | None]
    ccd_temp: Mapped[float | None]

    date_obs: Mapped[datetime | None]  # exposure start, UTC
    mjd_start: Mapped[float | None]
    mjd_mid: Mapped[float | None]
    time_source: Mapped[str | None] = mapped_column(Text)
    night: Mapped[date | None]  # local date at the start of the observing night

    ra: Mapped[float | None]  # pointing, degrees ICRS
    dec: Mapped[float | None]
    airmass: Mapped[float | None]
    has_wcs: Mapped[bool] = mapped_column(server_default="false")
    pixel_scale: Mapped[float | None]  # arcsec per pixel
    telescope: Mapped[str | None] = mapped_column(Text)
    camera: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")

    state: Mapped[str] = mapped_column(Text, server_default="ingested")
    state_reason: Mapped[str | None] = mapped_column(Text)
    tries: Mapped[int] = mapped_column(server_default="0")

    version: Mapped[int] = mapped_column(server_default="1")
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"))
    superseded_at: Mapped[datetime | None]
    ingested_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    instrument: Mapped[Instrument] = relationship(back_populates="frames")

    @property
    def binning(self) -> str:
        return f"{self.xbinning}x{self.ybinning}"


class RejectedFile(Base):
    """A file that could not be ingested, with its reason and where its copy is kept."""

    __tablename__ = "rejected_files"
    # One row per file: its path and content (migration 0008).
    __table_args__ = (Index("uq_rejected_files_path_sha256", "path", "sha256", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    quarantine_path: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(server_default="1")
    first_seen: Mapped[datetime] = created_at_column()
    last_seen: Mapped[datetime] = mapped_column(server_default=func.now())
