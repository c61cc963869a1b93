"""The measure stage: one calibrated frame to measurements in the catalog.

Background and stars, the WCS, aperture photometry of every detected star and forced
photometry at every known source and target the frame covers, the crossmatch to
``sources``, the frame's own zero point against the reference catalog, and its depth.
Re-running it replaces the frame's measurements, solution and zero point in one
transaction; the field's ensemble (``ensemble_stage``) then revises the magnitudes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from obsdb.calibration.products import read_product
from obsdb.catalog import sources as source_table
from obsdb.catalog.crossmatch import match_positions
from obsdb.config import Settings
from obsdb.instruments import load_profiles, select_profile
from obsdb.models import Frame, Reduction
from obsdb.models.photometry import FrameSolution, Measurement, WcsAttachment, ZeroPoint
from obsdb.photometry import flags as F
from obsdb.photometry.apertures import measure_apertures
from obsdb.photometry.background import estimate_background
from obsdb.photometry.blends import catalog_blends
from obsdb.photometry.detect import detect_stars, measure_psf
from obsdb.photometry.frame_wcs import FrameWcs, NeedsWcs, field_key, footprint, pixel_scale_of, solve_frame_wcs
from obsdb.photometry.growth import choose_aperture, default_annulus, default_radii
from obsdb.photometry.limits import limiting_magnitudes
from obsdb.photometry.refstars import RefStars, reference_stars
from obsdb.photometry.scintillation import scintillation_sigma
from obsdb.photometry.times import bjd_tdb, site_location
from obsdb.photometry.writer import copy_measurements
from obsdb.photometry.zeropoint import fit_zero_point
from obsdb.provenance import VERSION, config_hash

log = logging.getLogger("obsdb.photometry")

# Flags that keep a star out of the zero-point fit and the ensemble.
NOT_CALIBRATOR = F.SATURATED | F.EDGE | F.BAD_PIXEL | F.COSMIC_RAY | F.BLENDED | F.CENTROID_SHIFT | F.LOW_SNR
# Detections below this S/N do not create sources (noise peaks, cosmic-ray remnants).
NEW_SOURCE_MIN_SNR = 5.0


@dataclass(frozen=True)
class FrameMeasured:
    frame_id: int
    state: str  # measured | needs_wcs | failed | skipped
    reason: str | None = None
    field: str | None = None
    filter: str | None = None
    n_measurements: int = 0
    method: str | None = None


def inst_mag(flux, flux_err) -> tuple[np.ndarray, np.ndarray]:
    """-2.5 log10(flux) per exposure and its error (NaN where the flux is not positive)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        good = flux > 0
        mag = np.where(good, -2.5 * np.log10(np.where(good, flux, 1.0)), np.nan)
        err = np.where(good, 1.0857362 * np.asarray(flux_err, dtype=float) / np.where(good, flux, 1.0), np.nan)
    return mag, err


def site_of(header: fits.Header, settings: Settings):
    """The observatory (astropy EarthLocation or None) and its height (m) for a frame."""
    info = select_profile(header, load_profiles(settings.instruments)).read(header)
    lat = info.site_lat if info.site_lat is not None else settings.site.lat
    lon = info.site_lon if info.site_lon is not None else settings.site.lon
    height = info.site_height if info.site_height is not None else settings.site.height
    return site_location(lat, lon, height), height


def _telescope_diameter_m(header: fits.Header, settings: Settings) -> float | None:
    if settings.photometry.telescope_diameter_m:
        return settings.photometry.telescope_diameter_m
    try:
        mm = float(header.get("APTDIA") or 0)
    except (TypeError, ValueError):
        return None
    return mm / 1000.0 if mm > 0 else None


def _load(sessions: sessionmaker, frame_id: int):
    with sessions() as session:
        frame = session.get(Frame, frame_id)
        reduction = session.scalar(select(Reduction).where(Reduction.frame_id == frame_id))
        attachment = session.get(WcsAttachment, frame_id)
        attached = attachment.header if attachment is not None else None
        session.expunge_all()
    return frame, reduction, attached


