"""Master bias, dark and flat from raw calibration frames.

Each builder reads its frames one at a time (arrays, FITS paths or loaders, see
:func:`~obsdb.calibration.combine.load_frame`), prepares them (overscan, trim, bias and
dark subtraction, flat normalisation), stores them in a temporary on-disk
:class:`~obsdb.calibration.combine.FrameStack` and combines them tile by tile, so memory
stays bounded whatever the number of frames. Bad pixels are found in the result itself
(:mod:`obsdb.calibration.badpixels`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obsdb.calibration import badpixels
from obsdb.calibration.combine import (
    DEFAULT_MEMORY_LIMIT,
    CombineResult,
    FrameSource,
    FrameStack,
    combine_stack,
    load_frame,
)
from obsdb.calibration.reduce import subtract_overscan
from obsdb.calibration.reduce import trim as trim_frame

__all__ = ["MasterFrame", "make_master_bias", "make_master_dark", "make_master_flat"]


@dataclass(frozen=True)
class MasterFrame:
    """A master calibration image.

    Attributes
    ----------
    kind : str
        'bias', 'dark', 'dark_rate' or 'flat'.
    data : ndarray of float32
        ADU for bias and dark, ADU/s for a dark rate, normalised (median 1) for a flat.
    error : ndarray of float32
        1-sigma uncertainty of ``data``.
    mask : ndarray of uint8
        Bad-pixel flags of :mod:`obsdb.calibration.badpixels`; non-zero is bad.
    stats : dict
        JSON-ready summary: median, std, n_inputs, n_bad, kind-specific entries
        (exptime, rejected inputs, ...).
    """

    kind: str
    data: np.ndarray
    error: np.ndarray
    mask: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def _prepare(frame: np.ndarray, overscan: str | None, trim_section: str | None) -> np.ndarray:
    if overscan is not None:
        frame = subtract_overscan(frame, overscan)
    if trim_section is not None:
        frame = trim_frame(frame, trim_section)
    return frame


def _check_frames(frames: Sequence[FrameSource]) -> list[FrameSource]:
    frames = list(frames)
    if not frames:
        raise ValueError("no frames given to build a master from")
    return frames


def _master_array(master: MasterFrame | np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if master is None:
        return None, None
    if isinstance(master, MasterFrame):
        return master.data, master.error
    return np.asarray(master, dtype=np.float32), None


def _finish(kind: str, result: CombineResult, mask: np.ndarray, fill: float, extra_variance: Any = 0.0,
            stats: dict[str, Any] | None = None, error_scale: float = 1.0) -> MasterFrame:
    """Fill pixels without data, propagate errors, summarise."""
    no_data = result.n_used == 0
    mask = mask | np.where(no_data, badpixels.NO_DATA, 0).astype(np.uint8)
    data = np.where(no_data, np.float32(fill), result.data).astype(np.float32)
    error = np.sqrt(np.square(result.error * np.float32(error_scale)) + extra_variance)
    error = np.where(no_data, np.inf, error).astype(np.float32)
    median, std = badpixels.robust_stats(data, mask != 0)
    summary = {"median": median, "std": std, "n_inputs": int(len(result.scales)),
               "n_bad": int(np.count_nonzero(mask)), "median_error": badpixels.robust_stats(error, mask != 0)[0]}
    summary.update(stats or {})
    return MasterFrame(kind=kind, data=data, error=error, mask=mask, stats=summary)


def make_master_bias(frames: Sequence[FrameSource], *, overscan: str | None = None, trim: str | None = None,
                     gain: float | None = None, read_noise: float | None = None, unstable_nsigma: float = 8.0,
                     memory_limit: float = DEFAULT_MEMORY_LIMIT, tmpdir: str | os.PathLike | None = None,
                     **clip: Any) -> MasterFrame:
    """Sigma-clipped mean of bias frames.

    Parameters
    ----------
    frames : sequence of ndarray, path or callable
        Raw bias frames.
    overscan, trim : str, optional
        FITS sections; applied to each frame when given.
    gain, read_noise : float, optional
        e-/ADU and e-. If both are given the error is ``read_noise / gain / sqrt(n_used)``
        (the measured scatter of a few frames is itself noisy); otherwise the standard
        error of the clipped mean.
    unstable_nsigma : float, optional
        Pixels whose scatter among the frames exceeds the median scatter by this many
        robust deviations are flagged UNSTABLE.
    memory_limit, tmpdir
        See :func:`~obsdb.calibration.combine.combine_frames`.
    **clip
        ``sigma_lower``, ``sigma_upper``, ``maxiters``, ``center``, ``deviation`` of
        :func:`~obsdb.calibration.combine.combine_frames`.

    Returns
    -------
    MasterFrame
        ``stats['read_noise_adu']`` is the median per-pixel scatter among the inputs.
    """
    frames = _check_frames(frames)
    if (gain is None) != (read_noise is None):
        raise ValueError("give both gain and read_noise, or neither")
    result = _combine(frames, lambda raw: _prepare(raw, overscan, trim), memory_limit, tmpdir, clip)
    if gain is not None:
        with np.errstate(divide="ignore"):
            error = (read_noise / gain) / np.sqrt(result.n_used.astype(np.float32))
        result = CombineResult(result.data, error.astype(np.float32), result.std, result.n_used, result.scales)
    mask = _unstable(result, unstable_nsigma)
    fill = float(np.nanmedian(result.data)) if np.isfinite(result.data).any() else 0.0
    return _finish("bias", result, mask, fill,
                   stats={"read_noise_adu": badpixels.robust_stats(result.std)[0]})


def make_master_dark(frames: Sequence[FrameSource], master_bias: MasterFrame | np.ndarray | None,
                     exptime: float | Sequence[float], *, overscan: str | None = None,
                     trim: str | None = None, gain: float | None = None, read_noise: float | None = None,
                     hot_nsigma: float = 5.0, hot_min_rate: float | None = None, unstable_nsigma: float = 8.0,
                     memory_limit: float = DEFAULT_MEMORY_LIMIT, tmpdir: str | os.PathLike | None = None,
                     **clip: Any) -> tuple[MasterFrame, MasterFrame]:
    """Bias-subtracted, sigma-clipped master dark, and the dark rate per second.

    Parameters
    ----------
    frames : sequence of ndarray, path or callable
        Raw dark frames, all of one exposure time.
    master_bias : MasterFrame or ndarray or None
        Subtracted from each frame (None: the frames are already bias-free, e.g. by
        overscan). A MasterFrame's error is propagated.
    exptime : float or sequence of float
        Exposure time (s) of the frames; a sequence must hold one value.
    gain, read_noise : float, optional
        If given, the error comes from the noise model instead of the scatter.
    hot_nsigma, hot_min_rate : float, optional
        Hot-pixel threshold, see :func:`~obsdb.calibration.badpixels.find_hot_pixels`.
    unstable_nsigma : float, optional
        Threshold for UNSTABLE pixels (scatter among the frames).
    **clip, overscan, trim, memory_limit, tmpdir
        As for :func:`make_master_bias`.

    Returns
    -------
    dark : MasterFrame
        Dark at ``exptime`` (ADU), ``stats['exptime']`` set.
    rate : MasterFrame
        ``dark / exptime`` (ADU/s), same mask.
    """
    frames = _check_frames(frames)
    times = np.atleast_1d(np.asarray(exptime, dtype=float))
    if times.size not in (1, len(frames)):
        raise ValueError(f"got {times.size} exposure times for {len(frames)} darks")
    if not np.allclose(times, times[0], rtol=1e-3, atol=0):
        raise ValueError(f"darks of different exposure times ({sorted(set(times.tolist()))}): "
                         "build one master per exposure time")
    t = float(times[0])
    if not t > 0:
        raise ValueError(f"dark exposure time must be positive, got {t}")
    bias, bias_error = _master_array(master_bias)

    def prepare(raw: np.ndarray) -> np.ndarray:
        frame = _prepare(raw, overscan, trim)
        if bias is not None:
            if bias.shape != frame.shape:
                raise ValueError(f"master bias has shape {bias.shape}, the darks {frame.shape}")
            frame = frame - bias
        return frame

    result = _combine(frames, prepare, memory_limit, tmpdir, dict(clip, gain=gain, read_noise=read_noise))
    unstable = _unstable(result, unstable_nsigma)
    hot = badpixels.find_hot_pixels(result.data / t, nsigma=hot_nsigma, min_rate=hot_min_rate,
                                    mask=unstable != 0)
    mask = unstable | np.where(hot, badpixels.HOT, 0).astype(np.uint8)
    extra = 0.0 if bias_error is None else np.square(bias_error)
    fill = float(np.nanmedian(result.data)) if np.isfinite(result.data).any() else 0.0
    dark = _finish("dark", result, mask, fill, extra, stats={"exptime": t, "n_hot": int(np.count_nonzero(hot))})
    rate_stats = dict(dark.stats, median=dark.stats["median"] / t, std=dark.stats["std"] / t,
                      median_error=dark.stats["median_error"] / t)
    rate = MasterFrame(kind="dark_rate", data=(dark.data / np.float32(t)).astype(np.float32),
                       error=(dark.error / np.float32(t)).astype(np.float32), mask=dark.mask.copy(),
                       stats=rate_stats)
    return dark, rate


def make_master_flat(frames: Sequence[FrameSource], master_bias: MasterFrame | np.ndarray | None,
                     master_dark_rate: MasterFrame | np.ndarray | None, exptimes: float | Sequence[float], *,
                     overscan: str | None = None, trim: str | None = None, min_level: float = 1000.0,
                     max_level: float | None = None, saturation: float | None = None,
                     max_saturated_fraction: float = 1e-3, norm_region: float = 0.5, low: float = 0.5,
                     high: float | None = None, unstable_nsigma: float = 8.0, gain: float | None = None,
                     read_noise: float | None = None, memory_limit: float = DEFAULT_MEMORY_LIMIT,
                     tmpdir: str | os.PathLike | None = None, **clip: Any) -> MasterFrame:
    """Normalised master flat from flats of one filter.

    Each frame is bias- and dark-subtracted, checked, divided by the median of its central
    region, and the accepted frames are sigma-clip combined; the result is divided by its
    median over good pixels, so it has median 1.

    Parameters
    ----------
    frames : sequence of ndarray, path or callable
        Raw flats.
    master_bias : MasterFrame or ndarray or None
        Subtracted from each frame.
    master_dark_rate : MasterFrame or ndarray or None
        Dark rate (ADU/s); ``rate * exptime`` is subtracted when given.
    exptimes : float or sequence of float
        Exposure time of each flat (one value for all).
    min_level, max_level : float, optional
        A flat whose central median (after bias and dark) is below ``min_level`` ADU
        ("too faint") or above ``max_level`` ("too bright") is rejected. ``max_level``
        None means 80 % of ``saturation`` (where many CCDs stop being linear), or no
        limit if the saturation is unknown.
    saturation : float, optional
        Raw saturation level (ADU); a flat with more than ``max_saturated_fraction`` of its
        pixels at or above it is rejected ("saturated").
    norm_region : float, optional
        Side of the central region used for the per-frame median, as a fraction of each
        axis.
    low, high : float, optional
        Response limits of LOW_RESPONSE pixels in the final flat.
    unstable_nsigma : float, optional
        Threshold for UNSTABLE pixels (scatter among the normalised flats).
    gain, read_noise, **clip, overscan, trim, memory_limit, tmpdir
        As for :func:`make_master_dark`.

    Returns
    -------
    MasterFrame
        ``stats['rejected']`` lists ``{'index', 'reason'}`` of each rejected input,
        ``stats['levels']`` the central median of every input (ADU), ``stats['n_inputs']``
        the number of flats combined.

    Raises
    ------
    ValueError
        If every flat is rejected (the message lists why).
    """
    frames = _check_frames(frames)
    times = np.atleast_1d(np.asarray(exptimes, dtype=float))
    if times.size == 1:
        times = np.full(len(frames), times[0])
    if times.size != len(frames):
        raise ValueError(f"got {times.size} exposure times for {len(frames)} flats")
    if not 0 < norm_region <= 1:
        raise ValueError(f"norm_region must be in (0, 1], got {norm_region}")
    if max_level is None and saturation is not None:
        max_level = 0.8 * saturation
    bias, bias_error = _master_array(master_bias)
    rate, rate_error = _master_array(master_dark_rate)
    rejected: list[dict[str, Any]] = []
    levels: list[float] = []
    stack: FrameStack | None = None
    try:
        for i, source in enumerate(frames):
            raw = load_frame(source)
            reason = None
            if saturation is not None:
                fraction = float(np.count_nonzero(raw >= saturation)) / raw.size
                if fraction > max_saturated_fraction:
                    reason = f"saturated: {100 * fraction:.3g}% of pixels at or above {saturation:g} ADU"
            frame = _prepare(raw, overscan, trim)
            del raw
            for name, image in (("master bias", bias), ("master dark rate", rate)):
                if image is not None and image.shape != frame.shape:
                    raise ValueError(f"{name} has shape {image.shape}, the flats {frame.shape}")
            if bias is not None:
                frame = frame - bias
            if rate is not None:
                frame = frame - np.float32(times[i]) * rate
            level = _central_median(frame, norm_region)
            levels.append(level)
            if reason is None and not level >= min_level:
                reason = f"too faint: central median {level:.6g} ADU < min_level {min_level:g}"
            if reason is None and max_level is not None and level > max_level:
                reason = f"too bright: central median {level:.6g} ADU > max_level {max_level:g}"
            if reason is not None:
                rejected.append({"index": i, "reason": reason})
                continue
            if stack is None:
                stack = FrameStack(frame.shape, len(frames), memory_limit=memory_limit, tmpdir=tmpdir)
            stack.append(frame, 1.0 / level)
        if stack is None:
            reasons = "; ".join(f"#{r['index']} {r['reason']}" for r in rejected)
            raise ValueError(f"every flat was rejected: {reasons}")
        result = combine_stack(stack, **dict(clip, gain=gain, read_noise=read_noise))
    finally:
        if stack is not None:
            stack.close()

    # Input variances from the bias and dark masters enter each normalised frame divided by
    # its level; the mean of 1/level^2 over the accepted frames is close enough.
    inv_level2 = float(np.mean(np.square(result.scales)))
    extra: Any = 0.0
    if bias_error is not None:
        extra = extra + np.square(bias_error) * inv_level2
    if rate_error is not None:
        extra = extra + np.square(rate_error) * float(np.mean(times)) ** 2 * inv_level2
    unstable = _unstable(result, unstable_nsigma)
    valid = (result.n_used > 0) & (unstable == 0)
    norm = float(np.median(result.data[valid])) if valid.any() else float("nan")
    # Normalise over the pixels that will be called good, so their median is exactly 1.
    if np.isfinite(norm) and norm > 0:
        valid &= ~badpixels.find_dead_pixels(result.data / np.float32(norm), low=low, high=high)
        norm = float(np.median(result.data[valid])) if valid.any() else float("nan")
    if not np.isfinite(norm) or norm <= 0:
        raise ValueError(f"the combined flat has no positive median ({norm})")
    result = CombineResult(result.data / np.float32(norm), result.error, result.std / np.float32(norm),
                           result.n_used, result.scales)
    low_response = badpixels.find_dead_pixels(result.data, low=low, high=high) & (result.n_used > 0)
    mask = unstable | np.where(low_response, badpixels.LOW_RESPONSE, 0).astype(np.uint8)
    return _finish("flat", result, mask, 1.0, extra / norm**2, error_scale=1.0 / norm,
                   stats={"rejected": rejected, "levels": levels, "n_frames": len(frames),
                          "n_low_response": int(np.count_nonzero(low_response)), "norm": norm})


def _central_median(frame: np.ndarray, fraction: float) -> float:
    ny, nx = frame.shape
    dy, dx = max(1, int(ny * fraction / 2)), max(1, int(nx * fraction / 2))
    centre = frame[ny // 2 - dy:ny // 2 + dy, nx // 2 - dx:nx // 2 + dx]
    return float(np.nanmedian(centre))


def _combine(frames: list[FrameSource], prepare: Callable[[np.ndarray], np.ndarray], memory_limit: float,
             tmpdir: str | os.PathLike | None, clip: dict[str, Any]) -> CombineResult:
    stack: FrameStack | None = None
    try:
        for source in frames:
            frame = prepare(load_frame(source))
            if stack is None:
                stack = FrameStack(frame.shape, len(frames), memory_limit=memory_limit, tmpdir=tmpdir)
            stack.append(frame)
            del frame
        return combine_stack(stack, **clip)
    finally:
        if stack is not None:
            stack.close()


def _unstable(result: CombineResult, nsigma: float) -> np.ndarray:
    """UNSTABLE flags where the scatter among inputs is far above the rest (needs >= 3 inputs)."""
    if len(result.scales) < 3:
        return np.zeros(result.data.shape, dtype=np.uint8)
    unstable = badpixels.find_unstable_pixels(result.std, nsigma=nsigma)
    return np.where(unstable, badpixels.UNSTABLE, 0).astype(np.uint8)
