"""researcher views (v_lightcurve, v_sources, v_frames, v_zeropoints) and the source cone search

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The views are the stable interface for people who query the database directly (see
docs/sql.md): columns are only ever added to them, never renamed or removed, so that
saved queries keep working when the tables underneath change. They show live frames
only (``frames.superseded_at IS NULL``: a re-written file's old version is hidden).

``obsdb_source_cone(ra_deg, dec_deg, radius_deg)`` is a plain SQL function: the planner
inlines it, and a cone is one range scan of ``ix_sources_healpix`` per HEALPix range
(``obsdb_healpix_ranges``, 0003) followed by the exact (haversine) distance test. The
per-range subquery is fenced (``OFFSET 0``) so that it is planned with the range as a
parameter: without the fence the planner, which cannot know how narrow the ranges are,
may prefer to read every source once and test each against every range.

No roles here: roles belong to the whole server and need CREATEROLE, so they are made by
``obsdb init --create-roles`` or ``deploy/roles.sql`` (``obsdb.database.roles``), which
also grant on these views. Migrations always run as the database owner.

No new index: the light curve reads ``ix_measurements_source_frame`` and the primary keys
of frames, frame_solutions and zeropoints; the cone reads ``ix_sources_healpix``.

The SQL text is frozen in this migration (later changes need a new migration).
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


VIEWS_SQL = r"""
CREATE VIEW v_frames AS
SELECT f.id                                   AS frame_id,
       f.path                                 AS file,
       i.name                                 AS instrument,
       f.imagetyp,
       f.object,
       f.filter,
       f.exptime,
       f.xbinning,
       f.ybinning,
       f.date_obs,
       f.mjd_mid,
       f.night,
       f.ra                                   AS pointing_ra,
       f.dec                                  AS pointing_dec,
       coalesce(fs.airmass, f.airmass)        AS airmass,
       f.ccd_temp,
       f.state,
       f.state_reason,
       r.path                                 AS product,
       r.bias_id,
       r.dark_id,
       r.flat_id,
       r.missing                              AS missing_calibrations,
       fs.field,
       fs.method                              AS wcs_method,
       fs.wcs_rms_arcsec,
       fs.pixel_scale,
       fs.fwhm                                AS fwhm_px,
       fs.fwhm * fs.pixel_scale               AS fwhm_arcsec,
       fs.ellipticity,
       coalesce(fs.sky, r.sky)                AS sky,
       coalesce(fs.sky_rms, r.sky_rms)        AS sky_rms,
       fs.n_detections,
       fs.apertures[fs.aperture_index + 1]    AS aperture_radius_px,
       fs.aperture_correction,
       coalesce(z.ensemble_zp, z.zp)          AS zero_point,
       coalesce(z.ensemble_zp_err, z.zp_err)  AS zero_point_err,
       z.lim_mag_5,
       fs.flags                               AS frame_flags
FROM frames AS f
JOIN instruments AS i ON i.id = f.instrument_id
LEFT JOIN reductions AS r ON r.frame_id = f.id
LEFT JOIN frame_solutions AS fs ON fs.frame_id = f.id
LEFT JOIN zeropoints AS z ON z.frame_id = f.id
WHERE f.superseded_at IS NULL;

COMMENT ON VIEW v_frames IS
  'One row per live frame (every type): header facts, pipeline state and its reason, the '
  'calibrated product and the masters it used, image quality (FWHM, sky), astrometry and '
  'the zero point. Times UTC; mjd_mid is mid-exposure. Stable: columns are only added.';
COMMENT ON COLUMN v_frames.file IS 'Path of the raw FITS file.';
COMMENT ON COLUMN v_frames.night IS 'Local date at the start of the observing night.';
COMMENT ON COLUMN v_frames.product IS 'Path of the calibrated FITS file (NULL: not reduced).';
COMMENT ON COLUMN v_frames.fwhm_arcsec IS 'Median stellar FWHM, arcsec (fwhm_px in pixels).';
COMMENT ON COLUMN v_frames.sky IS 'Median sky level, ADU per pixel.';
COMMENT ON COLUMN v_frames.zero_point IS
  'mag = inst_mag + zero_point (+ colour term): the ensemble zero point when solved, else the frame''s own fit.';
