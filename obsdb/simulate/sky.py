"""The sky scene: stars around each field, the variables among them, the reference catalog.

Stars are drawn over the frame plus ``refcat_margin`` on every side, uniformly on the
tangent plane, with g from a luminosity function ``dN/dm ~ 10**(lf_slope m)`` and g - r
from a clipped normal. Each field also gets a few bright stars (they saturate) and
``variables_per_type`` isolated, well-exposed variables of each kind.

The reference catalog (``refcat.csv``) quotes every star's reference magnitude plus a
per-band systematic offset plus Gaussian noise of exactly the quoted error, which grows
exponentially towards the faint end (an *honest* catalog).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from obsdb.simulate import astrometry, psf, streams
from obsdb.simulate.config import VARIABLE_TYPES, SimulationConfig
from obsdb.simulate.schedule import Field
from obsdb.simulate.variability import delta_mag

#: Columns of ``truth/stars.csv`` and their types.
STAR_COLUMNS = {
    "id": int, "field": str, "ra": float, "dec": float, "g": float, "r": float,
    "var_type": str, "period": float, "epoch": float, "amplitude": float, "shape": str,
    "rise_fraction": float, "depth": float, "secondary_depth": float, "duration": float,
    "slope": float, "amp_ratio_r": float,
}


@dataclass
class StarTable:
    """All simulated stars, one numpy array per column of :data:`STAR_COLUMNS`."""

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.columns["id"].size)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def select(self, mask) -> StarTable:
        """Rows where ``mask`` (bool array or index array) selects."""
        return StarTable({k: v[mask] for k, v in self.columns.items()})

    def index_of(self, star_id) -> np.ndarray:
        """Row index of each id (KeyError for an unknown id)."""
        ids = self.columns["id"]
        order = np.argsort(ids)
        want = np.atleast_1d(np.asarray(star_id, dtype=np.int64))
        pos = np.searchsorted(ids[order], want)
        pos = np.minimum(pos, ids.size - 1)
        found = ids[order][pos] == want
        if not np.all(found):
            raise KeyError(f"unknown star id(s): {want[~found].tolist()}")
        return order[pos]

    def true_mag(self, band: str, mjd) -> np.ndarray:
        """True magnitude of every star at ``mjd`` (scalar, or an array broadcast to rows)."""
        return self.columns[band] + delta_mag(self.columns, band, mjd)

    def write_csv(self, path: Path) -> None:
        """Write with full float precision (repr), so that reading back is exact."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(STAR_COLUMNS)
            cols = [self.columns[c].tolist() for c in STAR_COLUMNS]
            for row in zip(*cols):
                w.writerow([repr(v) if isinstance(v, float) else v for v in row])

    @classmethod
    def read_csv(cls, path: Path) -> StarTable:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = {}
        for name, typ in STAR_COLUMNS.items():
            vals = [typ(r[name]) for r in rows]
            cols[name] = np.array(vals, dtype=np.int64 if typ is int else
                                  float if typ is float else str)
        return cls(cols)


def _nominal_wcs(cfg: SimulationConfig, field: Field):
    return astrometry.tan_wcs_dict(cfg.size, field.ra, field.dec,
                                   cfg.pixel_scale_arcsec / 3600.0, cfg.camera_rotation_deg)


def luminosity_function(rng, n, lo, hi, slope):
    """``n`` magnitudes in [lo, hi] with dN/dm proportional to 10**(slope m)."""
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.uniform(0.0, 1.0, n) * (b - a)) / slope


def _colours(rng, n, mean, sd, lo, hi):
    """Normal colours redrawn until inside [lo, hi] (no pile-up at the limits)."""
    out = rng.normal(mean, sd, n)
    bad = (out < lo) | (out > hi)
    while np.any(bad):
        out[bad] = rng.normal(mean, sd, int(bad.sum()))
        bad = (out < lo) | (out > hi)
    return out


def brightest_safe_mag(cfg: SimulationConfig, band: str, colour: float) -> float:
    """Brightest magnitude in ``band`` that cannot saturate in any light frame.

    Worst case: the sharpest PSF centred on a pixel, airmass 1, no cloud, plus a 40 %
    margin for sky, flat-field peaks and noise.
    """
    flux = 0.6 * psf.saturating_flux(cfg.full_well_e / cfg.gain_e_per_adu, cfg.fwhm_min_px,
                                     cfg.psf_beta)
    zp = cfg.zero_point[band] - cfg.extinction[band]
    return zp + cfg.colour_term[band] * colour - 2.5 * np.log10(flux / cfg.light_exptime)