def _mark(sessions: sessionmaker, frame_id: int, state: str, reason: str | None) -> None:
    with sessions() as session, session.begin():
        session.execute(update(Frame).where(Frame.id == frame_id).values(state=state, state_reason=reason))


def complete_planes(frame: Frame, sci: np.ndarray, err: np.ndarray | None, mask: np.ndarray | None):
    """A product's error and mask planes, made when it has none (Poisson and read noise;
    nothing masked)."""
    if err is None:
        err = np.sqrt(np.clip(sci, 0, None) / (frame.gain or 1.0) + (frame.read_noise or 10.0) ** 2).astype(np.float32)
    if mask is None:
        mask = np.zeros(sci.shape, dtype=np.uint8)
    return err, mask


def measure_frame(sessions: sessionmaker, settings: Settings, frame_id: int) -> FrameMeasured:
    """Measure one reduced light frame (see the module docstring)."""
    ph = settings.photometry
    frame, reduction, attached = _load(sessions, frame_id)
    if frame is None or frame.superseded_at is not None or reduction is None:
        return FrameMeasured(frame_id, "skipped", "frame gone, superseded or not reduced")
    sci, err, mask, header = read_product(reduction.path)
    if not np.isfinite(sci).any():
        # Nothing a WCS or another attempt could fix (and "needs a WCS" would have the
        # frame measured again every time its field gets a new frame): the camera or the
        # software wrote no image. Failed, with the reason, for a person to look at.
        reason = "the image has no finite pixel (all NaN or infinite): nothing to measure"
        log.warning("frame %d: %s", frame_id, reason)
        _mark(sessions, frame_id, "failed", reason)
        return FrameMeasured(frame_id, "failed", reason, field_key(frame), frame.filter)
    err, mask = complete_planes(frame, sci, err, mask)
    shape = sci.shape

    sky = estimate_background(sci, mask)
    stars = detect_stars(sci, sky, mask, threshold=ph.detect_threshold, min_area=ph.detect_min_area, err=err)
    psf = measure_psf(sci, stars, sky, mask, err=err)
    band = ph.band_of(frame.filter)
    field = field_key(frame)

    with sessions() as session:
        probe = _probe_wcs(header, frame, shape)
        refstars = reference_stars(session, settings, band, probe, frame.mjd_mid) if probe is not None else None
        try:
            solved = solve_frame_wcs(session, frame, header, stars, shape, refstars, ph, attached)
        except NeedsWcs as exc:
            _mark(sessions, frame_id, "needs_wcs", str(exc))
            return FrameMeasured(frame_id, "needs_wcs", str(exc), field, frame.filter)
        if refstars is None or probe is None or _far(probe, solved.wcs, shape):
            refstars = reference_stars(session, settings, band, footprint(solved.wcs, shape), frame.mjd_mid)

    measured = _measure(sessions, settings, frame, reduction, sci, err, mask, header, sky, stars, psf, solved,
                        refstars, band, field)
    log.info("frame %d: %d measurements, WCS by %s (rms %.3f px, %s matches)", frame_id, measured.n_measurements,
             solved.method, solved.rms_px or float("nan"), solved.n_matches)
    return measured


def _probe_wcs(header: fits.Header, frame: Frame, shape):
    """A first guess of the footprint (to fetch catalog stars before the WCS is fixed)."""
    from obsdb.astrometry.initial import wcs_from_header

    wcs = wcs_from_header(header)
    if wcs is not None:
        ra, dec, radius = footprint(wcs, shape)
        return ra, dec, radius * 1.3
    return None


def _far(probe, wcs, shape) -> bool:
    ra, dec, radius = footprint(wcs, shape)
    return abs(dec - probe[1]) > 0.1 * radius or abs(((ra - probe[0] + 180) % 360) - 180) * np.cos(np.radians(dec)) > 0.1 * radius


