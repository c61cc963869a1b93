"""Blends the detections cannot show: light of catalog neighbours inside an aperture.

Two stars closer than the seeing come out of detection as one source, and a brighter star
a few FWHM away still pours its wings into a fainter star's aperture: the magnitude comes
out too bright. The catalog knows the neighbours, so each measurement's contamination is
estimated from a Moffat profile of the frame's FWHM: the flux a neighbour of magnitude
m_n puts into the aperture is 10**(-0.4 (m_n - m)) times its profile averaged over the
aperture (on a fixed grid of points in the disc) times the aperture's area. Above
MAX_CONTAMINATION the measurement is BLENDED.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from obsdb.photometry import flags as F

# A blend changes the magnitude by more than about 10 mmag.
MAX_CONTAMINATION = 0.01
# Neighbours are looked for out to the aperture radius plus this many FWHM.
SEARCH_FWHM = 5.0


def moffat_surface_brightness(d, fwhm: float, beta: float) -> np.ndarray:
    """Fraction of a star's flux per square pixel at distance ``d`` (Moffat profile)."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return (beta - 1.0) / (np.pi * alpha**2) * (1.0 + (np.asarray(d) / alpha) ** 2) ** (-beta)


def _disc_grid(n: int = 9) -> np.ndarray:
    """Points on an n x n grid inside the unit disc (where the profile is averaged)."""
    g = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    gx, gy = np.meshgrid(g, g)
    inside = gx**2 + gy**2 <= 1.0
    return np.column_stack([gx[inside], gy[inside]])


_DISC = _disc_grid()


def catalog_blends(x, y, own_row, cat_x, cat_y, cat_mag, radius: float, fwhm: float, beta: float = 3.0) -> np.ndarray:
    """BLENDED for each measurement at (x, y) that catalog neighbours contaminate by more
    than MAX_CONTAMINATION of its own flux. ``own_row`` is each measurement's catalog star
    (-1: none); one without a catalog star is BLENDED when a catalog star lies inside its
    aperture (the detection is then likely the blend itself)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.zeros(len(x), dtype=np.int64)
    cat_x, cat_y, cat_mag = (np.asarray(a, float) for a in (cat_x, cat_y, cat_mag))
    usable = np.isfinite(cat_x) & np.isfinite(cat_y) & np.isfinite(cat_mag)
    if len(x) == 0 or not usable.any():
        return out
    if not (np.isfinite(beta) and beta > 1.0):
        beta = 3.0
    rows = np.flatnonzero(usable)
    tree = cKDTree(np.column_stack([cat_x[rows], cat_y[rows]]))
    own_row = np.asarray(own_row)
    reach = radius + SEARCH_FWHM * fwhm
    area = np.pi * radius**2
    for i, near in enumerate(tree.query_ball_point(np.column_stack([x, y]), r=reach)):
        near = rows[near]
        others = near[near != own_row[i]]
        if len(others) == 0:
            continue
        d = np.hypot(cat_x[others] - x[i], cat_y[others] - y[i])
        if own_row[i] < 0:
            if np.any(d <= radius):
                out[i] = F.BLENDED
            continue
        ratio = 10.0 ** (-0.4 * (cat_mag[others] - cat_mag[own_row[i]]))
        # distance from each neighbour to each grid point of the aperture
        gx = x[i] + radius * _DISC[:, 0]
        gy = y[i] + radius * _DISC[:, 1]
        dist = np.hypot(cat_x[others][:, None] - gx[None, :], cat_y[others][:, None] - gy[None, :])
        inside = np.minimum(moffat_surface_brightness(dist, fwhm, beta).mean(axis=1) * area, 1.0)
        if np.sum(ratio * inside) > MAX_CONTAMINATION:
            out[i] = F.BLENDED
    return out