def _variable_params(rng, kind, window, mjd_ref):
    """Parameters of one variable of ``kind`` (see :mod:`obsdb.simulate.variability`)."""
    w0, w1 = window
    p = {"var_type": kind, "period": 0.0, "epoch": 0.0, "amplitude": 0.0, "shape": "",
         "rise_fraction": 0.0, "depth": 0.0, "secondary_depth": 0.0, "duration": 0.0,
         "slope": 0.0, "amp_ratio_r": 1.0}
    if kind == "pulsator":
        period = rng.uniform(0.1, 0.6)
        p.update(period=period, epoch=w0 + rng.uniform(0.0, period),
                 amplitude=rng.uniform(0.1, 0.5), shape="sine" if period < 0.2 else "rrab",
                 rise_fraction=rng.uniform(0.12, 0.25), amp_ratio_r=0.75)
    elif kind == "eclipsing":
        period = rng.uniform(0.6, 3.0)
        duration = period * rng.uniform(0.05, 0.10)
        depth = rng.uniform(0.2, 0.6)
        # A primary eclipse wholly inside the field's first-night window.
        epoch = rng.uniform(w0 + 0.5 * duration, max(w0 + 0.5 * duration, w1 - 0.5 * duration))
        p.update(period=period, epoch=epoch, depth=depth, duration=duration,
                 secondary_depth=depth * rng.uniform(0.0, 0.5))
    elif kind == "transit":
        duration = rng.uniform(1.5, 3.0) / 24.0
        epoch = rng.uniform(w0 + 0.5 * duration, max(w0 + 0.5 * duration, w1 - 0.5 * duration))
        p.update(period=rng.uniform(1.5, 5.0), epoch=epoch, depth=rng.uniform(0.01, 0.02),
                 duration=duration)
    elif kind == "trend":
        p.update(epoch=mjd_ref, slope=rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.2))
    return p


def _place_isolated(rng, taken_xy, taken_r, n, lo, hi, radius, tries=5000):
    """``n`` positions in [lo, hi)^2 clear of ``taken`` points by their radii.

    The new points also keep ``radius`` from each other.
    """
    if n == 0:
        return np.empty((0, 2))
    if hi - lo < radius:
        return None
    xy, rad = list(taken_xy), list(taken_r)
    out = []
    for _ in range(tries):
        if len(out) == n:
            break
        p = rng.uniform(lo, hi, 2)
        if xy:
            d = np.hypot(*(np.asarray(xy) - p).T)
            if np.any(d < np.asarray(rad)):
                continue
        out.append(p)
        xy.append(p)
        rad.append(radius)
    if len(out) < n:
        return None
    return np.asarray(out)