def _measure(sessions, settings, frame, reduction, sci, err, mask, header, sky, stars, psf, solved: FrameWcs,
             refstars: RefStars | None, band, field) -> FrameMeasured:
    ph = settings.photometry
    wcs = solved.wcs
    shape = sci.shape
    scale = pixel_scale_of(wcs)
    fwhm = float(psf.fwhm) if psf.fwhm and np.isfinite(psf.fwhm) else 2.5
    radii = default_radii(fwhm, factors=ph.aperture_fwhm_factors, fixed=ph.aperture_fixed_radii)
    annulus = default_annulus(fwhm, float(np.max(radii)))
    ra_c, dec_c, radius = footprint(wcs, shape)
    location, height = site_of(header, settings)
    scint = scintillation_of(settings, header, frame, height)
    frame_flags = F.UNCALIBRATED if reduction.missing else 0

    det_ra, det_dec = wcs.pixel_to_world_values(stars["x"], stars["y"])
    det_ra = np.asarray(det_ra) % 360.0
    match_arcsec = max(1.0, 3.0 * (solved.rms_arcsec or 0.0), 0.5 * fwhm * scale)

    # The detections' photometry needs no source, so it is done before the sources are
    # locked: the lock is then held for the crossmatch, the forced photometry and the
    # write, and workers measuring frames of one field wait less for each other.
    aperture_args = dict(radii=radii, annulus=annulus, neighbours_xy=np.column_stack([stars["x"], stars["y"]]),
                         saturation=None, scintillation=scint, recenter=False)
    detected_ap = measure_apertures(sci, err, mask, stars["x"], stars["y"], **aperture_args)

    with sessions() as session, session.begin():
        source_table.lock_sources(session)
        session.execute(delete(Measurement).where(Measurement.frame_id == frame.id))
        source_table.delete_orphans_of(session, frame.id)
        known = source_table.sources_in_cone(session, ra_c, dec_c, radius)
        di, si, _ = match_positions(det_ra, det_dec, known.ra, known.dec, match_arcsec)
        source_of = np.full(len(stars), -1, dtype=np.int64)
        source_of[di] = known.id[si]

        # Sources for new stars, linked to their catalog star when there is one.
        new = np.flatnonzero((source_of < 0) & (stars["snr"] >= NEW_SOURCE_MIN_SNR))
        link_rc = link_rs = None
        if refstars is not None and len(new):
            ni, ri, _ = match_positions(det_ra[new], det_dec[new], refstars.ra, refstars.dec, match_arcsec)
            link_rc = np.full(len(new), -1, dtype=np.int64)
            link_rs = np.full(len(new), -1, dtype=np.int64)
            link_rc[ni] = refstars.refcat_id
            link_rs[ni] = refstars.star_id[ri]
        source_of[new] = source_table.create_sources(session, det_ra[new], det_dec[new], frame_id=frame.id,
                                                     refcat_id=link_rc, refstar_id=link_rs)
        sources_upto = source_table.newest_source_id(session)
        # The catalog star of each detection's source (-1: none, or another catalog's).
        refstar_of = np.full(len(stars), -1, dtype=np.int64)
        if refstars is not None:
            same = known.refcat_id[si] == refstars.refcat_id
            refstar_of[di[same]] = known.refstar_id[si[same]]
            if link_rs is not None:
                refstar_of[new] = link_rs
        detected = np.flatnonzero(source_of >= 0)

        # Forced photometry where a known source was not detected.
        unmatched = np.setdiff1d(np.arange(len(known)), si)
        fx, fy = wcs.world_to_pixel_values(known.ra[unmatched], known.dec[unmatched])
        fx, fy = np.asarray(fx, dtype=float), np.asarray(fy, dtype=float)
        inside = (fx >= 0) & (fy >= 0) & (fx <= shape[1] - 1) & (fy <= shape[0] - 1)
        forced = unmatched[inside]
        src = np.concatenate([source_of[detected], known.id[forced]])
        is_forced = np.concatenate([np.zeros(len(detected), bool), np.ones(len(forced), bool)])
        forced_refstar = (known.refstar_id[forced] if refstars is None else
                          np.where(known.refcat_id[forced] == refstars.refcat_id, known.refstar_id[forced], -1))
        catalog_pos = (refstars.index_of(np.concatenate([refstar_of[detected], forced_refstar]))
                       if refstars is not None else np.full(len(src), -1))

        ap = detected_ap.take(detected)
        if len(forced):
            ap = ap.append(measure_apertures(sci, err, mask, fx[inside], fy[inside], **aperture_args))
        k = _reported_aperture(ph, ap, radii)
        flux, flux_err = ap.flux[:, k], ap.flux_err[:, k]
        apcorr = aperture_correction(ap.flux, ap.flux_err, ap.flags, ap.snr, k, ~is_forced)
        imag, imag_err = inst_mag(flux, flux_err)
        imag = imag + (apcorr or 0.0)
        beta = psf.beta if psf.beta else 3.0
        flags = point_flags(ap, k, is_forced, frame_flags, refstars, catalog_pos, wcs, fwhm, beta)
        zp = _zero_point(settings, refstars, catalog_pos, imag, imag_err, flags, ap.snr[:, k], is_forced)
        copy_measurements(session, measurement_columns(frame, src, is_forced, ap, k, imag, imag_err, apcorr, flags,
                                                       zp, refstars, catalog_pos, wcs, location))
        limits = limiting_magnitudes(sky.rms_level, float(radii[k]), (zp.zp if zp is not None else 0.0) + (apcorr or 0.0))
        _write_frame_rows(session, settings, frame, reduction, field, band, wcs, solved, shape, psf, sky, stars,
                          radii, k, annulus, frame_flags, location, zp, limits if zp is not None else None,
                          ra_c, dec_c, radius, scale, apcorr, sources_upto)
        session.execute(update(Frame).where(Frame.id == frame.id).values(
            state="measured", state_reason=None if not reduction.missing else
            f"measured; reduced without {', '.join(reduction.missing)}"))
    return FrameMeasured(frame.id, "measured", None, field, frame.filter, len(src), solved.method)


