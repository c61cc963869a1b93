"""Reduction of one raw frame: small steps, run in the order configuration gives.

Each step is a verb-first function returning a new array; :func:`reduce_frame` runs the
steps named in ``steps`` in that order, carries the variance and the mask along, and
records what it applied and which masters were missing (a frame without a flat is still
reduced, and says so).

Mask bits of a reduced frame (uint8, ORed; 0 = good):

====  =================================================================
1     bad pixel according to a master (hot, low response, unstable, no data)
2     saturated in the raw frame
4     cosmic ray
====  =================================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.stats import sigma_clipped_stats

from obsdb.calibration.cosmics import CosmicRayDetector

__all__ = ["MASK_BAD", "MASK_COSMIC", "MASK_SATURATED", "DEFAULT_STEPS", "ReducedFrame", "dark_for_exposure",
           "flat_correct", "mask_saturation", "parse_section", "reduce_frame", "subtract_bias",
           "subtract_dark", "subtract_overscan", "trim"]

MASK_BAD = 1
MASK_SATURATED = 2
MASK_COSMIC = 4

#: Default order. 'saturation' is measured on the raw values wherever it is listed (its
#: mask is trimmed along); 'cosmics' needs the calibrated frame, so it comes last.
DEFAULT_STEPS = ("saturation", "overscan", "trim", "bias", "dark", "flat", "cosmics")
_KNOWN_STEPS = frozenset(DEFAULT_STEPS)

_SECTION = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


@dataclass(frozen=True)
class ReducedFrame:
    """A calibrated frame.

    Attributes
    ----------
    sci : ndarray of float32
        Calibrated image (ADU).
    err : ndarray of float32
        1-sigma uncertainty of ``sci`` (ADU): read noise, Poisson noise of the signal and
        dark current, and the errors of the masters used.
    mask : ndarray of uint8
        Bit flags, see the module notes (1 bad pixel, 2 saturated, 4 cosmic ray).
    steps_applied : list of str
        Steps run, in order.
    missing : list of str
        Masters that were wanted by a step but not given ('bias', 'dark', 'flat').
    stats : dict
        Counts of flagged pixels and how the dark was scaled.
    """

    sci: np.ndarray
    err: np.ndarray
    mask: np.ndarray
    steps_applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def parse_section(section: str, shape: tuple[int, int] | None = None) -> tuple[slice, slice]:
    """Turn a FITS section ``'[x1:x2,y1:y2]'`` (1-based, inclusive) into numpy slices.

    Parameters
    ----------
    section : str
        E.g. ``'[1:2048,1:2048]'``; reversed ranges (``'[2048:1,...]'``, a readout
        direction) give the same pixels.
    shape : tuple of int, optional
        ``(ny, nx)`` of the image; if given, the section must lie inside it.

    Returns
    -------
    tuple of slice
        ``(rows, columns)``, so that ``data[parse_section(s)]`` is the section.
    """
    match = _SECTION.match(section) if isinstance(section, str) else None
    if match is None:
        raise ValueError(f"not a FITS section of the form '[x1:x2,y1:y2]': {section!r}")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if min(x1, x2, y1, y2) < 1:
        raise ValueError(f"FITS sections are 1-based; {section!r} has a 0")
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if shape is not None and (y2 > shape[0] or x2 > shape[1]):
        raise ValueError(f"section {section!r} lies outside an image of {shape[1]}x{shape[0]} (nx x ny)")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def _as_float32(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D image, got {data.ndim} dimensions")
    return data.astype(np.float32, copy=True)


def subtract_overscan(data: np.ndarray, overscan_section: str, *, per_line: bool = False) -> np.ndarray:
    """Subtract the level measured in the overscan region.

    Parameters
    ----------
    data : ndarray
        Raw frame, overscan included.
    overscan_section : str
        FITS section of the overscan, e.g. ``'[2049:2080,1:2048]'``.
    per_line : bool, optional
        If False (default), subtract one sigma-clipped median of the whole region: the read
        noise of a per-line estimate over a few tens of columns would otherwise be added
        to every row. If True, subtract the median of each line across the strip (rows
        for a strip of columns, columns for a strip of rows), for a bias that drifts
        during readout.

    Returns
    -------
    ndarray of float32
        The whole frame (trim separately) minus the overscan level.
    """
    out = _as_float32(data)
    rows, cols = parse_section(overscan_section, out.shape)
    region = out[rows, cols]
    if region.size == 0:
        raise ValueError(f"overscan section {overscan_section!r} is empty")
    if not per_line:
        _, median, _ = sigma_clipped_stats(region, sigma=3.0, maxiters=5)
        out -= np.float32(median)
        return out
    if region.shape[0] >= region.shape[1]:  # a strip of columns: one value per row
        if rows != slice(0, out.shape[0]):
            raise ValueError("a per-line overscan of columns must span all rows")
        out -= np.median(region, axis=1, keepdims=True).astype(np.float32)
    else:  # a strip of rows: one value per column
        if cols != slice(0, out.shape[1]):
            raise ValueError("a per-line overscan of rows must span all columns")
        out -= np.median(region, axis=0, keepdims=True).astype(np.float32)
    return out


def trim(data: np.ndarray, trim_section: str) -> np.ndarray:
    """Return a copy of the ``trim_section`` (FITS, 1-based) of ``data``."""
    data = np.asarray(data)
    return data[parse_section(trim_section, data.shape)].copy()


def _check_shape(name: str, image: np.ndarray, shape: tuple[int, ...]) -> None:
    if np.shape(image) != shape:
        raise ValueError(f"{name} has shape {np.shape(image)}, the frame {shape}: "
                         "masters must match the trimmed frame")


def subtract_bias(data: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Return ``data - bias`` (float32)."""
    out = _as_float32(data)
    _check_shape("bias", bias, out.shape)
    out -= bias
    return out


