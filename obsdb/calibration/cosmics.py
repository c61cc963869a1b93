"""Cosmic-ray masking with astroscrappy (L.A.Cosmic), tuned for speed and star safety.

Settings, chosen on seeded 512x512 frames with 150 Moffat stars (FWHM 2.5-4 px, peaks to
50000 ADU) and 400 hits (single pixels and 2-6 px tracks of 2000-30000 e- per pixel):

- ``niter=1``: astroscrappy's median filters dominate its time (about 2 s for a 2048x2048
  frame on this project's 2-core machine, 3 s on one core); ``niter=2`` doubles that for
  99.3 % instead of 97.5 % of hit pixels.
- ``sigclip=6`` rather than 4.5: same recovery for hits of thousands of electrons, half the
  false pixels, and no flagged star core (4.5 flagged the cores of blended bright stars).
- ``sepmed=True``, ``fsmode='median'``: the separable median is faster and as good here;
  the PSF-convolution fine-structure mode recovered only 92 % and flagged more cores.

With these settings, the star guard below and the frame's variance, over eight such frames:
98.0 % of hit pixels and 99.5 % of hits flagged, 0.006 % of the pixels away from any hit
flagged (0.04 % counting the neighbours of hits, which share their charge in real
detectors and are flagged on purpose), and none of 1040 star cores.

On top of astroscrappy, a star guard: a flagged group whose brightest pixel has all four
neighbours above ``star_ratio`` of its height over the local background is a star core,
not a cosmic ray (a hit's neighbours sit at the background; a star sampled at FWHM >= 2.5 px
keeps at least ~40 % of its peak in every direct neighbour). The price is that a hit fainter
than the peak of the star it lands on is left unflagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import astroscrappy
import numpy as np
from scipy import ndimage

__all__ = ["CosmicRayDetector", "mask_cosmics"]


@dataclass(frozen=True)
class CosmicRayDetector:
    """Configured once, then called on calibrated frames.

    Parameters
    ----------
    sigclip, sigfrac, objlim, niter, sepmed, cleantype, fsmode
        Passed to :func:`astroscrappy.detect_cosmics`.
    star_ratio : float or None
        Star guard threshold (see the module notes); None turns the guard off.
    """

    sigclip: float = 6.0
    sigfrac: float = 0.3
    objlim: float = 5.0
    niter: int = 1
    sepmed: bool = True
    cleantype: str = "meanmask"
    fsmode: str = "median"
    star_ratio: float | None = 0.3

    def __call__(self, data: np.ndarray, *, gain: float, read_noise: float, saturation: float = np.inf,
                 mask: np.ndarray | None = None, variance: np.ndarray | None = None) -> np.ndarray:
        """Return the cosmic-ray mask (True = hit) of ``data``.

        Parameters
        ----------
        data : ndarray
            Calibrated frame in ADU, sky included (the noise model needs it).
        gain : float
            e-/ADU.
        read_noise : float
            Electrons.
        saturation : float, optional
            Level (ADU, in ``data``'s units) above which pixels are saturated; astroscrappy
            masks them and protects the surroundings of saturated stars.
        mask : bool ndarray, optional
            Pixels to ignore (bad, saturated); they are never flagged.
        variance : ndarray, optional
            Per-pixel variance of ``data`` (ADU^2); otherwise astroscrappy's own model.
        """
        data = np.asarray(data, dtype=np.float32)
        if data.ndim != 2:
            raise ValueError(f"data must be a 2-D image, got {data.ndim} dimensions")
        if gain <= 0:
            raise ValueError(f"gain must be positive, got {gain}")
        inmask = np.zeros(data.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).copy()
        if inmask.shape != data.shape:
            raise ValueError(f"mask has shape {inmask.shape}, data {data.shape}")
        finite = np.isfinite(data)
        if not finite.all():
            # astroscrappy has no notion of NaN: mask it and give it a harmless value.
            inmask |= ~finite
            data = np.where(finite, data, np.nanmedian(data)).astype(np.float32)
        kwargs = {}
        if variance is not None:
            variance = np.asarray(variance, dtype=np.float32)
            kwargs["invar"] = np.where(np.isfinite(variance), variance, np.nanmedian(variance)).astype(np.float32)
        crmask, _ = astroscrappy.detect_cosmics(
            data, inmask=inmask, gain=float(gain), readnoise=float(read_noise),
            satlevel=float(saturation) * float(gain), sigclip=self.sigclip, sigfrac=self.sigfrac,
            objlim=self.objlim, niter=self.niter, sepmed=self.sepmed, cleantype=self.cleantype,
            fsmode=self.fsmode, **kwargs)
        crmask &= ~inmask
        if self.star_ratio is not None:
            crmask = _unflag_star_cores(crmask, data, self.star_ratio)
        return crmask


def _unflag_star_cores(crmask: np.ndarray, data: np.ndarray, star_ratio: float) -> np.ndarray:
    labels, n = ndimage.label(crmask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return crmask
    # Brightest pixel of each group, from the flagged pixels only (ndimage's
    # maximum_position scans the whole image once per call and is ~10x slower here).
    flagged = np.flatnonzero(crmask)
    group = labels.ravel()[flagged]
    order = np.lexsort((data.ravel()[flagged], group))
    last = np.flatnonzero(np.diff(group[order], append=n + 1))
    ny, nx = data.shape
    y, x = np.divmod(flagged[order[last]], nx)

    def at(dy: int, dx: int) -> np.ndarray:
        return data[np.clip(y + dy, 0, ny - 1), np.clip(x + dx, 0, nx - 1)]

    peak = at(0, 0)
    lowest_neighbour = np.minimum(np.minimum(at(0, 1), at(0, -1)), np.minimum(at(1, 0), at(-1, 0)))
    # Local background: median of the square ring 4 px out (32 pixels), beyond the core.
    ring = np.stack([at(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if max(abs(dy), abs(dx)) == 4])
    background = np.median(ring, axis=0)
    star = (lowest_neighbour - background) > star_ratio * (peak - background)
    keep = np.concatenate([[False], ~star])
    return keep[labels]


def mask_cosmics(data: np.ndarray, *, gain: float, read_noise: float, saturation: float = np.inf,
                 mask: np.ndarray | None = None, variance: np.ndarray | None = None,
                 detector: CosmicRayDetector | None = None) -> np.ndarray:
    """Cosmic-ray mask of a calibrated frame (True = hit), with :class:`CosmicRayDetector` defaults.

    See :meth:`CosmicRayDetector.__call__` for the parameters; ``detector`` overrides the
    settings.
    """
    detector = detector or CosmicRayDetector()
    return detector(data, gain=gain, read_noise=read_noise, saturation=saturation, mask=mask, variance=variance)