def scintillation_of(settings: Settings, header: fits.Header, frame: Frame, height: float | None) -> float:
    """The frame's relative scintillation noise (0 when it cannot be known or is off)."""
    ph = settings.photometry
    diameter = _telescope_diameter_m(header, settings)
    if ph.scintillation_coefficient > 0 and diameter and frame.airmass and frame.airmass >= 1.0 and frame.exptime:
        return scintillation_sigma(diameter, frame.airmass, height or 0.0, frame.exptime,
                                   coefficient=ph.scintillation_coefficient, correction=ph.scintillation_correction)
    return 0.0


def point_flags(ap, k: int, is_forced, frame_flags: int, refstars: RefStars | None, catalog_pos, wcs,
                fwhm: float, beta: float) -> np.ndarray:
    """Flags of each point in the reported aperture ``k``: the pixels', forced, the frame's,
    and blended with a catalog neighbour."""
    flags = ap.flags[:, k] | np.where(is_forced, F.FORCED, 0) | frame_flags
    if refstars is not None and len(refstars):
        cat_x, cat_y = wcs.world_to_pixel_values(refstars.ra, refstars.dec)
        flags = flags | catalog_blends(ap.x, ap.y, catalog_pos, cat_x, cat_y, refstars.rank_mag,
                                       float(ap.radii[k]), fwhm, beta)
    return flags