def dark_for_exposure(exptime: float, *, dark: np.ndarray | None = None, dark_exptime: float | None = None,
                      dark_rate: np.ndarray | None = None, rtol: float = 1e-3) -> tuple[np.ndarray, float, str]:
    """Choose the dark current to subtract from an exposure of ``exptime`` seconds.

    A master dark of the same exposure time is preferred (it also holds any exposure-
    independent residual such as amplifier glow); otherwise the dark rate times the
    exposure time; otherwise the master dark scaled by ``exptime / dark_exptime``.

    Returns
    -------
    image : ndarray
        Dark master or rate as given (multiply by ``factor`` to get ADU).
    factor : float
        Scale to apply to ``image``.
    method : str
        'same exptime', 'rate' or 'scaled'.
    """
    if exptime is None or not np.isfinite(exptime) or exptime < 0:
        raise ValueError(f"dark subtraction needs the frame's exposure time, got {exptime!r}")
    if dark is not None and dark_exptime is None:
        raise ValueError("a master dark needs its exposure time (dark_exptime)")
    if dark is not None and np.isclose(dark_exptime, exptime, rtol=rtol, atol=0):
        return dark, 1.0, "same exptime"
    if dark_rate is not None:
        return dark_rate, float(exptime), "rate"
    if dark is not None:
        if dark_exptime <= 0:
            raise ValueError(f"cannot scale a master dark of exposure time {dark_exptime}")
        return dark, float(exptime) / float(dark_exptime), "scaled"
    raise ValueError("no dark master and no dark rate to subtract")


def subtract_dark(data: np.ndarray, *, exptime: float, dark: np.ndarray | None = None,
                  dark_exptime: float | None = None, dark_rate: np.ndarray | None = None) -> np.ndarray:
    """Subtract dark current, chosen by :func:`dark_for_exposure`, from bias-subtracted data."""
    out = _as_float32(data)
    image, factor, _ = dark_for_exposure(exptime, dark=dark, dark_exptime=dark_exptime, dark_rate=dark_rate)
    _check_shape("dark", image, out.shape)
    out -= np.float32(factor) * image
    return out


