"""Seeded synthetic detector frames with known truth, for the calibration tests.

Units: ADU unless a name ends in ``_e``. The detector: gain 1.5 e-/ADU, read noise 6 e-,
saturation 60000 ADU, a bias of ~1000 ADU with a column pattern, a dark rate of ~0.02
ADU/s with hot pixels, a flat with a smooth vignetting and pixel-to-pixel response.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAIN = 1.5
READ_NOISE = 6.0
SATURATION = 60000.0


@dataclass
class Detector:
    """True bias, dark rate (ADU/s) and flat of a synthetic detector."""

    bias: np.ndarray
    dark_rate: np.ndarray
    flat: np.ndarray
    hot: np.ndarray
    dead: np.ndarray


def make_detector(shape=(128, 160), seed: int = 0, n_hot: int = 20, n_dead: int = 15) -> Detector:
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    bias = 1000.0 + 3.0 * np.sin(x / 7.0) + 0.01 * y + rng.normal(0, 1.0, shape)
    dark_rate = np.full(shape, 0.02) * rng.uniform(0.8, 1.2, shape)
    hot = np.zeros(shape, bool)
    hot.flat[rng.choice(ny * nx, n_hot, replace=False)] = True
    dark_rate[hot] = rng.uniform(2.0, 20.0, n_hot)
    r2 = ((x - nx / 2) ** 2 + (y - ny / 2) ** 2) / (0.75 * max(nx, ny)) ** 2
    flat = (1.0 - 0.15 * r2) * rng.normal(1.0, 0.01, shape)
    dead = np.zeros(shape, bool)
    dead.flat[rng.choice(ny * nx, n_dead, replace=False)] = True
    flat[dead] = rng.uniform(0.0, 0.3, n_dead)
    return Detector(bias.astype(np.float32), dark_rate.astype(np.float32), flat.astype(np.float32), hot, dead)


def expose(det: Detector, signal: np.ndarray | float, exptime: float, rng: np.random.Generator,
           *, bias: bool = True, saturate: bool = True) -> np.ndarray:
    """A raw frame: Poisson(flat * signal + dark) electrons, read noise, bias, saturation.

    ``signal`` is the sky + sources in ADU per pixel before the flat.
    """
    electrons = (det.flat * np.asarray(signal) + det.dark_rate * exptime) * GAIN
    raw = rng.poisson(np.maximum(electrons, 0)) + rng.normal(0, READ_NOISE, det.bias.shape)
    raw = raw / GAIN + (det.bias if bias else 0)
    if saturate:
        raw = np.minimum(raw, SATURATION)
    return raw.astype(np.float32)


def moffat(shape, x0: float, y0: float, flux: float, fwhm: float, beta: float = 3.0) -> np.ndarray:
    """A Moffat star of total ``flux`` (integrated on a 5x sub-sampled grid)."""
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    sub = 5
    y, x = np.mgrid[0:shape[0] * sub, 0:shape[1] * sub]
    x = (x + 0.5) / sub - 0.5
    y = (y + 0.5) / sub - 0.5
    profile = (1 + ((x - x0) ** 2 + (y - y0) ** 2) / alpha**2) ** (-beta)
    profile = profile.reshape(shape[0], sub, shape[1], sub).sum(axis=(1, 3))
    return flux * profile * (beta - 1) / (np.pi * alpha**2) / sub**2


def star_field(shape, rng: np.random.Generator, n_stars: int = 60, sky: float = 300.0,
               peak_max: float = 40000.0) -> tuple[np.ndarray, np.ndarray]:
    """Sky plus Moffat stars (FWHM 2.5-4 px); returns the image (ADU) and the star centres."""
    image = np.full(shape, sky, dtype=np.float64)
    ny, nx = shape
    centres = np.column_stack([rng.uniform(8, nx - 8, n_stars), rng.uniform(8, ny - 8, n_stars)])
    for (x0, y0) in centres:
        fwhm = rng.uniform(2.5, 4.0)
        beta = rng.uniform(2.5, 4.5)
        # Peak of a Moffat: flux (beta - 1) / (pi alpha^2); draw peaks log-uniformly.
        alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        peak = 10 ** rng.uniform(2.0, np.log10(peak_max))
        flux = peak * np.pi * alpha**2 / (beta - 1)
        # Stamp only around the star (fast and enough: the wings are tiny at 15 px).
        x1, x2 = int(max(x0 - 15, 0)), int(min(x0 + 16, nx))
        y1, y2 = int(max(y0 - 15, 0)), int(min(y0 + 16, ny))
        image[y1:y2, x1:x2] += moffat((y2 - y1, x2 - x1), x0 - x1, y0 - y1, flux, fwhm, beta)
    return image, centres


def cosmic_rays(shape, rng: np.random.Generator, n_hits: int = 200, gain: float = GAIN) -> tuple[np.ndarray, np.ndarray, list]:
    """Cosmic-ray hits in ADU: single pixels and short tracks of 2000-30000 e- per pixel.

    Returns the added image, the mask of hit pixels and the list of hits (arrays of pixel
    indices), half of them single pixels and half tracks of 2-6 pixels.
    """
    ny, nx = shape
    image = np.zeros(shape)
    hits = []
    for i in range(n_hits):
        x, y = rng.integers(3, nx - 3), rng.integers(3, ny - 3)
        if i % 2 == 0:
            pix = [(y, x)]
        else:
            length = rng.integers(2, 7)
            angle = rng.uniform(0, np.pi)
            t = np.arange(length)
            xs = np.clip(np.round(x + t * np.cos(angle)).astype(int), 0, nx - 1)
            ys = np.clip(np.round(y + t * np.sin(angle)).astype(int), 0, ny - 1)
            pix = sorted(set(zip(ys.tolist(), xs.tolist())))
        pix = np.array(pix)
        image[pix[:, 0], pix[:, 1]] += rng.uniform(2000, 30000, len(pix)) / gain
        hits.append(pix)
    return image, image > 0, hits