def measurement_columns(frame: Frame, source_id, is_forced, ap, k: int, imag, imag_err, apcorr: float | None,
                        flags, zp, refstars: RefStars | None, catalog_pos, wcs, location) -> dict:
    """The ``measurements`` columns of a frame's points (``copy_measurements``): magnitudes
    from the frame's zero point ``zp`` (the ensemble revises them), 3-sigma upper limits
    below S/N 3, sky positions and BJD_TDB."""
    flux, flux_err = ap.flux[:, k], ap.flux_err[:, k]
    mag = mag_err = upper = None
    if zp is not None:
        colour = refstars.colour_at(catalog_pos) if refstars is not None else np.zeros(len(flux))
        mag = imag + zp.zp + (zp.colour_term or 0.0) * np.nan_to_num(colour)
        mag_err = np.hypot(imag_err, zp.zp_err)
        faint = ap.snr[:, k] < 3.0
        ul_inst, _ = inst_mag(np.clip(flux, 0, None) + 3.0 * flux_err, flux_err)
        upper = np.where(faint, ul_inst + (apcorr or 0.0) + zp.zp, np.nan)
    else:
        flags = flags | F.NOT_CATALOG_TIED
    ra, dec = wcs.pixel_to_world_values(ap.x, ap.y)
    ra = np.asarray(ra) % 360.0
    n = len(flux)
    return dict(
        frame_id=np.full(n, frame.id), source_id=source_id, x=ap.x, y=ap.y, ra=ra, dec=dec,
        mjd=np.full(n, frame.mjd_mid if frame.mjd_mid is not None else np.nan),
        bjd_tdb=bjd_tdb(frame.mjd_mid, ra, dec, location),
        fluxes=ap.flux, flux_errs=ap.flux_err, flux=flux, flux_err=flux_err, background=ap.bkg,
        snr=ap.snr[:, k], inst_mag=imag, inst_mag_err=imag_err, mag=mag, mag_err=mag_err,
        upper_limit=upper, flags=flags, forced=is_forced,
    )


# Stars that fix a frame's aperture correction, and how many it needs.
APCORR_MIN_SNR = 20.0
APCORR_MIN_STARS = 5


def aperture_correction(fluxes, flux_errs, flags, snr, k: int, detected) -> float | None:
    """Magnitude from aperture ``k`` to the largest one: the clipped, inverse-variance
    weighted mean over clean detected stars of -2.5 log10(F_largest / F_k). None when too
    few such stars. (Every star of the frame shares this number, so its error moves the
    zero point, not the magnitudes; weighting keeps it small on sparse frames.)"""
    if k == fluxes.shape[1] - 1:
        return 0.0
    clean = detected & (flags[:, k] == 0) & (flags[:, -1] & ~F.LOW_SNR == 0) & (snr[:, k] >= APCORR_MIN_SNR)
    clean &= (fluxes[:, k] > 0) & (fluxes[:, -1] > 0)
    if clean.sum() < APCORR_MIN_STARS:
        return None
    big, small = fluxes[clean, -1], fluxes[clean, k]
    dm = -2.5 * np.log10(big / small)
    # the largest aperture's noise dominates (both apertures share the core's photons)
    err = 1.0857 * np.sqrt(np.clip(flux_errs[clean, -1] ** 2 - flux_errs[clean, k] ** 2, 0, None)) / big
    w = 1.0 / np.maximum(err, 1e-4) ** 2
    keep = np.ones(len(dm), bool)
    for _ in range(5):
        mean = np.sum(w[keep] * dm[keep]) / np.sum(w[keep])
        spread = 1.4826 * np.median(np.abs(dm[keep] - mean)) + 1e-4
        new = np.abs(dm - mean) < 3.0 * np.maximum(spread, err)
        if new.sum() < APCORR_MIN_STARS or np.array_equal(new, keep):
            break
        keep = new
    return float(np.sum(w[keep] * dm[keep]) / np.sum(w[keep]))


def _reported_aperture(ph, ap, radii) -> int:
    if ph.aperture == "auto":
        return int(choose_aperture(ap.flux, ap.flux_err, radii, ap.flags))
    return int(np.argmin(np.abs(np.asarray(radii) - float(ph.aperture))))