def flat_correct(data: np.ndarray, flat: np.ndarray, *, min_value: float = 0.05) -> np.ndarray:
    """Divide by a normalised flat; flat values below ``min_value`` are replaced by it.

    The replacement only avoids dividing by ~0; such pixels are flagged bad by the master
    flat's mask anyway.
    """
    out = _as_float32(data)
    _check_shape("flat", flat, out.shape)
    out /= np.maximum(flat, np.float32(min_value))
    return out


def mask_saturation(raw: np.ndarray, saturation_level: float) -> np.ndarray:
    """True where the raw value is at or above ``saturation_level`` (ADU)."""
    return np.asarray(raw) >= saturation_level


def _parts(master: Any) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(data, error, mask) of a MasterFrame-like object or a plain array."""
    if master is None:
        return None, None, None
    if hasattr(master, "data") and not isinstance(master, np.ndarray):
        return master.data, getattr(master, "error", None), getattr(master, "mask", None)
    return np.asarray(master), None, None


def reduce_frame(raw: np.ndarray, *, gain: float, read_noise: float, saturation: float | None = None,
                 exptime: float | None = None, bias: Any = None, dark: Any = None,
                 dark_exptime: float | None = None, dark_rate: Any = None, flat: Any = None,
                 bad_pixel_mask: np.ndarray | None = None, overscan: str | None = None,
                 trim: str | None = None, steps: Sequence[str] = DEFAULT_STEPS,
                 cosmics: CosmicRayDetector | None = None) -> ReducedFrame:
    """Calibrate one raw frame.

    Parameters
    ----------
    raw : ndarray
        Raw frame (ADU), overscan included if any. Not modified.
    gain : float
        e-/ADU.
    read_noise : float
        Electrons.
    saturation : float, optional
        Raw level (ADU) at which pixels saturate; the 'saturation' step needs it.
    exptime : float, optional
        Seconds; the 'dark' step needs it.
    bias, dark, dark_rate, flat : MasterFrame or ndarray, optional
        Masters in the trimmed geometry. A :class:`~obsdb.calibration.masters.MasterFrame`
        brings its error (propagated) and bad-pixel mask (ORed into bit 1); a plain array
        neither. ``dark`` is a master at ``dark_exptime`` (taken from a MasterFrame's
        ``stats['exptime']`` if not given); ``dark_rate`` is in ADU/s.
    bad_pixel_mask : bool ndarray, optional
        Extra bad pixels (trimmed geometry).
    overscan, trim : str, optional
        FITS sections; the 'overscan' and 'trim' steps are skipped when not defined.
    steps : sequence of str, optional
        Steps to run, in order; any of 'saturation', 'overscan', 'trim', 'bias', 'dark',
        'flat', 'cosmics'.
    cosmics : CosmicRayDetector, optional
        Cosmic-ray settings (default: :class:`CosmicRayDetector`'s).

    Returns
    -------
    ReducedFrame

    Notes
    -----
    Variance (ADU^2) = (read_noise/gain)^2 + max(signal, 0)/gain + master variances, with
    the signal taken after bias (or overscan) subtraction and before dark subtraction, so
    dark current counts; after the flat, var/flat^2 + (sci * flat_err/flat)^2. Without a
    bias or overscan step the signal still holds the bias level and the error is too large.
    """
    steps = list(steps)
    unknown = [s for s in steps if s not in _KNOWN_STEPS]
    if unknown:
        raise ValueError(f"unknown reduction steps {unknown}; known: {sorted(_KNOWN_STEPS)}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"a step is listed twice in {steps}")
    if not gain or gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    if read_noise is None or read_noise < 0:
        raise ValueError(f"read_noise must be >= 0, got {read_noise}")
    sci = _as_float32(raw)
    mask = np.zeros(sci.shape, dtype=np.uint8)
    saturated = None
    if "saturation" in steps and saturation is not None:
        saturated = mask_saturation(raw, saturation)
    pending_var: np.ndarray | float = 0.0  # master variances added before the noise model exists
    var: np.ndarray | None = None
    applied: list[str] = []
    missing: list[str] = []
    stats: dict[str, Any] = {}

    def flag_master(master_mask: np.ndarray | None, name: str) -> None:
        if master_mask is not None:
            _check_shape(f"{name} mask", master_mask, mask.shape)
            mask[np.asarray(master_mask) != 0] |= MASK_BAD

    def ensure_noise() -> np.ndarray:
        nonlocal var
        if var is None:
            var = ((read_noise / gain) ** 2 + np.maximum(sci, 0) / gain + pending_var).astype(np.float32)
        return var

    def add_variance(extra: np.ndarray) -> None:
        nonlocal pending_var, var
        if var is None:
            pending_var = pending_var + extra
        else:
            var += extra

    for step in steps:
        if step == "saturation":
            if saturated is None:
                continue
            mask[saturated] |= MASK_SATURATED
        elif step == "overscan":
            if overscan is None:
                continue
            sci = subtract_overscan(sci, overscan)
        elif step == "trim":
            if trim is None:
                continue
            region = parse_section(trim, sci.shape)
            sci, mask = sci[region].copy(), mask[region].copy()
            if saturated is not None:
                saturated = saturated[region]
            if var is not None:
                var = var[region].copy()
            if isinstance(pending_var, np.ndarray):
                pending_var = pending_var[region]
        elif step == "bias":
            data, error, master_mask = _parts(bias)
            if data is None:
                missing.append("bias")
                continue
            sci = subtract_bias(sci, data)
            if error is not None:
                add_variance(np.square(error, dtype=np.float32))
            flag_master(master_mask, "bias")
        elif step == "dark":
            data, error, master_mask = _parts(dark)
            rate, rate_error, rate_mask = _parts(dark_rate)
            if data is None and rate is None:
                missing.append("dark")
                continue
            this_dark_exptime = dark_exptime
            if data is not None and this_dark_exptime is None:
                this_dark_exptime = getattr(dark, "stats", {}).get("exptime")
            image, factor, method = dark_for_exposure(exptime, dark=data, dark_exptime=this_dark_exptime,
                                                      dark_rate=rate)
            _check_shape("dark", image, sci.shape)
            image_error, image_mask = (error, master_mask) if image is data else (rate_error, rate_mask)
            ensure_noise()  # the Poisson term must include the dark current
            sci -= np.float32(factor) * image  # sci is this function's own float32 array
            if image_error is not None:
                add_variance(np.square(np.float32(factor) * image_error))
            flag_master(image_mask, "dark")
            stats["dark_method"] = method
        elif step == "flat":
            data, error, master_mask = _parts(flat)
            if data is None:
                missing.append("flat")
                continue
            _check_shape("flat", data, sci.shape)
            ensure_noise()
            sci = flat_correct(sci, data, min_value=0.05)
            inverse = np.float32(1) / np.maximum(data, np.float32(0.05))
            var *= np.square(inverse)  # var is this function's own array
            if error is not None:
                var += np.square(sci * error * inverse)
            flag_master(master_mask, "flat")
        elif step == "cosmics":
            ensure_noise()
            detector = cosmics or CosmicRayDetector()
            # Saturated pixels after calibration sit near the lowest calibrated value of a
            # saturated raw pixel; astroscrappy protects the surroundings above that level.
            level = float(np.min(sci[saturated])) if saturated is not None and saturated.any() else np.inf
            hits = detector(sci, gain=gain, read_noise=read_noise, saturation=level,
                            mask=(mask & (MASK_BAD | MASK_SATURATED)) != 0, variance=var)
            mask[hits] |= MASK_COSMIC
        applied.append(step)

    if bad_pixel_mask is not None:
        flag_master(bad_pixel_mask, "bad_pixel_mask")
    err = np.sqrt(ensure_noise()).astype(np.float32)
    stats.update(n_bad=int(np.count_nonzero(mask & MASK_BAD)),
                 n_saturated=int(np.count_nonzero(mask & MASK_SATURATED)),
                 n_cosmic=int(np.count_nonzero(mask & MASK_COSMIC)))
    return ReducedFrame(sci=sci, err=err, mask=mask, steps_applied=applied, missing=missing, stats=stats)
