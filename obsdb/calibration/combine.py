"""Sigma-clipped mean combination of many frames, one block of rows at a time.

Why not ``ccdproc.combine``: it holds every frame (as masked float64 arrays) in memory
or splits the image into many small chunks it re-reads from the files, its median combine
is about 13x slower than numpy's, and it sigma-clips the *unscaled* data, so flats taken at
different levels are clipped against each other before they are normalised. Here frames
are read once into a temporary, tile-major stack on disk; each block of rows is then read
back in one piece, sorted along the frame axis once, and clipped by moving two indices per
pixel: after sorting, the values a sigma clip keeps are always a contiguous run, so each
iteration only counts how many values fall outside the bounds at either end, and a pixel
whose run did not change has converged, so later iterations visit only the few per cent
that did. The result agrees with ``ccdproc.combine(method='average', sigma_clip=True)``
for the same centre, deviation and iteration count (see the tests).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from astropy.io import fits

__all__ = ["CombineResult", "FrameStack", "combine_frames", "combine_stack", "load_frame"]

#: One input frame: an array, a path to a FITS file or a callable that returns the array.
FrameSource = Union[np.ndarray, str, os.PathLike, Callable[[], np.ndarray]]

# Working memory per stacked value while a tile is clipped: the tile itself, its sorted
# copy, deviations and squared deviations (float32 each), boolean planes and slack for
# numpy temporaries. Tiles of tens of MB are also the fastest: measured on 10 frames of
# 2048x2048, 64 MB tiles took 1.0 s and 256 MB tiles 2.2 s (allocation and cache misses).
_BYTES_PER_VALUE = 24
DEFAULT_MEMORY_LIMIT = 64 * 2**20


@dataclass(frozen=True)
class CombineResult:
    """The outcome of a combination.

    Attributes
    ----------
    data : ndarray of float32
        Sigma-clipped mean; NaN where no input value survived.
    error : ndarray of float32
        Standard error of the clipped mean (same units as ``data``).
    std : ndarray of float32
        Standard deviation (ddof=1) of the values kept at each pixel: the per-pixel
        scatter among the inputs, used to find unstable pixels.
    n_used : ndarray of uint16
        Number of input values kept at each pixel.
    scales : ndarray of float64
        Multiplicative scale applied to each input frame.
    """

    data: np.ndarray
    error: np.ndarray
    std: np.ndarray
    n_used: np.ndarray
    scales: np.ndarray


def load_frame(source: FrameSource) -> np.ndarray:
    """Return one frame as a 2-D float32 array.

    Parameters
    ----------
    source : ndarray, path or callable
        An array (returned as float32, copied only if its type differs), a FITS file (the
        first HDU holding a 2-D image is read) or a callable taking no argument that
        returns the array, e.g. ``functools.partial(obsdb.fitsfile.read_data, path)``
        followed by ``[0]``.

    Returns
    -------
    ndarray of float32
    """
    if isinstance(source, np.ndarray):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        data = _read_fits_image(Path(source))
    elif callable(source):
        data = source()
    else:
        raise TypeError(f"cannot load a frame from {type(source).__name__}: give an array, a path or a callable")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"a frame must be a 2-D image, got {data.ndim} dimensions")
    return data


def _read_fits_image(path: Path) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                return np.asarray(hdu.data, dtype=np.float32)
    raise ValueError(f"{path}: no 2-D image in any HDU")


def _tile_rows(n_frames: int, nx: int, memory_limit: float) -> int:
    return max(1, int(memory_limit // (max(n_frames, 1) * nx * _BYTES_PER_VALUE)))


class FrameStack:
    """Frames of one shape stored tile-major in an anonymous temporary file.

    Each block of ``tile_rows`` rows of all frames is contiguous on disk, so a tile is read
    back with one ``read``; the file is unlinked from the start and disappears on
    :meth:`close` (or when the process dies). Resident memory stays at one frame plus one
    tile, whatever the number of frames: plain file writes are used rather than a
    ``np.memmap``, whose dirty pages would count against the process until evicted.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of every frame.
    capacity : int
        Largest number of frames that will be appended.
    memory_limit : float, optional
        Bytes of working memory one tile may take while it is clipped.
    tmpdir : str or path, optional
        Directory of the temporary file (default: the system's temporary directory).
    """

    def __init__(self, shape: tuple[int, int], capacity: int, *, memory_limit: float = DEFAULT_MEMORY_LIMIT,
                 tmpdir: str | os.PathLike | None = None) -> None:
        if capacity < 1:
            raise ValueError("a frame stack needs a capacity of at least one frame")
        self.shape = (int(shape[0]), int(shape[1]))
        self.capacity = int(capacity)
        self.tile_rows = min(self.shape[0], _tile_rows(capacity, self.shape[1], memory_limit))
        self.scales: list[float] = []
        self._file = tempfile.TemporaryFile(dir=tmpdir, prefix="obsdb-stack-")
        self._starts = list(range(0, self.shape[0], self.tile_rows))
        # Byte offset of each tile's slot: capacity frames x rows of that tile.
        row_bytes = self.shape[1] * 4
        self._offsets = np.cumsum([0] + [capacity * (min(r + self.tile_rows, self.shape[0]) - r) * row_bytes
                                         for r in self._starts])

    def __len__(self) -> int:
        return len(self.scales)

    def __enter__(self) -> FrameStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the temporary file."""
        self._file.close()

    def append(self, frame: np.ndarray, scale: float = 1.0, mask: np.ndarray | None = None) -> None:
        """Store ``frame * scale``, with ``mask`` (True = bad) pixels left out of the combine.

        The frame itself is not modified.
        """
        if len(self) >= self.capacity:
            raise ValueError(f"the stack is full ({self.capacity} frames)")
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"frame {len(self)} has shape {frame.shape}, expected {self.shape}")
        scaled = np.multiply(frame, np.float32(scale), dtype=np.float32)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != self.shape:
                raise ValueError(f"mask of frame {len(self)} has shape {mask.shape}, expected {self.shape}")
            scaled[mask] = np.nan
        index = len(self)
        fd = self._file.fileno()
        for t, r0 in enumerate(self._starts):
            block = np.ascontiguousarray(scaled[r0:r0 + self.tile_rows])
            offset = int(self._offsets[t]) + index * block.nbytes
            view = memoryview(block).cast("B")
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        self.scales.append(float(scale))

    def tiles(self) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(row slice, block)`` with ``block`` of shape ``(n_frames, rows, nx)``."""
        n, nx = len(self), self.shape[1]
        fd = self._file.fileno()
        for t, r0 in enumerate(self._starts):
            r1 = min(r0 + self.tile_rows, self.shape[0])
            block = np.empty((n, r1 - r0, nx), dtype=np.float32)
            view, offset = memoryview(block).cast("B"), int(self._offsets[t])
            while view:
                got = os.preadv(fd, [view], offset)
                if got == 0:
                    raise OSError("frame stack file is shorter than expected")
                view, offset = view[got:], offset + got
            yield slice(r0, r1), block


class _ArrayStack:
    """Frames already in memory: tiles are stacked slices, nothing is written to disk."""

    def __init__(self, frames: Sequence[np.ndarray], scales: Sequence[float],
                 masks: Sequence[np.ndarray | None], memory_limit: float) -> None:
        self.frames, self.scales, self.masks = frames, list(scales), masks
        self.shape = frames[0].shape
        self.tile_rows = min(self.shape[0], _tile_rows(len(frames), self.shape[1], memory_limit))

    def __len__(self) -> int:
        return len(self.frames)

    def tiles(self) -> Iterator[tuple[slice, np.ndarray]]:
        for r0 in range(0, self.shape[0], self.tile_rows):
            rows = slice(r0, min(r0 + self.tile_rows, self.shape[0]))
            block = np.empty((len(self.frames), rows.stop - rows.start, self.shape[1]), dtype=np.float32)
            for i, (frame, scale, mask) in enumerate(zip(self.frames, self.scales, self.masks)):
                np.multiply(frame[rows], np.float32(scale), out=block[i], casting="unsafe")
                if mask is not None:
                    block[i][mask[rows]] = np.nan
            yield rows, block


def _clip_tile(block: np.ndarray, *, sigma_lower: float | None, sigma_upper: float | None, maxiters: int,
               center: str, deviation: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clipped mean, kept-value std (ddof=1) and count of one ``(n, rows, nx)`` block.

    Matches astropy's ``sigma_clip``: bounds are ``centre -/+ sigma * deviation`` of the
    values still kept, values strictly outside are dropped for good, the ``'std'``
    deviation is taken about the mean (ddof=0), and clipping stops once nothing changes.
    """
    n_frames, shape = block.shape[0], block.shape[1:]
    s = np.sort(block, axis=0).reshape(n_frames, -1)  # NaN (masked) values sort to the end
    npix = s.shape[1]
    if np.isnan(s[-1]).any():
        hi = np.count_nonzero(~np.isnan(s), axis=0)
    else:
        hi = np.full(npix, n_frames)
    lo = np.zeros(npix, dtype=hi.dtype)
    mean_out = np.empty(npix, dtype=np.float32)
    var_out = np.empty(npix, dtype=np.float32)

    # After sorting, the values a clip keeps are a contiguous run [lo, hi) of each
    # column. A pixel whose run did not change in an iteration has converged, so later
    # iterations only visit the pixels that did change (a few per cent of them).
    active = slice(None)
    sub, sub_lo, sub_hi = s, lo, hi
    with np.errstate(invalid="ignore", divide="ignore"):
        for iteration in range(maxiters + 1):
            mean, var, c = _run_stats(sub, sub_lo, sub_hi, center)
            mean_out[active], var_out[active] = mean, var
            if iteration == maxiters:
                break
            dev = np.sqrt(var) if deviation == "std" else _run_mad_std(sub, sub_lo, sub_hi, c)
            new_lo, new_hi = sub_lo, sub_hi
            # NaN compares False, so masked values are never counted.
            if sigma_lower is not None:
                new_lo = np.maximum(sub_lo, (sub < c - sigma_lower * dev).sum(axis=0, dtype=lo.dtype))
            if sigma_upper is not None:
                new_hi = np.minimum(sub_hi, (sub <= c + sigma_upper * dev).sum(axis=0, dtype=hi.dtype))
            new_hi = np.maximum(new_hi, new_lo)
            changed = np.flatnonzero((new_lo != sub_lo) | (new_hi != sub_hi))
            if changed.size == 0:
                break
            active = np.arange(npix)[active][changed]
            lo[active], hi[active] = new_lo[changed], new_hi[changed]
            sub, sub_lo, sub_hi = s[:, active], lo[active], hi[active]
        n = hi - lo
        mean = np.where(n > 0, mean_out, np.nan)
        std = np.where(n > 1, np.sqrt(var_out * n / np.maximum(n - 1, 1)), np.nan)
    return mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape), n.reshape(shape)


