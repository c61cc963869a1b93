"""HEALPix indexing of positions on the sky, shared by every table with a ``healpix`` column.

Every such column holds the **nested** HEALPix index at order :data:`ORDER` (16: nside
65536, 12 × 4**16 ≈ 5.2e10 pixels of 3.2 arcsec, so a ``bigint``), as astropy-healpix's
``lonlat_to_healpix`` computes it (:func:`healpix_index`). A cone search is a handful of
``healpix BETWEEN lo AND hi`` index range scans followed by an exact distance test:

- :func:`cone_ranges` picks a coarse order from the radius (:func:`coarse_order`: pixels
  a quarter to half the radius across), takes every coarse pixel whose centre lies within
  ``radius + max_pixrad`` of the cone's centre (:func:`coarse_pixels`; a pixel touching
  the cone has its centre that close, see :func:`max_pixrad`) and turns each coarse
  pixel ``p`` of order ``k`` into the fine-order range ``p << 2(ORDER-k)`` …
  ``((p + 1) << 2(ORDER-k)) - 1``: in the nested scheme the descendants of a pixel are one
  contiguous block of indices. Adjacent blocks are merged.
- The SQL function ``obsdb_healpix_ranges(ra, dec, radius_deg)`` (migration 0003) returns
  the same ranges (same steps, same floating-point operations; tested on thousands of
  cones), and ``obsdb_healpix_ang2pix(ra, dec)`` the same index as :func:`healpix_index`.
  Another table with a ``healpix`` column of this order joins on them the same way.

The coarse pixels are not astropy-healpix's ``cone_search_lonlat``: it misses pixels
that overlap the cone when the radius is under about half a pixel
(astropy/astropy-healpix#287; in our tests a few cones in a thousand lost a pixel, some
holding points at 1 % of the radius from the centre).

Why order 16: the fine order only matters for cones smaller than a fine pixel, i.e.
cross-matching radii of an arcsecond or two; at 3.2 arcsec such a cone touches a few
fine pixels, so a finer order would add ranges (index descents) without reading fewer
rows, while a coarser one (order 14, 13 arcsec) would read ~16 times the area of a
1 arcsec cone. Indices stay within 36 bits, far from any precision limit of the
``double`` arithmetic in ``ang2pix`` (exact up to order 29).

All ranges are **inclusive** at both ends, as ``BETWEEN`` is.
"""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
from astropy_healpix import HEALPix

ORDER = 16
"""HEALPix order of every ``healpix`` column (nested ordering)."""

NSIDE = 1 << ORDER
NPIX = 12 * NSIDE * NSIDE

# Pixel side at order 0, sqrt(4π / 12) radians (58.6°); order k: this / 2**k.
_PIXSIZE_0 = math.sqrt(math.pi / 3.0)

# The coarse order is the finest whose pixel side is at least radius / COARSE_FACTOR.
# Over random cones of 1" to 2° (measured with coarse_pixels): factor 1 reads a median
# 6.4 times the cone's area through 5 ranges (9 coarse pixels); factor 2, 3.3 times
# through 7 ranges (17 pixels); factor 4, 2.0 times through 10 ranges (40 pixels).
# Rows read cost more than ranges on a dense catalog, so 4; the SQL side enumerates the
# pixels at about 4 µs each.
COARSE_FACTOR = 4.0

_hp_cache: dict[tuple[int, str], HEALPix] = {}


def _healpix(order: int) -> HEALPix:
    hp = _hp_cache.get((order, "nested"))
    if hp is None:
        hp = _hp_cache[(order, "nested")] = HEALPix(nside=1 << order, order="nested")
    return hp


