"""Measurement flag bits: one integer per measurement, 0 = clean (see DESIGN.md).

The bits are ORed: a measurement can be saturated and blended at once. They describe
the aperture actually reported, so the same star can carry different flags at different
radii (a neighbour at 5 px blends the 6 px aperture, not the 3 px one).
"""

from __future__ import annotations

__all__ = [
    "SATURATED", "EDGE", "BAD_PIXEL", "COSMIC_RAY", "BLENDED", "CENTROID_SHIFT", "LOW_SNR",
    "FORCED", "UNCALIBRATED", "NOT_CATALOG_TIED", "NAMES", "describe",
]

SATURATED = 1          #: a saturated pixel (mask bit 2, or value >= saturation) in the aperture
EDGE = 2               #: the aperture leaves the frame
BAD_PIXEL = 4          #: a bad pixel (mask bit 1) in the aperture, replaced by interpolation
COSMIC_RAY = 8         #: a cosmic-ray pixel (mask bit 4) in the aperture, replaced by interpolation
BLENDED = 16           #: another detected star lies inside the aperture radius
CENTROID_SHIFT = 32    #: the re-centred position moved more than the tolerance (input kept)
LOW_SNR = 64           #: flux / flux_err < 5
FORCED = 128           #: measured at a given position, not a detection
UNCALIBRATED = 256     #: the frame lacks a master (bias, dark or flat)
NOT_CATALOG_TIED = 512  #: magnitude relative only, not tied to a reference catalog

#: Bit value -> name, in bit order.
NAMES: dict[int, str] = {
    SATURATED: "SATURATED", EDGE: "EDGE", BAD_PIXEL: "BAD_PIXEL", COSMIC_RAY: "COSMIC_RAY",
    BLENDED: "BLENDED", CENTROID_SHIFT: "CENTROID_SHIFT", LOW_SNR: "LOW_SNR", FORCED: "FORCED",
    UNCALIBRATED: "UNCALIBRATED", NOT_CATALOG_TIED: "NOT_CATALOG_TIED",
}


def describe(flags: int) -> list[str]:
    """Names of the bits set in ``flags``, lowest bit first.

    Parameters
    ----------
    flags : int
        A measurement's flag integer (numpy integers accepted).

    Returns
    -------
    list of str
        For example ``["SATURATED", "BLENDED"]`` for 17; bits without a name appear as
        ``"BIT_<value>"``; an empty list for 0.

    Raises
    ------
    ValueError
        If ``flags`` is negative.
    """
    value = int(flags)
    if value < 0:
        raise ValueError(f"flags must be >= 0, got {value}")
    out = []
    bit = 1
    while bit <= value:
        if value & bit:
            out.append(NAMES.get(bit, f"BIT_{bit}"))
        bit <<= 1
    return out
