"""World coordinate systems: nominal, true and header (plate-solved with an error).

All WCS are pure gnomonic (TAN) without distortion, kept as plain dicts of FITS
keywords (floats) so that they round-trip exactly through JSON into the truth files:
the truth can rebuild exactly the WCS the pixels were rendered with.

Orientation: north up, east left (CDELT1 < 0), turned by the camera position angle
``rho`` as CROTA2 would (Calabretta & Greisen 2002, eq. 189).
"""

from __future__ import annotations

import json
import math

import numpy as np
from astropy.wcs import WCS

WCS_KEYS = ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2",
            "CD1_1", "CD1_2", "CD2_1", "CD2_2")


def tan_wcs_dict(size, ra_deg, dec_deg, scale_deg, rotation_deg, crpix=None):
    """TAN WCS keywords of a square frame centred (CRPIX) on its middle pixel.

    Parameters
    ----------
    size : int
        Frame side (px).
    ra_deg, dec_deg : float
        CRVAL: the sky position of the reference pixel.
    scale_deg : float
        Pixel scale, degrees per pixel.
    rotation_deg : float
        Position angle of the +y axis, east of north.
    crpix : tuple of float, optional
        1-based reference pixel; the frame centre ``(size + 1) / 2`` by default.
    """
    rho = math.radians(rotation_deg)
    if crpix is None:
        crpix = ((size + 1) / 2.0, (size + 1) / 2.0)
    return {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRPIX1": float(crpix[0]),
        "CRPIX2": float(crpix[1]),
        "CRVAL1": float(ra_deg % 360.0),
        "CRVAL2": float(dec_deg),
        "CD1_1": float(-scale_deg * math.cos(rho)),
        "CD1_2": float(-scale_deg * math.sin(rho)),
        "CD2_1": float(-scale_deg * math.sin(rho)),
        "CD2_2": float(scale_deg * math.cos(rho)),
    }


def wcs_from_dict(d) -> WCS:
    """astropy WCS from a keyword dict (or its JSON string)."""
    if isinstance(d, str):
        d = json.loads(d)
    w = WCS(naxis=2)
    w.wcs.ctype = [d["CTYPE1"], d["CTYPE2"]]
    w.wcs.crpix = [d["CRPIX1"], d["CRPIX2"]]
    w.wcs.crval = [d["CRVAL1"], d["CRVAL2"]]
    w.wcs.cd = [[d["CD1_1"], d["CD1_2"]], [d["CD2_1"], d["CD2_2"]]]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def world_to_pixel(d, ra, dec):
    """0-based pixel positions (x, y) of sky positions through a WCS dict."""
    x, y = wcs_from_dict(d).all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
    return x, y


def pixel_to_world(d, x, y):
    """Sky positions (ra, dec) in degrees of 0-based pixel positions."""
    ra, dec = wcs_from_dict(d).all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return ra, dec


def shifted_wcs(d, dx, dy, rot_deg):
    """WCS whose pixel p sees what ``d`` sees at ``c + (dx, dy) + R(rot) (p - c)``.

    ``c`` is the reference pixel and R the counter-clockwise rotation by ``rot_deg``.
    The new CRVAL is where ``d`` puts pixel ``c + (dx, dy)``. The CD matrix is fitted
    (least squares over the frame) rather than set to ``CD R``: moving the tangent point
    in right ascension turns the local north by ``dRA sin(dec)``, which would otherwise
    leave errors of a few hundredths of a pixel at the frame edges. Used for the true
    pointing (the mount missing the nominal centre) and for the header WCS (a stale
    plate solution); the relation then holds to ~1e-4 px.
    """
    cx, cy = d["CRPIX1"] - 1.0, d["CRPIX2"] - 1.0
    ra0, dec0 = pixel_to_world(d, cx + dx, cy + dy)
    t = math.radians(rot_deg)
    half = max(cx, cy, 1.0)
    g = np.linspace(-half, half, 7)
    px, py = (a.ravel() for a in np.meshgrid(g, g))
    qx = cx + dx + math.cos(t) * px - math.sin(t) * py
    qy = cy + dy + math.sin(t) * px + math.cos(t) * py
    ra, dec = pixel_to_world(d, qx, qy)
    # Intermediate world coordinates (deg) in the tangent plane at the new CRVAL.
    probe = dict(d, CRPIX1=1.0, CRPIX2=1.0, CRVAL1=float(ra0 % 360.0), CRVAL2=float(dec0),
                 CD1_1=1.0, CD1_2=0.0, CD2_1=0.0, CD2_2=1.0)
    xi, eta = world_to_pixel(probe, ra, dec)
    a = np.column_stack([px, py])
    row1, *_ = np.linalg.lstsq(a, xi, rcond=None)
    row2, *_ = np.linalg.lstsq(a, eta, rcond=None)
    out = dict(d)
    out.update({"CRVAL1": float(ra0 % 360.0), "CRVAL2": float(dec0),
                "CD1_1": float(row1[0]), "CD1_2": float(row1[1]),
                "CD2_1": float(row2[0]), "CD2_2": float(row2[1])})
    return out


def format_ra(ra_deg, decimals=1):
    """Right ascension as MaxIm writes OBJCTRA: ``'HH MM SS.s'``."""
    total = round((ra_deg % 360.0) / 15.0 * 3600.0, decimals) % 86400.0
    h, rem = divmod(total, 3600.0)
    m, s = divmod(rem, 60.0)
    width = 3 + decimals if decimals else 2
    return f"{int(h):02d} {int(m):02d} {s:0{width}.{decimals}f}"


def format_dec(dec_deg, decimals=0):
    """Declination as MaxIm writes OBJCTDEC and SITELAT: ``'+DD MM SS'``."""
    sign = "-" if dec_deg < 0 else "+"
    total = round(abs(dec_deg) * 3600.0, decimals)
    d, rem = divmod(total, 3600.0)
    m, s = divmod(rem, 60.0)
    width = 3 + decimals if decimals else 2
    return f"{sign}{int(d):02d} {int(m):02d} {s:0{width}.{decimals}f}"


def format_lon(lon_deg):
    """Site longitude as MaxIm writes SITELONG: ``'-110 54 00'`` (east positive)."""
    sign = "-" if lon_deg < 0 else "+"
    total = round(abs(lon_deg) * 3600.0)
    d, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{int(d):03d} {int(m):02d} {int(s):02d}"
