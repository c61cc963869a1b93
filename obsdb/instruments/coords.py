"""Angles in headers: pointing (RA, Dec), site (latitude, longitude, height), WCS.

Right ascension written sexagesimal ('01 24 17', '01:24:17.5', '1h24m17s') is in hours;
written as a number (or a numeric string) it is in degrees, as the FITS WCS convention
and NINA, ACP and LCO's BANZAI use. Declinations and site coordinates are degrees either
way. Longitudes are east-positive, as the FITS standard's OBSGEO-L, ASCOM's
``SiteLongitude`` (which MaxIm DL and ACP copy into SITELONG: '-76 56 00' is 76°56' W)
and LCO's LONGITUD; a profile can say its software writes west-positive instead.
"""

from __future__ import annotations

import math
import re
from typing import Any

from astropy import units as u
from astropy.coordinates import Angle

from obsdb.instruments.values import as_float

_CELESTIAL_CTYPES = ("RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT", "SLON", "SLAT", "HLON", "HLAT")


def parse_angle(value: Any, sexagesimal_unit: u.UnitBase) -> float | None:
    """Degrees from a number (degrees) or a string.

    Strings with unit letters are read with them ('1h24m17s', '-76d56m00s'); fields
    separated by blanks or colons ('01 24 17', '+03:46:47.2') are sexagesimal in
    ``sexagesimal_unit``; a single number is degrees. None for text that is no angle.
    """
    number = as_float(value)
    if number is not None:
        return number
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        if re.search(r"\d\s*[hH]", text):
            return float(Angle(text, unit=u.hourangle).degree)
        if re.search(r"\d\s*[dD\u00b0]", text):
            return float(Angle(text, unit=u.deg).degree)
        fields = re.split(r"[\s:]+", text)
        if 2 <= len(fields) <= 3:
            return float(Angle(" ".join(fields), unit=sexagesimal_unit).degree)
    except Exception:
        return None
    return None


def parse_ra(value: Any) -> float | None:
    """RA in degrees: a number is degrees, sexagesimal text is hours."""
    return parse_angle(value, u.hourangle)


def parse_dec(value: Any) -> float | None:
    """Dec in degrees: numbers and sexagesimal text are both degrees."""
    return parse_angle(value, u.deg)


def precess_to_icrs(ra: float, dec: float, equinox: float) -> tuple[float, float]:
    """FK5 coordinates of the given Julian equinox (e.g. 2018.8 for 'JNow') in ICRS."""
    from astropy.coordinates import FK5, ICRS, SkyCoord
    from astropy.time import Time

    coord = SkyCoord(ra * u.deg, dec * u.deg, frame=FK5(equinox=Time(equinox, format="jyear")))
    icrs = coord.transform_to(ICRS())
    return float(icrs.ra.degree), float(icrs.dec.degree)


def geodetic_from_geocentric(x: float, y: float, z: float) -> tuple[float, float, float]:
    """(lat, lon east-positive, height m) on WGS84 from ITRS metres (OBSGEO-X/Y/Z)."""
    from astropy.coordinates import EarthLocation

    loc = EarthLocation.from_geocentric(x * u.m, y * u.m, z * u.m)
    geo = loc.to_geodetic("WGS84")
    return float(geo.lat.degree), float(geo.lon.degree), float(geo.height.to_value(u.m))


def normalize_lon(lon: float) -> float:
    """Longitude in (-180, 180]."""
    lon = math.fmod(lon, 360.0)
    if lon > 180:
        lon -= 360
    elif lon <= -180:
        lon += 360
    return lon


def is_celestial_ctype(ctype: Any) -> bool:
    return isinstance(ctype, str) and ctype.strip().upper()[:4] in _CELESTIAL_CTYPES
