"""Calibration science: combine frames, build masters, reduce frames, write products.

Pure functions on arrays and numbers; no database. The calibration daemon decides which
frames and masters to use and records the results.

- :mod:`~obsdb.calibration.combine`: memory-bounded sigma-clipped mean of many frames.
- :mod:`~obsdb.calibration.masters`: master bias, dark (and dark rate), flat.
- :mod:`~obsdb.calibration.badpixels`: hot, low-response and unstable pixels.
- :mod:`~obsdb.calibration.reduce`: overscan, trim, bias, dark, flat, saturation, cosmics.
- :mod:`~obsdb.calibration.cosmics`: cosmic-ray mask (astroscrappy).
- :mod:`~obsdb.calibration.products`: SCI/ERR/MASK FITS, written atomically.
"""

from obsdb.calibration.combine import CombineResult, FrameStack, combine_frames, combine_stack, load_frame
from obsdb.calibration.cosmics import CosmicRayDetector, mask_cosmics
from obsdb.calibration.masters import MasterFrame, make_master_bias, make_master_dark, make_master_flat
from obsdb.calibration.products import read_product, write_master, write_product, write_reduced
from obsdb.calibration.reduce import (
    DEFAULT_STEPS,
    MASK_BAD,
    MASK_COSMIC,
    MASK_SATURATED,
    ReducedFrame,
    dark_for_exposure,
    flat_correct,
    mask_saturation,
    parse_section,
    reduce_frame,
    subtract_bias,
    subtract_dark,
    subtract_overscan,
    trim,
)

__all__ = [
    "DEFAULT_STEPS", "MASK_BAD", "MASK_COSMIC", "MASK_SATURATED", "CombineResult", "CosmicRayDetector",
    "FrameStack", "MasterFrame", "ReducedFrame", "combine_frames", "combine_stack", "dark_for_exposure",
    "flat_correct", "load_frame", "make_master_bias", "make_master_dark", "make_master_flat", "mask_cosmics",
    "mask_saturation", "parse_section", "read_product", "reduce_frame", "subtract_bias", "subtract_dark",
    "subtract_overscan", "trim", "write_master", "write_product", "write_reduced",
]