COMMENT ON COLUMN v_frames.lim_mag_5 IS 'Limiting magnitude at S/N 5 for a point source.';
COMMENT ON COLUMN v_frames.frame_flags IS 'Flag bits ORed into every measurement of the frame (256: a master missing).';

CREATE VIEW v_zeropoints AS
SELECT z.frame_id,
       f.night,
       f.date_obs,
       coalesce(fs.mjd_mid, f.mjd_mid)        AS mjd,
       coalesce(z.filter, f.filter)           AS filter,
       z.band,
       fs.field,
       coalesce(fs.airmass, f.airmass)        AS airmass,
       z.zp,
       z.zp_err,
       z.colour_term,
       z.rms,
       z.n_stars,
       z.ensemble_zp,
       z.ensemble_zp_err,
       coalesce(z.ensemble_zp, z.zp)          AS zero_point,
       coalesce(z.ensemble_zp_err, z.zp_err)  AS zero_point_err,
       z.ensemble_id,
       e.tied_to_catalog,
       z.lim_mag_3,
       z.lim_mag_5,
       z.lim_mag_10,
       f.path                                 AS file
FROM zeropoints AS z
JOIN frames AS f ON f.id = z.frame_id
LEFT JOIN frame_solutions AS fs ON fs.frame_id = z.frame_id
LEFT JOIN ensembles AS e ON e.id = z.ensemble_id
WHERE f.superseded_at IS NULL;

COMMENT ON VIEW v_zeropoints IS
  'Photometric calibration of each live frame: its own catalog fit (zp) and the ensemble '
  'zero point of its field and filter; zero_point is the one measurements use. '
  'Stable: columns are only added.';
COMMENT ON COLUMN v_zeropoints.zp IS 'Per-frame fit against the reference catalog: mag = inst_mag + zp + colour_term * colour.';
COMMENT ON COLUMN v_zeropoints.ensemble_zp IS 'Zero point from the ensemble solution of the field and filter.';
COMMENT ON COLUMN v_zeropoints.tied_to_catalog IS 'False: the ensemble is relative only (flag 512 on its measurements).';

CREATE VIEW v_sources AS
SELECT s.id                                   AS source_id,
       s.ra,
       s.dec,
       s.healpix,
       s.refcat_id,
       s.refstar_id,
       s.pm_ra,
       s.pm_dec,
       s.epoch,
       (SELECT array_agg(t.name ORDER BY t.name) FROM targets AS t WHERE t.source_id = s.id) AS targets,
       s.stats,
       s.first_frame_id,
       s.created_at
FROM sources AS s;

COMMENT ON VIEW v_sources IS
  'Every source (star or target) with its position, reference-catalog link, target names '
  'and per-filter summary (stats: {"<filter>": {"mag", "mag_err", "n", "chi2_dof", '
  '"variable"}} from the ensemble). Stable: columns are only added.';
COMMENT ON COLUMN v_sources.healpix IS 'Nested HEALPix index at order 16 (see obsdb_source_cone).';
COMMENT ON COLUMN v_sources.targets IS 'Names of the targets placed on this source, or NULL.';

CREATE VIEW v_lightcurve AS
SELECT m.source_id,
       m.frame_id,
       m.id                                   AS measurement_id,
       f.filter,
       coalesce(m.mjd, fs.mjd_mid, f.mjd_mid) AS mjd,
       m.bjd_tdb,
       f.date_obs,
       f.night,
       m.mag,
       m.mag_err,
       m.upper_limit,
       (m.forced AND (m.snr IS NULL OR m.snr < 3)) AS is_upper_limit,
       m.flux,
       m.flux_err,
       m.snr,
       m.inst_mag,
       m.inst_mag_err,
       coalesce(z.ensemble_zp, z.zp)          AS zero_point,
       coalesce(z.ensemble_zp_err, z.zp_err)  AS zero_point_err,
       coalesce(fs.airmass, f.airmass)        AS airmass,
       fs.fwhm * fs.pixel_scale               AS fwhm_arcsec,
       m.flags,
       m.forced,
       m.x,
       m.y,
       m.ra,
       m.dec,
       m.background,
       f.exptime,
       f.path                                 AS file,
       fs.field,
       fs.apertures[fs.aperture_index + 1]    AS aperture_radius_px,
       fs.aperture_correction,
       fs.apertures,
       m.fluxes,
       m.flux_errs
