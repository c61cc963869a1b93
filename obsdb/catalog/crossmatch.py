"""One-to-one positional matching of two lists of sky positions."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """(N, 3) unit vectors: chord distances between them are exact at every position on
    the sky (no RA wrap, no pole), and a KD-tree on them answers "within r" directly."""
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _chord(radius_arcsec: float) -> float:
    return 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)


def match_positions(ra1, dec1, ra2, dec2, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i in list 1, j in list 2) closer than ``radius_arcsec``, each index used once.

    Closest pairs are taken first, so two detections near one source do not both claim it:
    the nearer wins and the other stays unmatched (it becomes a new source or is a blend).

    Returns
    -------
    i, j : ndarray of int
    separation_arcsec : ndarray of float
    """
    empty = np.array([], dtype=int)
    if len(ra1) == 0 or len(ra2) == 0:
        return empty, empty, np.array([])
    v1, v2 = unit_vectors(ra1, dec1), unit_vectors(ra2, dec2)
    k = min(4, len(ra2))
    chord, j = cKDTree(v2).query(v1, k=k, distance_upper_bound=_chord(radius_arcsec))
    chord, j = chord.reshape(len(ra1), k), j.reshape(len(ra1), k)
    i = np.repeat(np.arange(len(ra1)), k)
    chord, j = chord.ravel(), j.ravel()
    found = np.isfinite(chord)  # misses come back as inf with j == len(ra2)
    i, j, chord = i[found], j[found], chord[found]
    order = np.argsort(chord, kind="stable")
    used1 = np.zeros(len(ra1), dtype=bool)
    used2 = np.zeros(len(ra2), dtype=bool)
    keep = []
    for k in order:
        if not used1[i[k]] and not used2[j[k]]:
            used1[i[k]] = used2[j[k]] = True
            keep.append(k)
    keep = np.asarray(keep, dtype=int)
    sep = np.degrees(2.0 * np.arcsin(np.clip(chord[keep] / 2.0, 0, 1))) * 3600.0
    return i[keep].astype(int), j[keep].astype(int), sep
