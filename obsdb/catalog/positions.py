"""Sky positions typed by people: decimal degrees or sexagesimal."""

from __future__ import annotations

import math

from astropy import units as u
from astropy.coordinates import Angle


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_position(ra_text: str, dec_text: str) -> tuple[float, float]:
    """(ra, dec) in degrees from '10.5' '-3.2', '00:42:44.3' '+41:16:09', '0h42m44s' '41d16m'.

    A bare number is degrees for both; RA with separators is hours (as observers write it).
    Raises ValueError with what was wrong.
    """
    ra_text, dec_text = str(ra_text).strip(), str(dec_text).strip()
    ra = _number(ra_text)
    dec = _number(dec_text)
    try:
        if ra is None:
            unit = u.deg if "d" in ra_text.lower() else u.hourangle
            ra = Angle(ra_text.replace(" ", ":"), unit=unit).degree
        if dec is None:
            dec = Angle(dec_text.replace(" ", ":"), unit=u.deg).degree
    except (ValueError, u.UnitsError) as exc:
        raise ValueError(f"cannot read the position {ra_text!r} {dec_text!r}: {exc}") from None
    if not 0.0 <= ra < 360.0 and not math.isclose(ra, 360.0):
        raise ValueError(f"RA must be between 0 and 360 degrees (or 0-24 h), got {ra_text!r}")
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"Dec must be between -90 and +90 degrees, got {dec_text!r}")
    return float(ra) % 360.0, float(dec)
