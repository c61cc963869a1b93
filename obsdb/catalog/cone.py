"""Cone searches on a reference catalog, from Python (for the astrometry and photometry).

The query is the one ``obsdb_refcat_cone`` runs in SQL, ``obsdb_refcat_stars_in_ranges``:
one index range scan of ``(refcat_id, healpix)`` per HEALPix range, then the exact
haversine distance ``obsdb_ang_sep_deg``. The ranges come from
:func:`obsdb.catalog.healpix.cone_ranges`, identical to ``obsdb_healpix_ranges``'s. Values
only ever travel as bound parameters.
"""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
from astropy.table import Table
from astropy.time import Time
from sqlalchemy import text
from sqlalchemy.orm import Session

from obsdb.catalog.healpix import angular_separation_deg, cone_ranges
from obsdb.catalog.refcat import RefcatError, get_refcat

_MAS_PER_DEG = 3.6e6

_CONE_SQL = text(
    "SELECT star_id, catalog_id, ra, dec, pm_ra, pm_dec, mag, mag_err "
    "FROM obsdb_refcat_stars_in_ranges(:refcat_id, CAST(:lo AS bigint[]), CAST(:hi AS bigint[]), "
    "CAST(:ra AS float8), CAST(:dec AS float8), CAST(:radius AS float8))"
)


def _julian_year(epoch) -> float:
    if isinstance(epoch, Time):
        return float(epoch.jyear)
    value = float(epoch)
    if not (math.isfinite(value) and 1000.0 < value < 3000.0):
        raise ValueError(f"epoch {epoch!r} is not a Julian year like 2024.5 (or an astropy Time)")
    return value


def propagate(ra, dec, pm_ra, pm_dec, years) -> tuple[np.ndarray, np.ndarray]:
    """Positions moved by their proper motion over ``years`` (NaN motion: not moved).

    ``pm_ra`` includes cos(dec), both in mas/yr. The motion is a step along the tangent
    plane, renormalised onto the sphere: exact enough for any real proper motion over
    centuries, and well-behaved at the poles (no 1/cos dec).
    """
    ra = np.radians(np.asarray(ra, dtype=float))
    dec = np.radians(np.asarray(dec, dtype=float))
    mu_a = np.radians(np.nan_to_num(np.asarray(pm_ra, dtype=float)) / _MAS_PER_DEG) * years
    mu_d = np.radians(np.nan_to_num(np.asarray(pm_dec, dtype=float)) / _MAS_PER_DEG) * years
    ca, sa, cd, sd = np.cos(ra), np.sin(ra), np.cos(dec), np.sin(dec)
    x = cd * ca + mu_a * (-sa) + mu_d * (-sd * ca)
    y = cd * sa + mu_a * ca + mu_d * (-sd * sa)
    z = sd + mu_d * cd
    norm = np.sqrt(x * x + y * y + z * z)
    new_ra = np.degrees(np.arctan2(y, x)) % 360.0
    new_dec = np.degrees(np.arcsin(np.clip(z / norm, -1.0, 1.0)))
    return new_ra, new_dec