def _take(s: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``s[index[j], j]`` for every column j, with index clipped into range."""
    return s[np.clip(index, 0, s.shape[0] - 1), np.arange(s.shape[1])]


def _run_stats(s: np.ndarray, lo: np.ndarray, hi: np.ndarray, center: str) -> tuple[np.ndarray, ...]:
    """Mean, variance (ddof=0) and clipping centre of the runs ``s[lo:hi, j]``."""
    n = hi - lo
    median = (_take(s, lo + np.maximum(n - 1, 0) // 2) + _take(s, lo + n // 2)) / 2
    # Deviations from the median keep float32 sums of squares accurate (no cancellation
    # between a large mean and a small variance).
    k = np.arange(s.shape[0]).reshape(-1, 1)
    d = np.where((k >= lo) & (k < hi), s - median, 0)
    n_safe = np.maximum(n, 1)
    mean_d = d.sum(axis=0) / n_safe
    var = np.maximum(np.square(d).sum(axis=0) / n_safe - mean_d**2, 0)
    mean = median + mean_d
    return mean, var, (median if center == "median" else mean)


def _run_mad_std(s: np.ndarray, lo: np.ndarray, hi: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Normalised median absolute deviation of the runs ``s[lo:hi, j]`` about ``c``."""
    k = np.arange(s.shape[0]).reshape(-1, 1)
    absdev = np.where((k >= lo) & (k < hi), np.abs(s - c), np.inf)
    absdev.sort(axis=0)
    n = hi - lo
    return 1.482602218505602 * (_take(absdev, np.maximum(n - 1, 0) // 2) + _take(absdev, n // 2)) / 2


def combine_stack(stack: FrameStack | _ArrayStack, *, sigma_lower: float | None = 3.0,
                  sigma_upper: float | None = 3.0, maxiters: int = 3, center: str = "median",
                  deviation: str = "std", gain: float | None = None,
                  read_noise: float | None = None) -> CombineResult:
    """Sigma-clipped mean of the frames in a :class:`FrameStack`, tile by tile.

    Parameters are those of :func:`combine_frames`.
    """
    if center not in ("median", "mean"):
        raise ValueError(f"center must be 'median' or 'mean', not {center!r}")
    if deviation not in ("std", "mad_std"):
        raise ValueError(f"deviation must be 'std' or 'mad_std', not {deviation!r}")
    if maxiters < 1:
        raise ValueError("maxiters must be at least 1")
    if (gain is None) != (read_noise is None):
        raise ValueError("give both gain and read_noise for a noise-model error, or neither")
    if gain is not None and gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    if len(stack) == 0:
        raise ValueError("no frames to combine")
    ny, nx = stack.shape
    data = np.empty((ny, nx), dtype=np.float32)
    std = np.empty((ny, nx), dtype=np.float32)
    n_used = np.empty((ny, nx), dtype=np.uint16)
    for rows, block in stack.tiles():
        data[rows], std[rows], n_used[rows] = _clip_tile(
            block, sigma_lower=sigma_lower, sigma_upper=sigma_upper, maxiters=maxiters,
            center=center, deviation=deviation)
        del block
    scales = np.asarray(stack.scales, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.maximum(n_used, 1).astype(np.float32)
        if gain is not None:
            # Noise model of one input in ADU^2, read noise in electrons: a frame scaled
            # by s that shows m after scaling holds m/s ADU, so its variance after
            # scaling is s^2 (rn/g)^2 + s m/g. Averaged over the scales because which
            # frames survived clipping is not kept per pixel.
            var1 = np.mean(scales**2) * (read_noise / gain) ** 2 + np.mean(scales) * np.maximum(data, 0) / gain
            error = np.sqrt(var1 / n)
        else:
            # A single surviving value has no scatter of its own: use the typical
            # per-pixel scatter of the image instead.
            typical = np.nanmedian(std) if np.isfinite(std).any() else np.nan
            error = np.where(n_used > 1, std, typical) / np.sqrt(n)
        error = np.where(n_used > 0, error, np.nan).astype(np.float32)
    return CombineResult(data=data, error=error, std=std, n_used=n_used, scales=scales)


def combine_frames(frames: Sequence[FrameSource], *,
                   scale: Sequence[float] | Callable[[np.ndarray], float] | None = None,
                   masks: Sequence[np.ndarray | None] | None = None, sigma_lower: float | None = 3.0,
                   sigma_upper: float | None = 3.0, maxiters: int = 3, center: str = "median",
                   deviation: str = "std", gain: float | None = None, read_noise: float | None = None,
                   memory_limit: float = DEFAULT_MEMORY_LIMIT, tmpdir: str | os.PathLike | None = None) -> CombineResult:
    """Sigma-clipped mean of frames, in bounded memory.

    Parameters
    ----------
    frames : sequence of ndarray, path or callable
        The frames (see :func:`load_frame`). If all are arrays they are combined straight
        from memory; otherwise each is loaded once into a temporary on-disk stack, so only
        one frame and one tile are in memory at a time.
    scale : sequence of float or callable, optional
        Multiplicative scale of each frame, or a function of the frame returning it (e.g.
        ``lambda a: 1 / np.median(a)`` for flats). Clipping is done on scaled values.
    masks : sequence of bool ndarray or None, optional
        Per-frame masks; True pixels are left out.
    sigma_lower, sigma_upper : float or None, optional
        Clipping bounds in units of the deviation; None disables that side.
    maxiters : int, optional
        Maximum clipping iterations (it stops earlier once nothing changes).
    center : {'median', 'mean'}, optional
        Centre of the clipping bounds.
    deviation : {'std', 'mad_std'}, optional
        Width of the clipping bounds (``'std'`` is about the mean, ddof=0). With 'std', a
        single outlier among n values lies at most about n/sqrt(n-1) deviations from the
        median, so fewer than 8 frames cannot lose one at 3 sigma; 'mad_std' can, but with
        few frames it also clips many good values (measured with 5 frames: 7 %) and the
        error then comes out 20 % low. Prefer 'std' with 8 or more frames.
    gain, read_noise : float, optional
        Gain (e-/ADU) and read noise (e-). If given, ``error`` comes from this noise model
        instead of the measured scatter, which is noisy when there are few frames.
    memory_limit : float, optional
        Bytes of working memory for one tile.
    tmpdir : str or path, optional
        Where the temporary stack lives.

    Returns
    -------
    CombineResult

    Raises
    ------
    ValueError
        No frames, frames of different shapes, or mismatched ``scale``/``masks`` lengths.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to combine")
    if masks is not None and len(masks) != len(frames):
        raise ValueError(f"got {len(masks)} masks for {len(frames)} frames")
    if scale is not None and not callable(scale) and len(scale) != len(frames):
        raise ValueError(f"got {len(scale)} scales for {len(frames)} frames")
    mask_list = list(masks) if masks is not None else [None] * len(frames)

    def scale_of(i: int, frame: np.ndarray) -> float:
        if scale is None:
            return 1.0
        value = float(scale(frame) if callable(scale) else scale[i])
        if not np.isfinite(value):
            raise ValueError(f"scale of frame {i} is not finite ({value})")
        return value

    if all(isinstance(f, np.ndarray) for f in frames):
        arrays = [np.asarray(f) for f in frames]
        for i, a in enumerate(arrays):
            if a.ndim != 2:
                raise ValueError(f"frame {i} is not a 2-D image (ndim={a.ndim})")
            if a.shape != arrays[0].shape:
                raise ValueError(f"frame {i} has shape {a.shape}, expected {arrays[0].shape}")
            if mask_list[i] is not None and np.shape(mask_list[i]) != a.shape:
                raise ValueError(f"mask of frame {i} has shape {np.shape(mask_list[i])}, expected {a.shape}")
        mask_arrays = [None if m is None else np.asarray(m, dtype=bool) for m in mask_list]
        stack = _ArrayStack(arrays, [scale_of(i, a) for i, a in enumerate(arrays)], mask_arrays, memory_limit)
        return combine_stack(stack, sigma_lower=sigma_lower, sigma_upper=sigma_upper, maxiters=maxiters,
                             center=center, deviation=deviation, gain=gain, read_noise=read_noise)

    first = load_frame(frames[0])
    with FrameStack(first.shape, len(frames), memory_limit=memory_limit, tmpdir=tmpdir) as stack:
        for i, source in enumerate(frames):
            frame = first if i == 0 else load_frame(source)
            stack.append(frame, scale_of(i, frame), mask_list[i])
            del frame
        del first
        return combine_stack(stack, sigma_lower=sigma_lower, sigma_upper=sigma_upper, maxiters=maxiters,
                             center=center, deviation=deviation, gain=gain, read_noise=read_noise)
