"""The ensemble stage: one field in one filter, every measured frame at once.

Solves m_ij = M_i + Z_j over the field's constant, clean, well-measured stars (tied to the
catalog when the band has one), then writes the calibrated magnitude of every
measurement of those frames, the ensemble zero point of each frame, the ``ensembles``
row and each source's summary. Re-solved whenever frames of the field are measured, so
earlier magnitudes are revised as a night goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import sessionmaker

from obsdb.config import Settings
from obsdb.models import Frame
from obsdb.models.photometry import Ensemble, FrameSolution, Measurement, Source
from obsdb.photometry import flags as F
from obsdb.photometry.ensemble import calibrate, solve_ensemble
from obsdb.photometry.measure_stage import NOT_CALIBRATOR, inst_mag
from obsdb.photometry.frame_wcs import field_cone
from obsdb.photometry.refstars import reference_stars
from obsdb.provenance import VERSION, config_hash

log = logging.getLogger("obsdb.photometry")

# Stars whose median S/N is below this do not constrain the ensemble (they still get
# magnitudes). The cut is per star, not per measurement: dropping a faint star's noisy-low
# measurements would bias its mean bright.
ENSEMBLE_MIN_SNR = 10.0
# Flags set by the noise, not the pixels: they do not exclude a measurement of a member.
NOISE_FLAGS = F.LOW_SNR


@dataclass(frozen=True)
class EnsembleSolved:
    field: str
    filter: str
    n_frames: int = 0
    n_stars: int = 0
    tied_to_catalog: bool = False
    reason: str | None = None


def solve_field(sessions: sessionmaker, settings: Settings, field: str, filter_name: str) -> EnsembleSolved:
    ph = settings.photometry
    band = ph.band_of(filter_name)
    with sessions() as session:
        frames = session.execute(
            select(FrameSolution.frame_id, FrameSolution.ra_center, FrameSolution.dec_center,
                   FrameSolution.radius_deg, FrameSolution.mjd_mid, FrameSolution.aperture_correction,
                   FrameSolution.airmass)
            .join(Frame, Frame.id == FrameSolution.frame_id)
            .where(FrameSolution.field == field, Frame.filter == filter_name, Frame.state == "measured",
                   Frame.superseded_at.is_(None))
            .order_by(FrameSolution.frame_id)
        ).all()
        if not frames:
            return EnsembleSolved(field, filter_name, reason="no measured frames")
        frame_ids = np.array([f.frame_id for f in frames], dtype=np.int64)
        rows = session.execute(
            select(Measurement.id, Measurement.frame_id, Measurement.source_id, Measurement.flux,
                   Measurement.flux_err, Measurement.snr, Measurement.flags, Measurement.forced,
                   Source.refcat_id, Source.refstar_id, Measurement.inst_mag, Measurement.inst_mag_err)
            .join(Source, Source.id == Measurement.source_id)
            .where(Measurement.frame_id.in_(frame_ids.tolist()))
        ).all()
        mjd = np.nanmedian([f.mjd_mid if f.mjd_mid is not None else np.nan for f in frames])
        refstars = reference_stars(session, settings, band, field_cone(frames), None if np.isnan(mjd) else mjd)
    if not rows:
        return EnsembleSolved(field, filter_name, len(frames), reason="no measurements")

    cols = list(zip(*rows, strict=True))
    mid = np.asarray(cols[0], dtype=np.int64)
    mframe = np.asarray(cols[1], dtype=np.int64)
    msource = np.asarray(cols[2], dtype=np.int64)
    flux = np.asarray(cols[3], dtype=float)
    flux_err = np.asarray(cols[4], dtype=float)
    snr = np.asarray([np.nan if v is None else v for v in cols[5]], dtype=float)
    flags = np.asarray(cols[6], dtype=np.int64)
    forced = np.asarray(cols[7], dtype=bool)
    refcat_id = np.asarray([-1 if v is None else v for v in cols[8]], dtype=np.int64)
    refstar_id = np.asarray([-1 if v is None else v for v in cols[9]], dtype=np.int64)
    # inst_mag carries the frame's aperture correction (see measure_stage)
    imag = np.asarray([np.nan if v is None else v for v in cols[10]], dtype=float)
    imag_err = np.asarray([np.nan if v is None else v for v in cols[11]], dtype=float)

    sources, star_idx = np.unique(msource, return_inverse=True)
    frame_idx = np.searchsorted(frame_ids, mframe)
    apcorr = np.asarray([f.aperture_correction or 0.0 for f in frames])[frame_idx]
    cat_mag = cat_err = colour = None
    if refstars is not None:
        first = np.zeros(len(sources), dtype=np.int64)
        first[star_idx] = np.arange(len(msource))  # any row of each source carries its link
        same = refcat_id[first] == refstars.refcat_id
        pos = np.where(same, refstars.index_of(refstar_id[first]), -1)
        colour = refstars.colour_at(pos)
        if refstars.mag is not None:
            cat_mag = np.where(pos >= 0, refstars.mag[np.clip(pos, 0, None)], np.nan) if len(refstars) else None
            cat_err = np.where(pos >= 0, refstars.mag_err[np.clip(pos, 0, None)], np.nan) if len(refstars) else None

    median_snr = np.full(len(sources), -np.inf)
    detected = ~forced & np.isfinite(snr)
    if detected.any():
        order = np.lexsort((snr[detected], star_idx[detected]))
        s_sorted, v_sorted = star_idx[detected][order], snr[detected][order]
        starts = np.searchsorted(s_sorted, np.arange(len(sources)))
        ends = np.searchsorted(s_sorted, np.arange(len(sources)), side="right")
        has = ends > starts
        median_snr[has] = v_sorted[(starts[has] + ends[has] - 1) // 2]
    good = (~forced & ((flags & (NOT_CALIBRATOR & ~NOISE_FLAGS)) == 0) & np.isfinite(imag)
            & (median_snr[star_idx] >= ENSEMBLE_MIN_SNR))
    fit_colour = bool(ph.fit_colour_term and colour is not None and np.isfinite(colour).sum() >= 10)
    airmass = np.asarray([np.nan if f.airmass is None else f.airmass for f in frames], dtype=float)
    solution = solve_ensemble(
        star_idx[good], frame_idx[good], imag[good], imag_err[good], n_stars=len(sources), n_frames=len(frame_ids),
        cat_mag=cat_mag, cat_err=cat_err, colour=colour if fit_colour else None, fit_colour=fit_colour,
        clip_sigma=ph.ensemble_clip_sigma, min_frames_per_star=ph.ensemble_min_frames,
        airmass=airmass if np.isfinite(airmass).all() else None,
    )
    star_colour = colour[star_idx] if (colour is not None and fit_colour) else None
    # The error of each point: its own noise, the frame's zero point and excess scatter.
    # The tie to the catalog (one offset for the whole field) is the same for every point
    # and star, so it is kept apart, in ensembles.stats, not added to each error bar.
    mag, mag_err = calibrate(imag, imag_err, frame_idx, solution, colour=star_colour, include_systematic=False)
    systematic = solution.systematic_error(frame_idx, star_colour)
    zp_of_row = solution.Z[frame_idx]
    ul_inst, _ = inst_mag(np.clip(np.nan_to_num(flux), 0, None) + 3.0 * flux_err, flux_err)
    upper = np.where(snr < 3.0, ul_inst + apcorr + zp_of_row, np.nan)
    tied = bool(solution.tied_to_catalog)
    row_tied = np.asarray(solution.frame_tied, dtype=bool)[frame_idx]
    new_flags = np.where(row_tied, flags & ~F.NOT_CATALOG_TIED, flags | F.NOT_CATALOG_TIED)

    with sessions() as session, session.begin():
        _update_measurements(session, mid, mag, mag_err, upper, new_flags)
        ensemble_id = _upsert_ensemble(session, settings, field, filter_name, band, refstars, solution, sources,
                                       len(frame_ids), int(good.sum()), float(np.nanmedian(systematic))
                                       if np.isfinite(systematic).any() else None)
        session.execute(
            text("UPDATE zeropoints z SET ensemble_zp = v.zp, ensemble_zp_err = v.err, ensemble_id = :eid "
                 "FROM unnest(CAST(:ids AS bigint[]), CAST(:zp AS float8[]), CAST(:err AS float8[])) AS v(id, zp, err) "
                 "WHERE z.frame_id = v.id"),
            {"eid": ensemble_id, "ids": frame_ids.tolist(), "zp": _nullable(solution.Z), "err": _nullable(solution.Z_err)},
        )
        _update_source_stats(session, filter_name, sources, solution)
    log.info("ensemble %s/%s: %d frames, %d stars, %s", field, filter_name, len(frame_ids), len(sources),
             "tied to the catalog" if tied else "relative (no catalog band)")
    return EnsembleSolved(field, filter_name, len(frame_ids), len(sources), tied)


def _nullable(a) -> list:
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, None).tolist()


def _update_measurements(session, ids, mag, mag_err, upper, flags) -> None:
    session.execute(text(
        "CREATE TEMP TABLE ensemble_update (id bigint, mag float8, mag_err float8, ul real, flags int) ON COMMIT DROP"))
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur, cur.copy("COPY ensemble_update FROM STDIN") as copy:
        for row in zip(ids.tolist(), _nullable(mag), _nullable(mag_err), _nullable(upper), flags.tolist(), strict=True):
            copy.write_row(row)
    session.execute(text(
        "UPDATE measurements m SET mag = u.mag, mag_err = u.mag_err, upper_limit = u.ul, flags = u.flags "
        "FROM ensemble_update u WHERE m.id = u.id"))


def _upsert_ensemble(session, settings, field, filter_name, band, refstars, solution, sources, n_frames, n_obs,
                     systematic) -> int:
    variables = sources[np.asarray(solution.variable, dtype=bool)].tolist()
    values = dict(
        field=field, filter=filter_name, band=band,
        colour=refstars.colour_name if refstars is not None else None,
        colour_term=None if solution.colour_term is None else float(solution.colour_term),
        tied_to_catalog=bool(solution.tied_to_catalog), n_frames=n_frames,
        n_stars=int(np.isfinite(solution.M).sum()), n_observations=n_obs,
        n_components=int(solution.n_components), variables=variables,
        rms=None if solution.rms is None or not np.isfinite(solution.rms) else float(solution.rms),
        stats={"catalog_tie_error": systematic}, obsdb_version=VERSION, config_hash=config_hash(settings),
    )
    stmt = insert(Ensemble).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=["field", "filter"],
                                      set_={**{k: stmt.excluded[k] for k in values}, "solved_at": text("now()")})
    return session.execute(stmt.returning(Ensemble.id)).scalar_one()


def _update_source_stats(session, filter_name, sources, solution) -> None:
    """Each source's summary for this filter: ensemble magnitude, error, chi2, variability,
    and whether it was a comparison star of the ensemble (member)."""
    session.execute(
        text(
            "UPDATE sources s SET stats = s.stats || jsonb_build_object(CAST(:filter AS text), jsonb_build_object("
            "'mag', v.mag, 'mag_err', v.err, 'chi2_dof', v.chi2, 'n', v.n, 'variable', v.var, 'member', v.member)) "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:mag AS float8[]), CAST(:err AS float8[]), "
            "CAST(:chi2 AS float8[]), CAST(:n AS int[]), CAST(:var AS boolean[]), CAST(:member AS boolean[])) "
            "AS v(id, mag, err, chi2, n, var, member) "
            "WHERE s.id = v.id"
        ),
        {"filter": filter_name, "ids": sources.tolist(), "mag": _nullable(solution.M), "err": _nullable(solution.M_err),
         "chi2": _nullable(solution.chi2_dof), "n": np.asarray(solution.n_used, dtype=int).tolist(),
         "var": np.asarray(solution.variable, dtype=bool).tolist(),
         "member": np.asarray(solution.member, dtype=bool).tolist()},
    )