def cone_search(
    session: Session,
    catalog_name: str,
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    bands=None,
    epoch=None,
) -> Table:
    """Stars of a reference catalog within ``radius_deg`` of (ra, dec), nearest first.

    Parameters
    ----------
    session : Session
    catalog_name : str
        A loaded catalog (``obsdb refcat list``).
    ra, dec, radius_deg : float
        Centre and radius in degrees.
    bands : sequence of str, optional
        Bands to return (default: all of the catalog's).
    epoch : float or astropy.time.Time, optional
        Julian year (or Time) at which positions are wanted. When given and the catalog
        has proper motions, positions are moved to it (and the cone is applied to the
        moved positions); otherwise positions are at the catalog's epoch.

    Returns
    -------
    astropy.table.Table
        Columns ``id`` (``refcat_stars.star_id``), ``catalog_id``, ``ra``, ``dec`` (deg),
        ``pm_ra``, ``pm_dec`` (mas/yr, pm_ra includes cos dec; NaN when unknown), then
        ``<band>`` and ``<band>_err`` per band (mag; NaN = no measurement or no error),
        and ``sep`` (arcsec). ``meta`` holds ``catalog``, ``refcat_id``, ``bands`` and
        ``epoch`` (the epoch of the positions, None when the catalog has none).

    Raises
    ------
    RefcatError
        Unknown catalog or band.
    """
    if not (math.isfinite(ra) and math.isfinite(dec) and math.isfinite(radius_deg)) or radius_deg < 0:
        raise ValueError(f"cone ({ra}, {dec}, radius {radius_deg}) needs finite values and radius >= 0")
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"cone centre Dec {dec} outside -90..+90")
    ra = ra % 360.0
    catalog = get_refcat(session, catalog_name)
    all_bands = list(catalog.bands)
    wanted = all_bands if bands is None else list(bands)
    unknown = [b for b in wanted if b not in all_bands]
    if unknown:
        raise RefcatError(
            f"catalog {catalog.name!r} has no band {', '.join(unknown)}; its bands: {', '.join(all_bands) or 'none'}"
        )
    years = 0.0
    if epoch is not None and catalog.has_pm and catalog.epoch is not None:
        years = _julian_year(epoch) - catalog.epoch
    # Stars that move into the cone by the epoch were farther out at the catalog's epoch.
    margin = abs(years) * (catalog.max_pm or 0.0) / _MAS_PER_DEG
    search = min(radius_deg + margin * 1.01 + (1e-9 if margin else 0.0), 180.0)
    ranges = cone_ranges(ra, dec, search)
    rows = session.execute(
        _CONE_SQL,
        {"lo": [lo for lo, _ in ranges], "hi": [hi for _, hi in ranges], "refcat_id": catalog.id,
         "ra": ra, "dec": dec, "radius": search},
    ).all()
    n = len(rows)
    star_id = np.fromiter((r[0] for r in rows), np.int64, n)
    cat_id = np.array([r[1] if r[1] is not None else "" for r in rows], dtype=str) if n else np.array([], str)
    sra = np.fromiter((r[2] for r in rows), float, n)
    sdec = np.fromiter((r[3] for r in rows), float, n)
    pm_ra = np.fromiter((np.nan if r[4] is None else r[4] for r in rows), float, n)
    pm_dec = np.fromiter((np.nan if r[5] is None else r[5] for r in rows), float, n)
    nb = len(all_bands)
    mag = np.array([[np.nan if v is None else v for v in r[6]] for r in rows], dtype=float).reshape(n, nb)
    err = np.array([[np.nan if v is None else v for v in (r[7] or [None] * nb)] for r in rows],
                   dtype=float).reshape(n, nb)
    if years:
        sra, sdec = propagate(sra, sdec, pm_ra, pm_dec, years)
    sep = angular_separation_deg(ra, dec, sra, sdec)
    keep = sep <= radius_deg if years else np.ones(n, bool)
    order = np.lexsort((star_id[keep], sep[keep]))
    idx = np.flatnonzero(keep)[order]

    table = Table()
    table["id"] = star_id[idx]
    table["catalog_id"] = cat_id[idx]
    table["ra"] = sra[idx] * u.deg
    table["dec"] = sdec[idx] * u.deg
    table["pm_ra"] = pm_ra[idx] * (u.mas / u.yr)
    table["pm_dec"] = pm_dec[idx] * (u.mas / u.yr)
    for band in wanted:
        b = all_bands.index(band)
        table[band] = mag[idx, b] * u.mag
        table[f"{band}_err"] = err[idx, b] * u.mag
    table["sep"] = sep[idx] * 3600.0 * u.arcsec
    table.meta.update(
        catalog=catalog.name, refcat_id=catalog.id, bands=wanted,
        epoch=(catalog.epoch + years) if catalog.epoch is not None else None,
    )
    return table
