"""Times of a measurement: mid-exposure MJD (UTC) and barycentric BJD_TDB.

Everything comes from the IERS tables astropy-iers-data ships and astropy's built-in
ephemeris: nothing is downloaded while the pipeline runs.
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy import constants as const
from astropy.coordinates import EarthLocation, get_body_barycentric
from astropy.time import Time
from astropy.utils import iers

# Never reach for the network: the bundled IERS-B table and the leap seconds of
# astropy-iers-data are enough for BJD at the milli-second level.
iers.conf.auto_download = False
iers.conf.auto_max_age = None


def site_location(lat_deg: float | None, lon_deg: float | None, height_m: float | None) -> EarthLocation | None:
    """An EarthLocation for a site (longitude east positive), or None when unknown."""
    if lat_deg is None or lon_deg is None:
        return None
    return EarthLocation.from_geodetic(lon_deg * u.deg, lat_deg * u.deg, (height_m or 0.0) * u.m)


def bjd_tdb(mjd_utc: float | None, ra_deg, dec_deg, location: EarthLocation | None) -> np.ndarray | None:
    """BJD_TDB of one instant (a frame's mid-exposure) seen from ``location`` towards each
    (ra, dec).

    The observatory's barycentric position is computed once per frame and projected on
    every star's direction (what ``Time.light_travel_time`` does, without building one
    Time and one SkyCoord per star: a thousand stars cost 1 ms instead of 0.7 s). Returns
    None when the site is unknown (the Earth-centre correction alone would be off by up
    to 21 ms, and a wrong number is worse than none).
    """
    if location is None or mjd_utc is None:
        return None
    t = Time(mjd_utc, format="mjd", scale="utc", location=location)
    earth = get_body_barycentric("earth", t, ephemeris="builtin")
    site = location.get_gcrs(t).cartesian.without_differentials()
    r = (earth + site).xyz.to_value(u.m)
    ra = np.radians(np.atleast_1d(np.asarray(ra_deg, dtype=float)))
    dec = np.radians(np.atleast_1d(np.asarray(dec_deg, dtype=float)))
    n = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    ltt_days = (r @ n) / const.c.to_value(u.m / u.s) / 86400.0
    return t.tdb.jd + ltt_days