def healpix_index(ra, dec, order: int = ORDER) -> np.ndarray:
    """Nested HEALPix index of each position at ``order``.

    Parameters
    ----------
    ra, dec : array_like
        ICRS right ascension and declination in degrees (any RA, wrapped to [0, 360)).
    order : int
        HEALPix order (default :data:`ORDER`).

    Returns
    -------
    numpy.ndarray of int64
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if ra.size and not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise ValueError("healpix_index needs finite RA and Dec")
    if dec.size and (np.nanmax(dec) > 90.0 or np.nanmin(dec) < -90.0):
        raise ValueError("healpix_index: Dec outside [-90, 90]")
    idx = _healpix(order).lonlat_to_healpix(ra * u.deg, dec * u.deg)
    return np.asarray(idx, dtype=np.int64)


def coarse_order(radius_deg: float, order: int = ORDER) -> int:
    """The HEALPix order at which a cone of ``radius_deg`` is covered (0 … ``order``).

    The finest order whose pixel side is at least ``radius / COARSE_FACTOR``, i.e. about
    ``COARSE_FACTOR`` to ``2 × COARSE_FACTOR`` pixels across the radius. The SQL function
    ``obsdb_healpix_coarse_order`` computes the same, with the same floating-point steps.
    """
    if radius_deg <= 0.0:
        return order
    k = math.floor(math.log((_PIXSIZE_0 * COARSE_FACTOR) / math.radians(radius_deg)) / math.log(2.0))
    return max(0, min(order, k))


def max_pixrad(order: int) -> float:
    """Largest angular distance (radians) from a pixel's centre to any point of the pixel.

    HEALPix's ``max_pixrad``: the distance from the centre of the equatorial-belt pixel
    next to a base-pixel corner to that corner, where pixels are most stretched.
    ``tests/test_refcat.py`` checks, over every pixel of orders 0-6 with densely sampled
    boundaries, that no point of a pixel is farther from its centre. The SQL function
    ``obsdb_healpix_max_pixrad`` computes the same, with the same floating-point steps.
    """
    n = float(1 << order)
    za = 2.0 / 3.0
    sa = math.sqrt((1.0 - za) * (1.0 + za))
    pa = math.pi / (4.0 * n)
    ax, ay = sa * math.cos(pa), sa * math.sin(pa)
    t1 = (1.0 - 1.0 / n) * (1.0 - 1.0 / n)
    zb = 1.0 - t1 / 3.0
    sb = math.sqrt((1.0 - zb) * (1.0 + zb))
    c1, c2, c3 = ay * zb, za * sb - ax * zb, -(ay * sb)
    return math.atan2(math.sqrt(c1 * c1 + c2 * c2 + c3 * c3), ax * sb + za * zb)


def _ring_above(z: float, n: int) -> int:
    """Number of the last ring north of (or at) ``z``: 0 … 4n-1 (HEALPix ``ring_above``)."""
    az = abs(z)
    if az <= 2.0 / 3.0:
        return int(n * (2.0 - 1.5 * z))
    iring = int(n * math.sqrt(3.0 * (1.0 - az)))
    return iring if z > 0 else 4 * n - iring - 1


def coarse_pixels(ra: float, dec: float, radius_deg: float, k: int) -> np.ndarray:
    """Nested pixels of order ``k`` that may hold a point of the cone (a superset).

    Every pixel whose centre lies within ``radius + max_pixrad(k)`` of the cone's centre:
    a pixel that touches the cone has all its points within ``max_pixrad`` of its centre,
    so its centre is within that distance. Pixel centres lie on HEALPix rings; for each
    ring crossing the enlarged cone the centres within its longitude span are listed
    (HEALPix's inclusive ``query_disc``). ``obsdb_healpix_ranges`` does the same in SQL.

    Not astropy-healpix's ``cone_search_lonlat``: it misses pixels that overlap the cone
    when the radius is below about half a pixel (astropy/astropy-healpix#287), a few
    cones in a thousand in our tests.
    """
    n = 1 << k
    big_r = math.radians(radius_deg) + 1.001 * max_pixrad(k) + 1e-12
    if big_r >= math.pi:
        return np.arange(12 * n * n, dtype=np.int64)
    lat = math.radians(dec)
    z0, s0 = math.sin(lat), math.cos(lat)
    phi0 = math.radians(ra)
    theta0 = math.pi / 2.0 - lat
    cos_r = math.cos(big_r)
    i1 = max(1, _ring_above(math.cos(max(0.0, theta0 - big_r)), n))
    i2 = min(4 * n - 1, _ring_above(math.cos(min(math.pi, theta0 + big_r)), n) + 1)
    lons: list[np.ndarray] = []
    lats: list[np.ndarray] = []
    for i in range(i1, i2 + 1):
        if i < n:
            z, npix, off = 1.0 - float(i * i) / (3.0 * n * n), 4 * i, 0.5
        elif i <= 3 * n:
            z, npix, off = float(2 * n - i) * 2.0 / (3.0 * n), 4 * n, (0.5 if (i - n) % 2 == 0 else 0.0)
        else:
            m = 4 * n - i
            z, npix, off = -(1.0 - float(m * m) / (3.0 * n * n)), 4 * m, 0.5
        st = math.sqrt((1.0 - z) * (1.0 + z))
        if st * s0 > 0.0:
            x = (cos_r - z * z0) / (st * s0)
        else:
            x = -2.0 if z * z0 >= cos_r else 2.0
        if x > 1.0:
            continue
        if x <= -1.0:
            jlo, jhi = 0, npix - 1
        else:
            dphi = math.acos(x)
            jlo = math.ceil((phi0 - dphi) * npix / (2.0 * math.pi) - off)
            jhi = math.floor((phi0 + dphi) * npix / (2.0 * math.pi) - off)
            if jhi - jlo + 1 >= npix:
                jlo, jhi = 0, npix - 1
        if jhi < jlo:
            continue
        j = np.arange(jlo, jhi + 1, dtype=np.int64) % npix
        lons.append((j + off) * (2.0 * math.pi / npix))
        lats.append(np.full(j.size, math.asin(z)))
    if not lons:
        return np.empty(0, dtype=np.int64)
    idx = _healpix(k).lonlat_to_healpix(np.concatenate(lons) * u.rad, np.concatenate(lats) * u.rad)
    return np.unique(np.asarray(idx, dtype=np.int64))


def pixels_to_ranges(pixels, pixel_order: int, order: int = ORDER) -> list[tuple[int, int]]:
    """Merge pixels of ``pixel_order`` into sorted, disjoint inclusive ranges at ``order``.

    In the nested scheme the descendants at ``order`` of pixel ``p`` are exactly the
    indices ``p << 2(order - pixel_order)`` … ``((p + 1) << 2(order - pixel_order)) - 1``.
    """
    pix = np.unique(np.asarray(pixels, dtype=np.int64))
    if pix.size == 0:
        return []
    shift = 2 * (order - pixel_order)
    # A new range starts wherever a pixel is not the previous one plus one.
    breaks = np.flatnonzero(np.diff(pix) != 1) + 1
    starts = pix[np.concatenate(([0], breaks))]
    ends = pix[np.concatenate((breaks - 1, [pix.size - 1]))]
    return [(int(a) << shift, ((int(b) + 1) << shift) - 1) for a, b in zip(starts, ends, strict=True)]


def cone_ranges(ra: float, dec: float, radius_deg: float, order: int = ORDER) -> list[tuple[int, int]]:
    """Inclusive index ranges at ``order`` covering the cone (a superset of it).

    The coarse pixels of :func:`coarse_pixels` at :func:`coarse_order`, shifted to
    ``order`` and merged; the SQL function ``obsdb_healpix_ranges`` returns the same
    ranges.

    Parameters
    ----------
    ra, dec : float
        Centre, degrees.
    radius_deg : float
        Radius, degrees (0 … 180).

    Returns
    -------
    list of (lo, hi)
        Sorted, disjoint and non-adjacent; a position is a candidate when
        ``lo <= healpix <= hi`` for one of them.
    """
    if not (math.isfinite(ra) and math.isfinite(dec) and math.isfinite(radius_deg)):
        raise ValueError("cone_ranges needs a finite centre and radius")
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"cone_ranges: Dec {dec} outside [-90, 90]")
    if radius_deg < 0.0:
        raise ValueError(f"cone_ranges: negative radius {radius_deg}")
    if not 0 <= order <= 29:
        raise ValueError(f"HEALPix order {order} outside 0..29")
    k = coarse_order(radius_deg, order)
    return pixels_to_ranges(coarse_pixels(ra, dec, radius_deg, k), k, order)


def angular_separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance in degrees (haversine: accurate at small separations).

    The same formula as the SQL function ``obsdb_ang_sep_deg``.
    """
    r1, d1, r2, d2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))