def _zero_point(settings, refstars, catalog_pos, imag, imag_err, flags, snr, is_forced):
    """The frame's own zero point against the catalog, or None."""
    ph = settings.photometry
    if refstars is None or refstars.mag is None:
        return None
    pos = catalog_pos
    use = (pos >= 0) & ~is_forced & ((flags & NOT_CALIBRATOR) == 0) & (snr >= ph.zp_min_snr) & np.isfinite(imag)
    use[use] &= np.isfinite(refstars.mag[pos[use]])
    if use.sum() < ph.zp_min_stars:
        return None
    p = pos[use]
    colour = refstars.colour[p] if refstars.colour is not None else None
    fit_colour = bool(ph.fit_colour_term and colour is not None and np.isfinite(colour).sum() >= 2 * ph.zp_min_stars)
    try:
        return fit_zero_point(imag[use], imag_err[use], refstars.mag[p], refstars.mag_err[p],
                              colour=colour, fit_colour=fit_colour, min_stars=ph.zp_min_stars)
    except ValueError as exc:
        log.warning("no zero point: %s", exc)
        return None


def _write_frame_rows(session, settings, frame, reduction, field, band, wcs, solved, shape, psf, sky, stars, radii,
                      k, annulus, frame_flags, location, zp, limits, ra_c, dec_c, radius, scale, apcorr,
                      sources_upto) -> None:
    header = wcs.to_header(relax=True)
    header["NAXIS1"], header["NAXIS2"] = shape[1], shape[0]
    bjd = bjd_tdb(frame.mjd_mid, ra_c, dec_c, location)
    solution = dict(
        frame_id=frame.id, reduction_id=reduction.id, field=field, wcs_header=header.tostring(),
        method=solved.method, reference_frame_id=solved.reference_frame_id, wcs_rms_px=solved.rms_px,
        wcs_rms_arcsec=solved.rms_arcsec, n_astrometric_matches=solved.n_matches, ra_center=ra_c,
        dec_center=dec_c, radius_deg=radius, pixel_scale=scale, fwhm=_finite(psf.fwhm),
        ellipticity=_finite(psf.ellipticity), psf_beta=_finite(psf.beta), sky=_finite(sky.level),
        sky_rms=_finite(sky.rms_level),
        n_detections=len(stars), sources_upto=sources_upto, aperture_correction=apcorr,
        apertures=[float(r) for r in radii], aperture_index=k,
        annulus=[float(a) for a in annulus], airmass=frame.airmass, mjd_mid=frame.mjd_mid,
        bjd_tdb_center=float(bjd[0]) if bjd is not None else None, flags=frame_flags,
        obsdb_version=VERSION, config_hash=config_hash(settings),
    )
    _upsert(session, FrameSolution, solution)
    zrow = dict(frame_id=frame.id, filter=frame.filter, band=band, n_stars=0,
                ensemble_zp=None, ensemble_zp_err=None, ensemble_id=None)
    if zp is not None:
        zrow.update(zp=zp.zp, zp_err=zp.zp_err, colour_term=zp.colour_term, rms=zp.rms, n_stars=zp.n_stars,
                    lim_mag_3=limits[3], lim_mag_5=limits[5], lim_mag_10=limits[10])
    else:
        zrow.update(zp=None, zp_err=None, colour_term=None, rms=None, lim_mag_3=None, lim_mag_5=None,
                    lim_mag_10=None)
    _upsert(session, ZeroPoint, zrow)


def _finite(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _upsert(session: Session, model, values: dict) -> None:
    stmt = insert(model).values(**values)
    changes = {c: stmt.excluded[c] for c in values if c != "frame_id"}
    if "created_at" in model.__table__.c:  # a replaced row is a new product: say when it was made
        changes["created_at"] = func.now()
    session.execute(stmt.on_conflict_do_update(index_elements=["frame_id"], set_=changes))
