"""Blends the detections cannot show: catalog stars inside a measurement's aperture.

Two stars closer than the seeing come out of detection as one source; the aperture then
holds both, and the magnitude is too bright by up to 0.75 mag. The catalog knows both
stars, so a catalog star (other than the measurement's own) within the aperture and
bright enough to matter flags the measurement BLENDED.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from obsdb.photometry import flags as F

# A neighbour fainter than this (5 mag: 1 % of the flux) does not flag a blend.
MAX_DELTA_MAG = 5.0


def catalog_blends(x, y, own_row, cat_x, cat_y, cat_mag, radius: float) -> np.ndarray:
    """BLENDED for each measurement at (x, y) whose aperture of ``radius`` pixels holds a
    catalog star other than its own (``own_row``, -1: none) brighter than its own
    magnitude + MAX_DELTA_MAG; for a measurement without a catalog star, any catalog
    star inside the aperture (the detection is then likely the blend itself)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = np.zeros(len(x), dtype=np.int64)
    cat_mag = np.asarray(cat_mag, float)
    on_frame = np.isfinite(cat_x) & np.isfinite(cat_y) & np.isfinite(cat_mag)
    if len(x) == 0 or not on_frame.any():
        return out
    rows = np.flatnonzero(on_frame)
    tree = cKDTree(np.column_stack([np.asarray(cat_x)[rows], np.asarray(cat_y)[rows]]))
    own_row = np.asarray(own_row)
    for i, near in enumerate(tree.query_ball_point(np.column_stack([x, y]), r=radius)):
        if not near:
            continue
        near = rows[near]
        own = own_row[i]
        others = near[near != own]
        if len(others) == 0:
            continue
        limit = cat_mag[own] + MAX_DELTA_MAG if own >= 0 else np.inf
        if np.any(cat_mag[others] < limit):
            out[i] = F.BLENDED
    return out
