"""Comparing what the photometry pipeline wrote with what the simulator says was true."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy import text

from obsdb.simulate import Truth
from obsdb.simulate.variability import delta_mag


@dataclass
class FrameRow:
    id: int
    path: str
    method: str
    wcs: WCS
    exptime: float
    zp: float | None
    ensemble_zp: float | None
    ensemble_zp_err: float | None


def frame_rows(session) -> list[FrameRow]:
    rows = session.execute(text(
        "SELECT f.id, f.path, s.method, s.wcs_header, f.exptime, z.zp, z.ensemble_zp, z.ensemble_zp_err "
        "FROM frames f JOIN frame_solutions s ON s.frame_id = f.id JOIN zeropoints z ON z.frame_id = f.id "
        "ORDER BY f.id")).all()
    return [FrameRow(r.id, r.path, r.method, WCS(fits.Header.fromstring(r.wcs_header)), r.exptime, r.zp,
                     r.ensemble_zp, r.ensemble_zp_err) for r in rows]


def astrometric_rms_px(truth: Truth, frame: FrameRow) -> float:
    """Rms pixel distance, over the true stars on the frame, between where our WCS and the
    true WCS put them."""
    rec = truth.frame(frame.path)
    stars = truth.star_fluxes(rec)
    edge = 5
    inside = ((stars["x"] > edge) & (stars["y"] > edge) & (stars["x"] < truth.size - edge)
              & (stars["y"] < truth.size - edge))
    ra, dec = truth.true_wcs(rec).pixel_to_world_values(stars["x"][inside], stars["y"][inside])
    x, y = frame.wcs.world_to_pixel_values(ra, dec)
    return float(np.sqrt(np.mean((x - stars["x"][inside]) ** 2 + (y - stars["y"][inside]) ** 2)))


def true_zero_point(truth: Truth, frame: FrameRow) -> float:
    """The frame's true zero point in obsdb's convention (per exposure, not per second)."""
    rec = truth.frame(frame.path)
    return rec.true_zero_point + 2.5 * np.log10(frame.exptime)


@dataclass
class Points:
    """Measurements of catalog stars with their truth: one row per measurement."""

    star: np.ndarray
    band: np.ndarray
    mjd: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    true: np.ndarray
    flags: np.ndarray
    snr: np.ndarray
    forced: np.ndarray
    source: np.ndarray


def catalog_star_points(session, truth: Truth) -> Points:
    """Every measurement of a source linked to a catalog star (the catalog's own ids, loaded
    with ``--id-col id``, are the truth's star ids)."""
    rows = session.execute(text(
        "SELECT CAST(r.catalog_id AS bigint) AS refstar_id, f.path, m.mag, m.mag_err, m.flags, m.snr, m.forced, "
        "m.source_id FROM measurements m JOIN sources s ON s.id = m.source_id JOIN frames f ON f.id = m.frame_id "
        "JOIN refcat_stars r ON r.refcat_id = s.refcat_id AND r.star_id = s.refstar_id "
        "WHERE m.mag IS NOT NULL")).all()
    recs = [truth.frame(r.path) for r in rows]
    star = np.array([r.refstar_id for r in rows], dtype=np.int64)
    band = np.array([rec.band for rec in recs])
    mjd = np.array([rec.mjd_mid for rec in recs])
    true = np.empty(len(rows))
    for b in set(band.tolist()):
        s = band == b
        true[s] = truth.true_mag(star[s], b, mjd[s])
    return Points(star, band, mjd, np.array([r.mag for r in rows], float), np.array([r.mag_err for r in rows], float),
                  true, np.array([r.flags for r in rows], np.int64), np.array([r.snr for r in rows], float),
                  np.array([r.forced for r in rows], bool), np.array([r.source_id for r in rows], np.int64))


def variable_fit(truth: Truth, star_id: int, band: str, mjd, mag, mag_err, *, shift_days: float = 0.0):
    """Weighted fit ``mag = a + s * delta_true(mjd - shift)``; returns (s, s_err, chi2, ptp,
    expected chi2 per dof of a constant-star fit to the true variation with these errors)."""
    i = int(truth.stars.index_of(star_id)[0])
    params = {k: np.asarray(v)[i:i + 1] for k, v in truth.stars.columns.items()}
    delta = np.array([float(delta_mag(params, band, np.array([t - shift_days]))[0]) for t in mjd])
    w = 1.0 / np.asarray(mag_err) ** 2
    design = np.column_stack([np.ones_like(delta), delta])
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    coef = cov @ (design.T @ (w * mag))
    chi2 = float(np.sum(w * (mag - design @ coef) ** 2))
    mean = np.sum(w * delta) / np.sum(w)
    expected = float(np.sum(w * (delta - mean) ** 2) / max(len(delta) - 1, 1))
    return float(coef[1]), float(np.sqrt(cov[1, 1])), chi2, float(np.ptp(delta)), expected
