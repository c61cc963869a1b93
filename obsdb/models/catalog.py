"""Reference catalogs and their stars, indexed by HEALPix for cone searches.

``refcat_stars`` layout, chosen so that COPY is fast and the photometry query simple:

- ``healpix`` is the nested HEALPix index at order 16 (:mod:`obsdb.catalog.healpix`);
  the index on ``(refcat_id, healpix)`` makes a cone search a few index range scans, and
  the loader writes each catalog's rows in HEALPix order so a cone reads neighbouring
  heap pages (``CLUSTER`` without its exclusive lock on the whole table).
- ``mag`` and ``mag_err`` are ``real[]`` arrays ordered as ``refcats.bands``: one band is
  ``mag[array_position(bands, 'g')]`` in SQL (arrays are 1-based), ``mag[:, i]`` in
  Python. A NULL element is "no measurement" in that band; ``mag_err`` is NULL when the
  catalog has no errors at all. Real (float4) keeps 7 significant digits, more than any
  catalog's millimag precision.
- ``pm_ra`` and ``pm_dec`` are proper motions in mas/yr; ``pm_ra`` **includes** the
  cos(dec) factor (``pmra = dRA/dt · cos dec``, as Gaia gives it). Positions are at
  ``refcats.epoch`` (Julian year) when the catalog has proper motions.
- ``star_id`` numbers a catalog's stars 1, 2, … in HEALPix order (so the primary key,
  like the healpix index, is written front to back during a load); ``catalog_id`` is the
  catalog's own identifier as text, or the star's 1-based row number in the source file
  when the load named no id column.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, PrimaryKeyConstraint, func
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import Text

from obsdb.models.base import Base


class RefCatalog(Base):
    """One loaded reference catalog: where it came from and what its columns mean."""

    __tablename__ = "refcats"
    __table_args__ = (
        CheckConstraint("n_stars >= 0", name="n_stars"),
        CheckConstraint("NOT has_pm OR epoch IS NOT NULL", name="pm_epoch"),
    )

    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    bands: Mapped[list[str]] = mapped_column(ARRAY(Text))
    source_path: Mapped[str] = mapped_column(Text)
    n_stars: Mapped[int] = mapped_column(BigInteger)
    has_pm: Mapped[bool] = mapped_column(server_default="false")
    epoch: Mapped[float | None]  # Julian year of the positions (e.g. 2016.0 for Gaia DR3)
    max_pm: Mapped[float | None]  # largest total proper motion, mas/yr: widens cones at other epochs
    column_map: Mapped[dict[str, Any]]  # file columns → meaning, the file format, units found
    loaded_at: Mapped[datetime] = mapped_column(server_default=func.now())


class RefStar(Base):
    """A star of a reference catalog (see the module docstring for the units)."""

    __tablename__ = "refcat_stars"
    __table_args__ = (
        PrimaryKeyConstraint("refcat_id", "star_id"),
        CheckConstraint("ra >= 0 AND ra < 360 AND dec >= -90 AND dec <= 90", name="position"),
        Index("ix_refcat_stars_refcat_id_healpix", "refcat_id", "healpix"),
    )

    # 8-byte columns first: PostgreSQL pads each column to its alignment.
    star_id: Mapped[int] = mapped_column(BigInteger)
    healpix: Mapped[int] = mapped_column(BigInteger)
    ra: Mapped[float]
    dec: Mapped[float]
    # No FOREIGN KEY: its per-row check would make a bulk load about 1.7 times slower.
    # Stars are written only by the loader, for a catalog row it has just inserted, and
    # a trigger on refcats deletes a catalog's stars with it (as ON DELETE CASCADE would).
    refcat_id: Mapped[int]
    pm_ra: Mapped[float | None] = mapped_column(REAL)
    pm_dec: Mapped[float | None] = mapped_column(REAL)
    catalog_id: Mapped[str | None] = mapped_column(Text)
    mag: Mapped[list[float | None]] = mapped_column(ARRAY(REAL))
    mag_err: Mapped[list[float | None] | None] = mapped_column(ARRAY(REAL))
