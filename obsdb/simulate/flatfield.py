"""The true flat field: vignetting, dust donuts and pixel-to-pixel sensitivity.

The flat of a filter on a night is the product of

* a radial vignetting ``1 - a rho^2 - b rho^4`` around an optical centre slightly off the
  frame centre, losing ``vignetting_corner`` at the corners (same every night);
* dust shadows: out-of-focus rings whose hole is the secondary mirror's shadow. Dust
  on the camera window shows in every filter, dust on a filter only through it; each
  donut wanders a few pixels from one night to the next;
* pixel-to-pixel quantum-efficiency scatter, mostly common to the filters, with a small
  filter-dependent part;

normalised to a median of 1. A raw pixel records ``flat * S`` for an incoming signal S.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from obsdb.simulate import streams
from obsdb.simulate.config import BANDS, SimulationConfig


@dataclass(frozen=True)
class Donut:
    """One dust shadow: a ring of fractional depth ``depth`` between the two radii (px)."""

    x: float
    y: float
    r_out: float
    r_in: float
    depth: float


def vignetting(shape, centre, corner_loss):
    """Radial illumination, 1 at ``centre`` and ``1 - corner_loss`` at the farthest corner."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    r2 = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2
    corners = [(0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1)]
    rmax2 = max((cx - centre[0]) ** 2 + (cy - centre[1]) ** 2 for cx, cy in corners)
    rho2 = r2 / rmax2
    # cos^4-like fall-off: mostly quadratic near the centre, steepening outwards.
    return 1.0 - corner_loss * (0.4 * rho2 + 0.6 * rho2 * rho2)


def apply_donuts(flat, donuts, edge_px=1.0):
    """Return ``flat`` multiplied by the dust shadows (soft-edged rings)."""
    out = flat.copy()
    ny, nx = flat.shape
    for d in donuts:
        pad = d.r_out + 4 * edge_px
        x0, x1 = max(int(d.x - pad), 0), min(int(d.x + pad) + 1, nx)
        y0, y1 = max(int(d.y - pad), 0), min(int(d.y + pad) + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - d.x, yy - d.y)
        ring = 1.0 / (1.0 + np.exp(-(r - d.r_in) / edge_px)) - 1.0 / (
            1.0 + np.exp(-(r - d.r_out) / edge_px))
        out[y0:y1, x0:x1] *= 1.0 - d.depth * ring
    return out


def _draw_donuts(rng, n, size, depth_range, radius_range):
    out = []
    for _ in range(n):
        r_out = rng.uniform(*radius_range)
        out.append(Donut(x=rng.uniform(0, size), y=rng.uniform(0, size), r_out=r_out,
                         r_in=0.4 * r_out, depth=rng.uniform(*depth_range)))
    return out


def _drift(donuts, cfg, group, night_index):
    """Move each donut by a random walk of ``night_index`` nightly steps."""
    moved = []
    for i, d in enumerate(donuts):
        dx = dy = 0.0
        for k in range(1, night_index + 1):
            step = streams.stream(cfg.seed, streams.DUST, 100 + k, group, i).normal(
                0.0, cfg.dust_drift_px_per_night, 2)
            dx += step[0]
            dy += step[1]
        moved.append(Donut(d.x + dx, d.y + dy, d.r_out, d.r_in, d.depth))
    return moved


def donuts_for(cfg: SimulationConfig, band: str, night_index: int) -> list[Donut]:
    """Dust shadows seen through ``band`` on night ``night_index`` (0-based)."""
    window = _draw_donuts(streams.stream(cfg.seed, streams.DUST, 0), cfg.n_window_donuts,
                          cfg.size, cfg.dust_depth, cfg.dust_radius_px)
    group = 1 + BANDS.index(band)
    own = _draw_donuts(streams.stream(cfg.seed, streams.DUST, group), cfg.n_dust_donuts,
                       cfg.size, cfg.dust_depth, cfg.dust_radius_px)
    return _drift(window, cfg, 0, night_index) + _drift(own, cfg, group, night_index)


def true_flat(cfg: SimulationConfig, band: str, night_index: int) -> np.ndarray:
    """True flat of ``band`` on night ``night_index``, median-normalised, float32."""
    shape = (cfg.size, cfg.size)
    rng = streams.stream(cfg.seed, streams.FLAT, 0)
    centre = (0.5 * (cfg.size - 1) + rng.uniform(-0.03, 0.03) * cfg.size,
              0.5 * (cfg.size - 1) + rng.uniform(-0.03, 0.03) * cfg.size)
    common = rng.standard_normal(shape) * (0.95 * cfg.pixel_flat_rms)
    own = streams.stream(cfg.seed, streams.FLAT, 1 + BANDS.index(band)).standard_normal(
        shape) * (0.3 * cfg.pixel_flat_rms)
    flat = vignetting(shape, centre, cfg.vignetting_corner) * (1.0 + common + own)
    flat = apply_donuts(flat, donuts_for(cfg, band, night_index))
    return (flat / np.median(flat)).astype(np.float32)
