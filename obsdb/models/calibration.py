"""Master calibrations, their inputs, and the reduction of each light frame."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import Text

from obsdb.models.base import Base, created_at_column

MASTER_KINDS = ("bias", "dark", "flat")


class Master(Base):
    """A combined calibration frame for one group (instrument, kind, binning, filter or
    exposure time, night). A group has one row; a late member rebuilds it in place and
    bumps ``version``, so reductions made with an older version can be found and redone."""

    __tablename__ = "masters"
    __table_args__ = (
        CheckConstraint("kind IN ('bias', 'dark', 'flat')", name="kind"),
        Index("ix_masters_selection", "instrument_id", "kind", "xbinning", "ybinning", "filter"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    group_key: Mapped[str] = mapped_column(Text, unique=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    kind: Mapped[str] = mapped_column(Text)
    filter: Mapped[str | None] = mapped_column(Text)
    exptime: Mapped[float | None]
    xbinning: Mapped[int]
    ybinning: Mapped[int]
    naxis1: Mapped[int]
    naxis2: Mapped[int]
    night: Mapped[date | None]
    ccd_temp: Mapped[float | None]  # median of the inputs
    date_obs: Mapped[datetime | None]  # median time of the inputs
    valid_from: Mapped[datetime | None]
    valid_until: Mapped[datetime | None]
    n_inputs: Mapped[int]
    stats: Mapped[dict[str, Any]]
    path: Mapped[str | None] = mapped_column(Text)
    is_bad: Mapped[bool] = mapped_column(server_default="false")
    bad_reason: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(server_default="1")
    obsdb_version: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(Text)
    built_at: Mapped[datetime] = mapped_column(server_default=func.now())


class MasterInput(Base):
    """A calibration frame offered to a master, and whether the combine used it."""

    __tablename__ = "master_inputs"

    master_id: Mapped[int] = mapped_column(ForeignKey("masters.id", ondelete="CASCADE"), primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), primary_key=True)
    used: Mapped[bool]
    reason: Mapped[str | None] = mapped_column(Text)


class Reduction(Base):
    """The calibrated product of one frame and everything that made it."""

    __tablename__ = "reductions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), unique=True)
    path: Mapped[str] = mapped_column(Text)
    bias_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    bias_version: Mapped[int | None]
    dark_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    dark_version: Mapped[int | None]
    dark_scaled: Mapped[bool] = mapped_column(server_default="false")
    flat_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    flat_version: Mapped[int | None]
    steps: Mapped[list[str]] = mapped_column(ARRAY(Text))
    missing: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    sky: Mapped[float | None]
    sky_rms: Mapped[float | None]
    n_saturated: Mapped[int | None]
    n_cosmic: Mapped[int | None]
    obsdb_version: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()
