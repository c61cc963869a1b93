"""A first guess at a frame's WCS: from its header, or from a pointing and a pixel scale.

Nothing here raises on a junk header: a frame without a usable WCS (or scale) gets
``None``, and the caller falls back to the next source of a first guess (pointing and
scale, then alignment to a solved frame of the same field).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = ["pixel_scale_from_header", "wcs_from_header", "wcs_from_pointing"]

#: Arcseconds per radian; a pixel of p um behind f mm of focal length spans
#: ``ARCSEC_PER_RAD * p / (1000 f)`` arcsec.
ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0

#: Projections whose CD/PC matrix means what :func:`obsdb.astrometry.fit.fit_wcs` fits;
#: SIP and TPV only add a distortion on top of TAN.
_TAN_FAMILY = ("TAN", "TAN-SIP", "TPV")

#: Pixel scales outside this range (arcsec/pixel) are typos or placeholders, not optics.
_SCALE_RANGE = (0.01, 3600.0)

#: Keywords that give the pixel scale directly in arcsec/pixel, most specific first.
_SCALE_KEYS = ("SECPIX1", "SECPIX", "PIXSCAL1", "PIXSCALE")


def _as_header(header) -> fits.Header | None:
    if isinstance(header, fits.Header):
        return header
    if isinstance(header, Mapping):
        out = fits.Header()
        for key, value in header.items():
            # Header JSON (obsdb.ingest.headerjson) may hold values astropy refuses
            # (nested lists, None); they cannot be WCS keywords, so they are skipped.
            if isinstance(value, (str, int, float, bool)) and isinstance(key, str) and len(key) <= 8:
                try:
                    out[key] = value
                except (ValueError, KeyError):
                    continue
        return out
    return None


def _number(header, key) -> float | None:
    value = header.get(key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _projection(ctype: str) -> str:
    # 'RA---TAN-SIP' -> 'TAN-SIP'; the first four characters name the coordinate.
    return ctype[4:].lstrip("-").strip().upper()


def wcs_from_header(header) -> WCS | None:
    """The celestial TAN WCS a header carries, or None if it has no usable one.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        FITS header, or its JSON form (keyword -> value).

    Returns
    -------
    astropy.wcs.WCS or None
        A two-axis celestial WCS (TAN, with SIP or TPV distortion if the header has it),
        or None when the header lacks ``CTYPE1/2`` of the TAN family in RA/Dec, a
        reference point, or a scale (``CD``, or ``CDELT`` with ``PC``/``CROTA2``), or
        when its values are not finite or give a degenerate or implausible scale.
        Never raises on a malformed header.
    """
    hdr = _as_header(header)
    if hdr is None:
        return None
    ctypes = [str(hdr.get(f"CTYPE{i}", "")).upper() for i in (1, 2)]
    kinds = sorted(c[:4] for c in ctypes)
    if kinds != ["DEC-", "RA--"] or any(_projection(c) not in _TAN_FAMILY for c in ctypes):
        return None
    if any(_number(hdr, k) is None for k in ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")):
        return None
    has_cd = any(_number(hdr, f"CD{i}_{j}") is not None for i in (1, 2) for j in (1, 2))
    has_cdelt = _number(hdr, "CDELT1") is not None and _number(hdr, "CDELT2") is not None
    if not (has_cd or has_cdelt):
        return None
    try:
        with warnings.catch_warnings():
            # Headers of amateur software often trip astropy's fixers (dates, RADECSYS);
            # none of that matters for the celestial transformation.
            warnings.simplefilter("ignore")
            wcs = WCS(hdr, naxis=2, relax=True).celestial
            scale = wcs.pixel_scale_matrix
            dec = wcs.wcs.crval[wcs.wcs.lat]
    except Exception:  # noqa: BLE001 - junk headers raise anything; the contract is None
        return None
    if not (wcs.has_celestial and np.all(np.isfinite(scale)) and abs(dec) <= 90.0):
        return None
    arcsec = math.sqrt(abs(np.linalg.det(scale))) * 3600.0
    if not (_SCALE_RANGE[0] <= arcsec <= _SCALE_RANGE[1]):
        return None
    return wcs


def wcs_from_pointing(ra_deg: float, dec_deg: float, pixel_scale_arcsec: float, shape, *,
                      rotation_deg: float = 0.0, flip: bool = False) -> WCS:
    """A TAN WCS centred on the frame from a pointing, a pixel scale and a rotation.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Sky position of the frame centre (degrees, ICRS).
    pixel_scale_arcsec : float
        Pixel scale, arcsec/pixel (:func:`pixel_scale_from_header` reads it).
    shape : tuple of int
        Frame shape ``(ny, nx)`` as numpy gives it.
    rotation_deg : float, optional
        Camera angle as FITS ``CROTA2`` gives it: 0 puts north up and east left. A
        meridian flip of a German mount turns the frame by 180 degrees.
    flip : bool, optional
        Mirror image (east right when ``rotation_deg`` is 0), as behind a diagonal
        mirror or from a camera that reads its columns in reverse.

    Returns
    -------
    astropy.wcs.WCS
        ``CD = R(rotation) diag(-scale, scale)`` (``+scale`` in x with ``flip``),
        ``CRPIX`` at the frame centre ``((nx + 1) / 2, (ny + 1) / 2)``.

    Raises
    ------
    ValueError
        If the scale is not positive and finite, the declination is outside
        [-90, 90] or the shape is not two positive integers.
    """
    if not (math.isfinite(pixel_scale_arcsec) and pixel_scale_arcsec > 0):
        raise ValueError(f"pixel_scale_arcsec must be positive and finite, got {pixel_scale_arcsec!r}")
    if not (math.isfinite(dec_deg) and -90.0 <= dec_deg <= 90.0 and math.isfinite(ra_deg)):
        raise ValueError(f"pointing must be finite with dec in [-90, 90], got ({ra_deg!r}, {dec_deg!r})")
    ny, nx = _check_shape(shape)
    s = pixel_scale_arcsec / 3600.0
    rho = math.radians(rotation_deg)
    rot = np.array([[math.cos(rho), -math.sin(rho)], [math.sin(rho), math.cos(rho)]])
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    wcs.wcs.crval = [ra_deg % 360.0, dec_deg]
    wcs.wcs.cd = rot @ np.diag([s if flip else -s, s])
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    return wcs


def pixel_scale_from_header(header) -> float | None:
    """Pixel scale in arcsec/pixel from the optics keywords of a header, or None.

    ``SECPIX1``, ``SECPIX``, ``PIXSCAL1`` or ``PIXSCALE`` give it directly; otherwise
    ``FOCALLEN`` (mm) and ``XPIXSZ`` (um; the geometric mean with ``YPIXSZ`` when both
    are there) do. MaxIm DL, NINA and the SBFITSEXT convention write ``XPIXSZ`` *after*
    binning, so it is used as is, never multiplied by ``XBINNING``.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        FITS header, or its JSON form.

    Returns
    -------
    float or None
        None when nothing gives a scale, when ``FOCALLEN`` is 0 or absent (MaxIm
        writes 0 when the telescope is not configured) or when the result is outside
        0.01-3600 arcsec/pixel.
    """
    hdr = _as_header(header)
    if hdr is None:
        return None
    for key in _SCALE_KEYS:
        value = _number(hdr, key)
        if value is not None and _SCALE_RANGE[0] <= abs(value) <= _SCALE_RANGE[1]:
            return abs(value)
    focal = _number(hdr, "FOCALLEN")
    xpix = _number(hdr, "XPIXSZ")
    if focal is None or xpix is None or focal <= 0 or xpix <= 0:
        return None
    ypix = _number(hdr, "YPIXSZ")
    pix = math.sqrt(xpix * ypix) if ypix is not None and ypix > 0 else xpix
    scale = ARCSEC_PER_RAD * pix / (1000.0 * focal)
    return scale if _SCALE_RANGE[0] <= scale <= _SCALE_RANGE[1] else None


def _check_shape(shape) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (ny, nx), got {shape!r}") from None
    if ny <= 0 or nx <= 0:
        raise ValueError(f"shape must be two positive integers, got {shape!r}")
    return ny, nx
