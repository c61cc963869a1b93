"""Measurements contaminated by catalog neighbours are flagged BLENDED."""

import numpy as np

from obsdb.photometry import flags as F
from obsdb.photometry.blends import catalog_blends, moffat_surface_brightness


def test_moffat_surface_brightness_integrates_to_one():
    r = np.linspace(0, 200, 200_001)
    total = np.trapezoid(2 * np.pi * r * moffat_surface_brightness(r, 3.0, 3.0), r)
    assert abs(total - 1.0) < 1e-3


def test_bright_neighbour_flags_a_faint_star_but_not_the_reverse():
    # star 0 (mag 17) with star 1 (mag 14) 7 px away; aperture 4.5 px, FWHM 3 px
    cat_x, cat_y, cat_mag = np.array([100.0, 107.0, 300.0]), np.array([100.0, 100.0, 300.0]), np.array([17, 14, 15.0])
    flags = catalog_blends([100.0, 107.0, 300.0], [100.0, 100.0, 300.0], [0, 1, 2], cat_x, cat_y, cat_mag, 4.5, 3.0)
    assert list(flags) == [F.BLENDED, 0, 0]


def test_far_or_faint_neighbours_do_not_flag():
    cat_x, cat_y, cat_mag = np.array([100.0, 130.0, 104.0]), np.array([100.0, 100.0, 100.0]), np.array([15, 12, 21.0])
    flags = catalog_blends([100.0], [100.0], [0], cat_x, cat_y, cat_mag, 4.5, 3.0)
    assert flags[0] == 0


def test_a_detection_without_its_own_catalog_star_is_a_blend_when_one_is_inside():
    flags = catalog_blends([100.0, 200.0], [100.0, 200.0], [-1, -1], np.array([101.0]), np.array([100.0]),
                           np.array([18.0]), 4.5, 3.0)
    assert list(flags) == [F.BLENDED, 0]
