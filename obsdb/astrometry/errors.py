"""The one exception of obsdb.astrometry."""

from __future__ import annotations

__all__ = ["AstrometryError"]


class AstrometryError(Exception):
    """A frame could not be solved; the message says why and what the user can do.

    Raised for inputs that cannot be solved (too few stars, no catalog stars in the
    footprint) and for solutions that fail their checks (too few matches, rms or pixel
    scale not plausible). Programming errors (arrays of different lengths, a bad
    ``shape``) raise ``ValueError`` instead.
    """