def field_stars(cfg: SimulationConfig, field_index: int, field: Field, window,
                mjd_ref: float) -> dict[str, np.ndarray]:
    """Stars of one field (columns of :data:`STAR_COLUMNS` except ``id``)."""
    rng = streams.stream(cfg.seed, streams.CATALOG, field_index)
    wcs = _nominal_wcs(cfg, field)
    margin = cfg.refcat_margin * cfg.size
    lo, hi = -0.5 - margin, cfg.size - 0.5 + margin
    area_deg2 = ((hi - lo) * cfg.pixel_scale_arcsec / 3600.0) ** 2
    n = int(rng.poisson(cfg.stars_per_deg2 * area_deg2))
    x = rng.uniform(lo, hi, n)
    y = rng.uniform(lo, hi, n)
    g = luminosity_function(rng, n, *cfg.mag_range, cfg.lf_slope)
    colour = _colours(rng, n, cfg.colour_mean, cfg.colour_sd, *cfg.colour_range)
    params = [_variable_params(rng, "constant", window, mjd_ref) for _ in range(n)]

    # Bright stars, inside the frame: they saturate in most lights.
    nb = cfg.n_bright_per_field
    bx = rng.uniform(20.0, cfg.size - 20.0, nb)
    by = rng.uniform(20.0, cfg.size - 20.0, nb)
    bg = rng.uniform(*cfg.bright_mag_range, nb)
    bc = _colours(rng, nb, cfg.colour_mean, cfg.colour_sd, *cfg.colour_range)

    # Variables: isolated from every other star, well inside the frame wherever the
    # mount points, never saturated.
    vrng = streams.stream(cfg.seed, streams.VARIABLES, field_index)
    nv = cfg.variables_per_type * len(VARIABLE_TYPES)
    iso = cfg.variable_isolation_px
    edge = 4.0 * cfg.pointing_jitter_px + 2.0 * cfg.fwhm_max_px + 8.0
    taken = [(xx, yy) for xx, yy in zip(x, y)] + [(xx, yy) for xx, yy in zip(bx, by)]
    radii = [iso] * n + [3.0 * iso] * nb
    vxy = _place_isolated(vrng, taken, radii, nv, edge, cfg.size - edge, iso)
    if vxy is None:
        raise ValueError(
            f"cannot place {nv} isolated variables in a {cfg.size}-pixel frame; lower "
            "variables_per_type, stars_per_deg2 or variable_isolation_px"
        )
    vkinds = [k for k in VARIABLE_TYPES for _ in range(cfg.variables_per_type)]
    vparams = [_variable_params(vrng, k, window, mjd_ref) for k in vkinds]
    vcol = vrng.uniform(0.1, 0.7, nv)
    vg = vrng.uniform(*cfg.variable_mag_range, nv)
    for i, p in enumerate(vparams):
        # Brightest g and r this star ever reaches during the run.
        brighten = 0.5 * p["amplitude"] + abs(p["slope"]) * (cfg.nights + 1)
        need_g = brightest_safe_mag(cfg, "g", vcol[i]) + brighten
        need_r = brightest_safe_mag(cfg, "r", vcol[i]) + brighten * p["amp_ratio_r"] + vcol[i]
        vg[i] = max(vg[i], need_g, need_r)

    xs = np.concatenate([x, bx, vxy[:, 0]])
    ys = np.concatenate([y, by, vxy[:, 1]])
    gs = np.concatenate([g, bg, vg])
    cs = np.concatenate([colour, bc, vcol])
    allp = params + [_variable_params(rng, "constant", window, mjd_ref)] * nb + vparams
    ra, dec = astrometry.pixel_to_world(wcs, xs, ys)
    cols = {"field": np.array([field.name] * xs.size), "ra": ra % 360.0, "dec": dec,
            "g": gs, "r": gs - cs}
    for key in ("var_type", "period", "epoch", "amplitude", "shape", "rise_fraction",
                "depth", "secondary_depth", "duration", "slope", "amp_ratio_r"):
        vals = [p[key] for p in allp]
        cols[key] = np.array(vals, dtype=str if STAR_COLUMNS[key] is str else float)
    # Catalog order: by right ascension, as catalogs are usually sorted.
    order = np.argsort(cols["ra"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


def make_stars(cfg: SimulationConfig, fields: list[Field], windows, mjd_ref) -> StarTable:
    """Stars of every field with global ids 1..N (in field order)."""
    parts = [field_stars(cfg, i, f, windows[f.name], mjd_ref) for i, f in enumerate(fields)]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cols["id"] = np.arange(1, cols["ra"].size + 1, dtype=np.int64)
    # Round-trip through Python floats: what is written is exactly what is simulated.
    out = {}
    for name, typ in STAR_COLUMNS.items():
        v = cols[name]
        out[name] = v.astype(np.int64 if typ is int else float if typ is float else str)
    return StarTable(out)


def catalog_error(cfg: SimulationConfig, mag):
    """Quoted (and true) catalog error: a floor plus exponential growth to the faint end."""
    return cfg.catalog_err_floor + cfg.catalog_err_at_faint * np.exp(
        (np.asarray(mag) - cfg.mag_range[1]) / cfg.catalog_err_scale_mag)


def write_refcat(cfg: SimulationConfig, stars: StarTable, path: Path) -> None:
    """Write ``refcat.csv``: ``id,ra,dec,g,g_err,r,r_err``.

    Magnitudes are the reference magnitudes plus ``catalog_offset`` plus noise drawn with
    the quoted error.
    """
    rng = streams.stream(cfg.seed, streams.REFCAT)
    out = {}
    for band in ("g", "r"):
        err = catalog_error(cfg, stars[band])
        out[band] = stars[band] + cfg.catalog_offset[band] + rng.normal(0.0, 1.0, len(stars)) * err
        out[band + "_err"] = err
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "ra", "dec", "g", "g_err", "r", "r_err"])
        for i in range(len(stars)):
            w.writerow([int(stars["id"][i]), f"{stars['ra'][i]:.8f}", f"{stars['dec'][i]:.8f}",
                        f"{out['g'][i]:.4f}", f"{out['g_err'][i]:.4f}",
                        f"{out['r'][i]:.4f}", f"{out['r_err'][i]:.4f}"])
