"""Astrometric solutions, sources, measurements, zero points and ensembles."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Float, ForeignKey, Identity, Index, SmallInteger
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import REAL, Text

from obsdb.models.base import Base, created_at_column

WCS_METHODS = ("refcat", "aligned", "attached", "header")


class WcsAttachment(Base):
    """A plate solution a person gave for one frame (``obsdb wcs attach``)."""

    __tablename__ = "wcs_attachments"

    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True)
    header: Mapped[str] = mapped_column(Text)  # the WCS cards as a FITS header string
    source_path: Mapped[str | None] = mapped_column(Text)
    attached_at: Mapped[datetime] = created_at_column()


class FrameSolution(Base):
    """What the photometry stage learnt of one calibrated frame: image quality, the WCS
    and how it was found, and depth. One row per frame, replaced when the stage re-runs."""

    __tablename__ = "frame_solutions"
    __table_args__ = (CheckConstraint("method IN ('refcat', 'aligned', 'attached', 'header')", name="method"),)

    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True)
    reduction_id: Mapped[int] = mapped_column(ForeignKey("reductions.id", ondelete="CASCADE"))
    field: Mapped[str] = mapped_column(Text)  # ensemble group: OBJECT, else a pointing cell
    wcs_header: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    reference_frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id", ondelete="SET NULL"))
    wcs_rms_px: Mapped[float | None]
    wcs_rms_arcsec: Mapped[float | None]
    n_astrometric_matches: Mapped[int | None]
    ra_center: Mapped[float]
    dec_center: Mapped[float]
    radius_deg: Mapped[float]  # centre to the farthest corner
    pixel_scale: Mapped[float]
    fwhm: Mapped[float | None]  # pixels
    ellipticity: Mapped[float | None]
    psf_beta: Mapped[float | None] = mapped_column(REAL)  # Moffat beta of the PSF fit
    sky: Mapped[float | None]  # ADU per pixel
    sky_rms: Mapped[float | None]
    n_detections: Mapped[int]
    # The largest sources.id when the frame was measured: every source up to it was
    # measured on the frame where it falls on it (obsdb.photometry.catch_up).
    sources_upto: Mapped[int | None] = mapped_column(BigInteger)
    # Magnitudes from the reported aperture to the largest one (bright isolated stars),
    # already in measurements.inst_mag, so zero points refer to (nearly) total flux.
    aperture_correction: Mapped[float | None]
    apertures: Mapped[list[float]] = mapped_column(ARRAY(REAL))  # radii, pixels
    aperture_index: Mapped[int]  # the reported one
    annulus: Mapped[list[float]] = mapped_column(ARRAY(REAL))
    airmass: Mapped[float | None]
    mjd_mid: Mapped[float | None]
    bjd_tdb_center: Mapped[float | None]
    flags: Mapped[int] = mapped_column(server_default="0")  # ORed into every measurement
    obsdb_version: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()


class Target(Base):
    """A named position every frame covering it measures (forced photometry)."""

    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    ra: Mapped[float]
    dec: Mapped[float]
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    created_at: Mapped[datetime] = created_at_column()


class Source(Base):
    """A star (or target) at a fixed position in the sky, with its own light curve."""

    __tablename__ = "sources"
    __table_args__ = (Index("ix_sources_healpix", "healpix"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    ra: Mapped[float]
    dec: Mapped[float]
    healpix: Mapped[int] = mapped_column(BigInteger)
    refcat_id: Mapped[int | None] = mapped_column(SmallInteger)
    refstar_id: Mapped[int | None] = mapped_column(BigInteger)
    pm_ra: Mapped[float | None]  # mas/yr, includes cos(dec), from the reference catalog
    pm_dec: Mapped[float | None]
    epoch: Mapped[float | None]  # Julian year of ra/dec when pm is known
    first_frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id", ondelete="SET NULL"))
    # Per filter: mean mag, error, n, chi2 per dof, variable flag (written by the ensemble).
    stats: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
    created_at: Mapped[datetime] = created_at_column()


class Measurement(Base):
    """One source on one frame: aperture fluxes, the calibrated magnitude and its flags.

    ``flux``/``flux_err`` hold every aperture of ``frame_solutions.apertures`` (ADU per
    exposure, sky removed); the scalar columns are for the reported aperture.
    """

    __tablename__ = "measurements"
    __table_args__ = (
        Index("ix_measurements_source_frame", "source_id", "frame_id", unique=True),
        Index("ix_measurements_frame", "frame_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # References to frames(id) and sources(id), with ON DELETE CASCADE, kept by triggers
    # that check once per statement rather than by foreign keys that check once per row
    # (migration 0006): a frame's rows arrive in one COPY.
    frame_id: Mapped[int] = mapped_column(BigInteger)
    source_id: Mapped[int] = mapped_column(BigInteger)
    x: Mapped[float] = mapped_column(REAL)  # 0-based pixel
    y: Mapped[float] = mapped_column(REAL)
    ra: Mapped[float]
    dec: Mapped[float]
    mjd: Mapped[float | None]  # mid-exposure, UTC
    bjd_tdb: Mapped[float | None]
    fluxes: Mapped[list[float]] = mapped_column(ARRAY(REAL))
    flux_errs: Mapped[list[float]] = mapped_column(ARRAY(REAL))
    flux: Mapped[float | None] = mapped_column(REAL)
    flux_err: Mapped[float | None] = mapped_column(REAL)
    background: Mapped[float | None] = mapped_column(REAL)  # ADU per pixel, local annulus
    snr: Mapped[float | None] = mapped_column(REAL)
    inst_mag: Mapped[float | None] = mapped_column(Float)
    inst_mag_err: Mapped[float | None] = mapped_column(Float)
    mag: Mapped[float | None] = mapped_column(Float)  # calibrated (ensemble) magnitude
    mag_err: Mapped[float | None] = mapped_column(Float)
    upper_limit: Mapped[float | None] = mapped_column(REAL)  # 3-sigma limit when not detected
    flags: Mapped[int] = mapped_column(server_default="0")
    forced: Mapped[bool] = mapped_column(server_default="false")


class ZeroPoint(Base):
    """The magnitude calibration of one frame: its own fit against the catalog and the
    zero point the field's ensemble gave it."""

    __tablename__ = "zeropoints"

    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True)
    filter: Mapped[str | None] = mapped_column(Text)
    band: Mapped[str | None] = mapped_column(Text)
    zp: Mapped[float | None]  # per-frame catalog fit: mag = inst_mag + zp + colour_term * colour
    zp_err: Mapped[float | None]
    colour_term: Mapped[float | None]
    rms: Mapped[float | None]
    n_stars: Mapped[int] = mapped_column(server_default="0")
    ensemble_zp: Mapped[float | None]
    ensemble_zp_err: Mapped[float | None]
    ensemble_id: Mapped[int | None] = mapped_column(ForeignKey("ensembles.id", ondelete="SET NULL"))
    lim_mag_3: Mapped[float | None]
    lim_mag_5: Mapped[float | None]
    lim_mag_10: Mapped[float | None]
    created_at: Mapped[datetime] = created_at_column()


class Ensemble(Base):
    """The latest ensemble solution of one field in one filter."""

    __tablename__ = "ensembles"

    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    field: Mapped[str] = mapped_column(Text)
    filter: Mapped[str] = mapped_column(Text)
    band: Mapped[str | None] = mapped_column(Text)
    colour: Mapped[str | None] = mapped_column(Text)
    colour_term: Mapped[float | None]
    tied_to_catalog: Mapped[bool]
    n_frames: Mapped[int]
    n_stars: Mapped[int]
    n_observations: Mapped[int]
    n_components: Mapped[int]
    variables: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default="{}")  # source ids
    rms: Mapped[float | None]
    stats: Mapped[dict[str, Any]] = mapped_column(server_default="{}")
    obsdb_version: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(Text)
    solved_at: Mapped[datetime] = created_at_column()

    __table_args__ = (Index("uq_ensembles_field_filter", "field", "filter", unique=True),)