FROM measurements AS m
JOIN frames AS f ON f.id = m.frame_id
LEFT JOIN frame_solutions AS fs ON fs.frame_id = m.frame_id
LEFT JOIN zeropoints AS z ON z.frame_id = m.frame_id
WHERE f.superseded_at IS NULL;

COMMENT ON VIEW v_lightcurve IS
  'One row per measurement of a source on a live frame: time, calibrated magnitude, fluxes, '
  'calibration and conditions. Filter on source_id (indexed). Stable: columns are only added.';
COMMENT ON COLUMN v_lightcurve.mjd IS 'Mid-exposure MJD, UTC.';
COMMENT ON COLUMN v_lightcurve.bjd_tdb IS 'Barycentric Julian date (TDB) of mid-exposure; NULL when the site is unknown.';
COMMENT ON COLUMN v_lightcurve.mag IS 'Calibrated magnitude in the reported aperture, aperture-corrected to total flux.';
COMMENT ON COLUMN v_lightcurve.upper_limit IS '3-sigma upper limit (mag) when the star is not detected (S/N < 3).';
COMMENT ON COLUMN v_lightcurve.is_upper_limit IS 'Forced photometry with S/N < 3: use upper_limit, not mag.';
COMMENT ON COLUMN v_lightcurve.flux IS 'Sky-subtracted flux in the reported aperture, ADU per exposure.';
COMMENT ON COLUMN v_lightcurve.flags IS
  'Bits: 1 saturated, 2 edge, 4 bad pixel, 8 cosmic ray, 16 blended, 32 centroid shift, '
  '64 S/N < 5, 128 forced, 256 frame uncalibrated, 512 not tied to a catalog.';
COMMENT ON COLUMN v_lightcurve.zero_point IS 'mag = inst_mag + zero_point (+ colour term).';
COMMENT ON COLUMN v_lightcurve.apertures IS 'Aperture radii (pixels) of fluxes/flux_errs; aperture_radius_px is the reported one.';
"""

CONE_SQL = r"""
CREATE FUNCTION obsdb_source_cone(ra_deg double precision, dec_deg double precision,
                                  radius_deg double precision)
RETURNS TABLE(source_id bigint, ra double precision, "dec" double precision, distance_arcsec double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT s.id, s.ra, s.dec, 3600.0 * obsdb_ang_sep_deg(ra_deg, dec_deg, s.ra, s.dec)
  FROM obsdb_healpix_ranges(ra_deg, dec_deg, radius_deg) AS r
  CROSS JOIN LATERAL (
    SELECT c.id, c.ra, c.dec FROM sources AS c
    WHERE c.healpix BETWEEN r.lo AND r.hi
    OFFSET 0  -- planned per range: an index range scan, never a scan of every source
  ) AS s
  WHERE obsdb_ang_sep_deg(ra_deg, dec_deg, s.ra, s.dec) <= radius_deg
  ORDER BY 4, 1
$$;

COMMENT ON FUNCTION obsdb_source_cone(double precision, double precision, double precision) IS
  'Sources within RADIUS_DEG degrees of (RA_DEG, DEC_DEG), ICRS degrees, nearest first, '
  'with their distance in arcsec. Join v_lightcurve or v_sources on source_id.';
"""


def upgrade() -> None:
    op.execute(VIEWS_SQL)
    op.execute(CONE_SQL)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS obsdb_source_cone(double precision, double precision, double precision)")
    for view in ("v_lightcurve", "v_sources", "v_zeropoints", "v_frames"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
