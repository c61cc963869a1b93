"""The reference-catalog stars around a frame, in the band and colour its filter needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from obsdb.config import Settings
from obsdb.models.catalog import RefCatalog


@dataclass(frozen=True)
class RefStars:
    """Catalog stars of one catalog: positions at the frame's epoch, the magnitude in the
    frame's band (None when the catalog lacks it) and the colour of the colour term."""

    refcat_id: int
    star_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray | None
    mag_err: np.ndarray | None
    colour: np.ndarray | None
    band: str | None
    colour_name: str | None
    rank_mag: np.ndarray  # brightness ranking for the astrometry (any band when the frame's is missing)

    def __len__(self) -> int:
        return len(self.star_id)

    def index_of(self, star_ids) -> np.ndarray:
        """Row of each catalog star id (-1 when absent or negative)."""
        ids = np.asarray(star_ids, dtype=np.int64)
        order = np.argsort(self.star_id)
        sorted_ids = self.star_id[order]
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
        found = (len(sorted_ids) > 0) & (ids >= 0)
        found = found & (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.where(found, order[pos] if len(order) else -1, -1)

    def colour_at(self, rows) -> np.ndarray:
        """Colour of catalog rows (NaN for -1 or unknown)."""
        rows = np.asarray(rows)
        out = np.full(len(rows), np.nan)
        if self.colour is not None:
            ok = rows >= 0
            out[ok] = self.colour[rows[ok]]
        return out


def choose_catalog(session: Session, settings: Settings) -> RefCatalog | None:
    """The configured catalog, else the only one loaded, else None."""
    name = settings.photometry.refcat
    if name:
        return session.scalar(select(RefCatalog).where(RefCatalog.name == name))
    catalogs = session.scalars(select(RefCatalog).limit(2)).all()
    return catalogs[0] if len(catalogs) == 1 else None


def julian_year(mjd: float | None) -> float | None:
    return None if mjd is None else 2000.0 + (mjd - 51544.5) / 365.25


def _column(table, name: str) -> np.ndarray | None:
    if name not in table.colnames:
        return None
    return np.asarray(table[name].filled(np.nan) if hasattr(table[name], "filled") else table[name], dtype=float)


def reference_stars(session: Session, settings: Settings, band: str | None, cone, mjd: float | None) -> RefStars | None:
    """Catalog stars within ``cone`` = (ra, dec, radius_deg), or None without a catalog."""
    catalog = choose_catalog(session, settings)
    if catalog is None:
        return None
    from obsdb.catalog.cone import cone_search

    ra, dec, radius = cone
    table = cone_search(session, catalog.name, ra, dec, radius, epoch=julian_year(mjd))
    bands = list(catalog.bands)
    has_band = band in bands
    colour_name = settings.photometry.colour_of(band)
    colour = None
    if colour_name:
        blue, red = colour_name.split("-")
        if blue in bands and red in bands:
            colour = _column(table, blue) - _column(table, red)
    # Without the frame's band the catalog still anchors the astrometry (any band ranks
    # stars by brightness), but no zero point is fitted.
    rank_band = band if has_band else (bands[0] if bands else None)
    mag = _column(table, band) if has_band else None
    mag_err = _column(table, f"{band}_err") if has_band else None
    if mag is not None and mag_err is None:
        mag_err = np.full(len(mag), np.nan)
    if mag_err is not None:
        mag_err = np.where(np.isfinite(mag_err), mag_err, 0.05)  # unquoted errors: a modest guess
    rank = _column(table, rank_band) if rank_band else None
    stars = RefStars(
        refcat_id=int(catalog.id), star_id=np.asarray(table["id"], dtype=np.int64),
        ra=np.asarray(table["ra"], dtype=float), dec=np.asarray(table["dec"], dtype=float),
        mag=mag, mag_err=mag_err, colour=colour, band=band if has_band else None, colour_name=colour_name,
        rank_mag=rank if rank is not None else np.zeros(len(table)),
    )
    return stars
