"""reference catalogs: refcats, refcat_stars, HEALPix and cone-search SQL functions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

PostgreSQL has no HEALPix and obsdb assumes no extension (no q3c, no pg_sphere), so the
few HEALPix operations a cone search needs are written here in SQL and PL/pgSQL:

- ``obsdb_healpix_ang2pix(ra, dec, order DEFAULT 16) -> bigint``: nested index of a
  point; the same floating-point steps as astropy-healpix (which fills the ``healpix``
  columns), so both give the same index for the same double-precision position.
- ``obsdb_healpix_ranges(ra, dec, radius_deg, order DEFAULT 16) -> TABLE(lo, hi)``:
  inclusive index ranges at ``order`` covering a cone, for any table with a ``healpix``
  column of that order (``JOIN t ON t.healpix BETWEEN r.lo AND r.hi``). The coarse
  order is chosen from the radius; every coarse pixel whose centre is within
  radius + max_pixrad is taken (a pixel touching the cone has its centre that close),
  enumerated ring by ring as in HEALPix's inclusive ``query_disc``.
  ``obsdb.catalog.healpix.cone_ranges`` computes the same ranges in Python.
- ``obsdb_ang_sep_deg(ra1, dec1, ra2, dec2)``: haversine great-circle distance.
- ``obsdb_refcat_cone(catalog, ra, dec, radius_deg)``: the stars of a reference catalog
  within the cone, nearest first, through ``obsdb_refcat_stars_in_ranges`` (one index
  range scan of ``ix_refcat_stars_refcat_id_healpix`` per range, then the exact
  distance). PL/pgSQL with ``SET jit = off``: see the comment there.

The SQL text is frozen in this migration (later code changes need a new migration).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


HEALPIX_SQL = r"""
CREATE FUNCTION obsdb_healpix_order() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 16 $$;

CREATE FUNCTION obsdb_healpix_ang2pix(ra_deg double precision, dec_deg double precision,
                                      hp_order integer DEFAULT 16)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
-- The steps of astropy-healpix (astrometry.net's xyztohp, then xy to nested), operation
-- for operation, so that the same double-precision position gives the same index.
DECLARE
  nside bigint;
  ns double precision;
  lon double precision;
  lat double precision;
  coz double precision;
  vx double precision;
  vy double precision;
  vz double precision;
  halfpi constant double precision := 0.5 * pi();
  twothirds constant double precision := 2.0::float8 / 3.0::float8;
  phi double precision;
  phi_t double precision;
  kx double precision;
  ky double precision;
  xx double precision;
  yy double precision;
  q double precision;
  sector integer;
  face integer;
  ix bigint;
  iy bigint;
BEGIN
  IF hp_order < 0 OR hp_order > 29 THEN
    RAISE EXCEPTION 'HEALPix order % outside 0..29', hp_order;
  END IF;
  IF NOT (dec_deg BETWEEN -90 AND 90) OR ra_deg IN ('Infinity', '-Infinity', 'NaN') THEN
    RAISE EXCEPTION 'obsdb_healpix_ang2pix: position (%, %) is not on the sky', ra_deg, dec_deg;
  END IF;
  nside := 1::bigint << hp_order;
  ns := nside;
  lon := ra_deg * 0.017453292519943295::float8;
  lat := dec_deg * 0.017453292519943295::float8;
  coz := cos(lat);
  vx := coz * cos(lon);
  vy := coz * sin(lon);
  vz := sin(lat);
  phi := atan2(vy, vx);
  IF phi < 0.0 THEN phi := phi + 2.0 * pi(); END IF;
  -- phi_t = fmod(phi, halfpi), computed exactly (each subtraction is exact, Sterbenz)
  phi_t := phi;
  WHILE phi_t >= 2.0 * halfpi LOOP phi_t := phi_t - 2.0 * halfpi; END LOOP;
  IF phi_t >= halfpi THEN phi_t := phi_t - halfpi; END IF;
  sector := ((round((phi - phi_t) / halfpi)::integer % 4) + 4) % 4;
  IF vz >= twothirds OR vz <= -twothirds THEN
    q := (coz / sqrt(1.0 + abs(vz))) * sqrt(3.0::float8);
    kx := q * abs(ns * (2.0 * phi_t - pi()) / pi());
    ky := q * ns * 2.0 * phi_t / pi();
    IF vz > 0 THEN
      xx := ns - kx; yy := ns - ky; face := sector;
    ELSE
      xx := ky; yy := kx; face := 8 + sector;
    END IF;
  ELSE
    xx := ((vz + twothirds) / (4.0::float8 / 3.0::float8) + phi_t / halfpi) * ns;
    yy := ((vz + twothirds) / (4.0::float8 / 3.0::float8) - phi_t / halfpi + 1.0) * ns;
    IF xx >= ns THEN
      xx := xx - ns;
      IF yy >= ns THEN yy := yy - ns; face := sector;
      ELSE face := ((sector + 1) % 4) + 4; END IF;
    ELSE
      IF yy >= ns THEN yy := yy - ns; face := sector + 4;
      ELSE face := 8 + sector; END IF;
    END IF;
  END IF;
  ix := greatest(0, least(nside - 1, floor(xx)::bigint));
  iy := greatest(0, least(nside - 1, floor(yy)::bigint));
  -- nested index: x bits at even positions, y bits at odd positions
  ix := (ix | (ix << 16)) & 281470681808895;
  ix := (ix | (ix << 8)) & 71777214294589695;
  ix := (ix | (ix << 4)) & 1085102592571150095;
  ix := (ix | (ix << 2)) & 3689348814741910323;
  ix := (ix | (ix << 1)) & 6148914691236517205;
  iy := (iy | (iy << 16)) & 281470681808895;
  iy := (iy | (iy << 8)) & 71777214294589695;
  iy := (iy | (iy << 4)) & 1085102592571150095;
  iy := (iy | (iy << 2)) & 3689348814741910323;
  iy := (iy | (iy << 1)) & 6148914691236517205;
  RETURN face * nside * nside + (ix | (iy << 1));
END $$;

CREATE FUNCTION obsdb_healpix_max_pixrad(hp_order integer)
RETURNS double precision LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
  n double precision := (1::bigint << hp_order)::double precision;
  za constant double precision := 2.0::float8 / 3.0::float8;
  sa double precision;
  pa double precision;
  ax double precision;
  ay double precision;
  t1 double precision;
  zb double precision;
  sb double precision;
  c1 double precision;
  c2 double precision;
  c3 double precision;
BEGIN
  sa := sqrt((1.0 - za) * (1.0 + za));
  pa := pi() / (4.0 * n);
  ax := sa * cos(pa);
  ay := sa * sin(pa);
  t1 := (1.0 - 1.0 / n) * (1.0 - 1.0 / n);
  zb := 1.0 - t1 / 3.0;
  sb := sqrt((1.0 - zb) * (1.0 + zb));
  c1 := ay * zb;
  c2 := za * sb - ax * zb;
  c3 := -(ay * sb);
  RETURN atan2(sqrt(c1 * c1 + c2 * c2 + c3 * c3), ax * sb + za * zb);
END $$;

CREATE FUNCTION obsdb_healpix_coarse_order(radius_deg double precision, fine_order integer DEFAULT 16)
RETURNS integer LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT CASE WHEN radius_deg <= 0 THEN fine_order
    ELSE greatest(0, least(fine_order,
      floor(ln((sqrt(pi() / 3.0::float8) * 4.0::float8) / radians(radius_deg)) / ln(2.0::float8))::integer))
  END
$$;


CREATE FUNCTION obsdb__healpix_ring_above(z double precision, nside bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT CASE
    WHEN abs(z) <= 2.0::float8 / 3.0::float8 THEN trunc(nside * (2.0 - 1.5 * z))::bigint
    WHEN z > 0 THEN trunc(nside * sqrt(3.0 * (1.0 - abs(z))))::bigint
    ELSE 4 * nside - trunc(nside * sqrt(3.0 * (1.0 - abs(z))))::bigint - 1
  END
$$;

CREATE FUNCTION obsdb_healpix_ranges(ra_deg double precision, dec_deg double precision,
                                                radius_deg double precision, fine_order integer DEFAULT 16)
RETURNS TABLE(lo bigint, hi bigint)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE ROWS 12 AS $$
-- Coarse order k from the radius; every pixel of order k whose centre lies within
-- radius + max_pixrad(k) of the cone's centre, ring by ring (a ring's pixel centres are
-- evenly spaced in longitude, so the ones within the cone's longitude span at that
-- latitude are a run of consecutive pixels); each pixel shifted to fine_order and
-- adjacent ones merged. obsdb.catalog.healpix.coarse_pixels is the same in Python.
DECLARE
  k integer;
  n bigint;
  shift integer;
  big_r double precision;
  cos_r double precision;
  lat double precision;
  z0 double precision;
  s0 double precision;
  phi0 double precision;
  theta0 double precision;
  i1 bigint;
  i2 bigint;
  i bigint;
  m bigint;
  z double precision;
  st double precision;
  npix bigint;
  off double precision;
  x double precision;
  dphi double precision;
  jlo bigint;
  jhi bigint;
  j bigint;
  ring_lat double precision;
  pix bigint[] := '{}';
BEGIN
  IF fine_order < 0 OR fine_order > 29 THEN
    RAISE EXCEPTION 'HEALPix order % outside 0..29', fine_order;
  END IF;
  IF NOT (dec_deg BETWEEN -90 AND 90) OR ra_deg IN ('Infinity', '-Infinity', 'NaN') THEN
    RAISE EXCEPTION 'obsdb_healpix_ranges: centre (%, %) is not on the sky', ra_deg, dec_deg;
  END IF;
  IF NOT (radius_deg >= 0) OR radius_deg = 'Infinity' THEN
    RAISE EXCEPTION 'obsdb_healpix_ranges: radius % is not a finite angle >= 0', radius_deg;
  END IF;
  k := obsdb_healpix_coarse_order(radius_deg, fine_order);
  n := 1::bigint << k;
  shift := 2 * (fine_order - k);
  big_r := radians(radius_deg) + 1.001 * obsdb_healpix_max_pixrad(k) + 1e-12;
  IF big_r >= pi() THEN
    RETURN QUERY SELECT 0::bigint, (12::bigint << (2 * fine_order)) - 1;
    RETURN;
  END IF;
  lat := radians(dec_deg);
  z0 := sin(lat);
  s0 := cos(lat);
  phi0 := radians(ra_deg);
  theta0 := pi() / 2.0 - lat;
  cos_r := cos(big_r);
  i1 := greatest(1, obsdb__healpix_ring_above(cos(greatest(0.0, theta0 - big_r)), n));
  i2 := least(4 * n - 1, obsdb__healpix_ring_above(cos(least(pi(), theta0 + big_r)), n) + 1);
  FOR ii IN i1..i2 LOOP
    i := ii;
    IF i < n THEN
      z := 1.0 - (i * i)::double precision / (3.0 * n * n); npix := 4 * i; off := 0.5;
    ELSIF i <= 3 * n THEN
      z := (2 * n - i)::double precision * 2.0 / (3.0 * n); npix := 4 * n;
      off := CASE WHEN (i - n) % 2 = 0 THEN 0.5 ELSE 0.0 END;
    ELSE
      m := 4 * n - i;
      z := -(1.0 - (m * m)::double precision / (3.0 * n * n)); npix := 4 * m; off := 0.5;
    END IF;
    st := sqrt((1.0 - z) * (1.0 + z));
    IF st * s0 > 0.0 THEN
      x := (cos_r - z * z0) / (st * s0);
    ELSIF z * z0 >= cos_r THEN
      x := -2.0;
    ELSE
      x := 2.0;
    END IF;
    CONTINUE WHEN x > 1.0;
    IF x <= -1.0 THEN
      jlo := 0; jhi := npix - 1;
    ELSE
      dphi := acos(x);
      jlo := ceil((phi0 - dphi) * npix / (2.0 * pi()) - off)::bigint;
      jhi := floor((phi0 + dphi) * npix / (2.0 * pi()) - off)::bigint;
      IF jhi - jlo + 1 >= npix THEN jlo := 0; jhi := npix - 1; END IF;
    END IF;
    ring_lat := degrees(asin(z));
    FOR jj IN jlo..jhi LOOP
      j := jj;
      pix := pix || obsdb_healpix_ang2pix(
        degrees(((((j % npix) + npix) % npix) + off) * (2.0 * pi() / npix)), ring_lat, k);
    END LOOP;
  END LOOP;
  RETURN QUERY
    SELECT min(p) << shift, ((max(p) + 1) << shift) - 1
    FROM (SELECT d.p, d.p - row_number() OVER (ORDER BY d.p) AS grp
          FROM (SELECT DISTINCT unnest(pix) AS p) AS d) AS g
    GROUP BY g.grp
    ORDER BY 1;
END $$;

COMMENT ON FUNCTION obsdb_healpix_order() IS
  'HEALPix order (nested) of every healpix column in obsdb: 16, pixels of 3.2 arcsec.';
COMMENT ON FUNCTION obsdb_healpix_ang2pix(double precision, double precision, integer) IS
  'Nested HEALPix index of (RA_DEG, DEC_DEG) at order HP_ORDER (default 16), as astropy-healpix computes it.';
COMMENT ON FUNCTION obsdb_healpix_max_pixrad(integer) IS
  'Largest angular distance (radians) from a pixel centre to any point of the pixel at that order.';
COMMENT ON FUNCTION obsdb_healpix_coarse_order(double precision, integer) IS
  'Order at which obsdb_healpix_ranges covers a cone of RADIUS_DEG: pixels a quarter to half the radius across.';
COMMENT ON FUNCTION obsdb_healpix_ranges(double precision, double precision, double precision, integer) IS
  'Sorted, disjoint, inclusive ranges [lo, hi] of nested HEALPix indices at FINE_ORDER (default 16) '
  'that hold every point within RADIUS_DEG of (RA_DEG, DEC_DEG); join with healpix BETWEEN lo AND hi, '
  'then test the exact distance (obsdb_ang_sep_deg).';
"""

CONE_SQL = r"""
CREATE FUNCTION obsdb_ang_sep_deg(ra1 double precision, dec1 double precision,
                                  ra2 double precision, dec2 double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT degrees(2.0 * asin(least(1.0::float8, sqrt(
    sin((radians(dec2) - radians(dec1)) / 2.0) * sin((radians(dec2) - radians(dec1)) / 2.0)
    + cos(radians(dec1)) * cos(radians(dec2))
      * sin((radians(ra2) - radians(ra1)) / 2.0) * sin((radians(ra2) - radians(ra1)) / 2.0)))))
$$;

COMMENT ON FUNCTION obsdb_ang_sep_deg(double precision, double precision, double precision, double precision) IS
  'Great-circle distance in degrees between (ra1, dec1) and (ra2, dec2), haversine formula.';

CREATE FUNCTION obsdb_refcat_stars_in_ranges(refcat integer, lo bigint[], hi bigint[],
                                             ra_deg double precision, dec_deg double precision,
                                             radius_deg double precision)
RETURNS TABLE(star_id bigint, catalog_id text, ra double precision, "dec" double precision,
              pm_ra real, pm_dec real, mag real[], mag_err real[], sep_arcsec double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE ROWS 100
-- The planner cannot know how few rows a HEALPix range holds (it assumes 0.5 % of the
-- table per range), so on a large table it would compile this short query with JIT,
-- which costs ~10 ms; without JIT the whole cone takes well under a millisecond.
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
    SELECT s.star_id, s.catalog_id, s.ra, s.dec, s.pm_ra, s.pm_dec, s.mag, s.mag_err,
           3600.0 * obsdb_ang_sep_deg(ra_deg, dec_deg, s.ra, s.dec)
    FROM unnest(lo, hi) AS r(range_lo, range_hi)
    -- One index range scan per HEALPix range; OFFSET 0 keeps the planner from flattening
    -- the subquery into a join it could answer with a sequential scan.
    CROSS JOIN LATERAL (
      SELECT t.star_id, t.catalog_id, t.ra, t.dec, t.pm_ra, t.pm_dec, t.mag, t.mag_err
      FROM refcat_stars AS t
      WHERE t.refcat_id = refcat AND t.healpix BETWEEN r.range_lo AND r.range_hi
      OFFSET 0
    ) AS s
    WHERE obsdb_ang_sep_deg(ra_deg, dec_deg, s.ra, s.dec) <= radius_deg;
END $$;

COMMENT ON FUNCTION obsdb_refcat_stars_in_ranges(integer, bigint[], bigint[], double precision, double precision, double precision) IS
  'Stars of refcats.id REFCAT with healpix in one of the inclusive ranges [LO[i], HI[i]] and within '
  'RADIUS_DEG of (RA_DEG, DEC_DEG): the query behind obsdb_refcat_cone and obsdb.catalog.cone.cone_search.';

CREATE FUNCTION obsdb_refcat_cone(catalog text, ra_deg double precision, dec_deg double precision,
                                  radius_deg double precision)
RETURNS TABLE(star_id bigint, catalog_id text, ra double precision, "dec" double precision,
              pm_ra real, pm_dec real, mag real[], mag_err real[], sep_arcsec double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE ROWS 100 SET jit = off AS $$
#variable_conflict use_column
DECLARE
  cat integer;
  los bigint[];
  his bigint[];
BEGIN
  SELECT c.id INTO cat FROM refcats AS c WHERE c.name = catalog;
  IF cat IS NULL THEN
    RAISE EXCEPTION 'no reference catalog named %', quote_literal(catalog)
      USING HINT = 'SELECT name FROM refcats lists the loaded catalogs.';
  END IF;
  SELECT array_agg(r.lo ORDER BY r.lo), array_agg(r.hi ORDER BY r.lo) INTO los, his
  FROM obsdb_healpix_ranges(ra_deg, dec_deg, radius_deg) AS r;
  RETURN QUERY
    SELECT * FROM obsdb_refcat_stars_in_ranges(cat, los, his, ra_deg, dec_deg, radius_deg) AS s
    ORDER BY s.sep_arcsec, s.star_id;
END $$;

COMMENT ON FUNCTION obsdb_refcat_cone(text, double precision, double precision, double precision) IS
  'Stars of reference catalog CATALOG within RADIUS_DEG degrees of (RA_DEG, DEC_DEG), nearest first. '
  'Positions at refcats.epoch (no proper motion applied); mag/mag_err ordered as refcats.bands; '
  'pm_ra includes cos(dec), mas/yr.';
"""

# refcat_stars has no FOREIGN KEY to refcats (its per-row check makes a bulk load about
# 1.7 times slower); these statement-level triggers delete a catalog's stars with it.
TRIGGERS_SQL = r"""
CREATE FUNCTION obsdb_refcats_delete_stars() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM refcat_stars WHERE refcat_id IN (SELECT id FROM gone);
  RETURN NULL;
END $$;

CREATE TRIGGER refcats_delete_stars AFTER DELETE ON refcats
  REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION obsdb_refcats_delete_stars();

CREATE FUNCTION obsdb_refcats_truncate_stars() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE refcat_stars;
  RETURN NULL;
END $$;

CREATE TRIGGER refcats_truncate_stars AFTER TRUNCATE ON refcats
  FOR EACH STATEMENT EXECUTE FUNCTION obsdb_refcats_truncate_stars();
"""

FUNCTIONS = (
    "obsdb_refcat_cone(text, double precision, double precision, double precision)",
    "obsdb_refcat_stars_in_ranges(integer, bigint[], bigint[], double precision, double precision, double precision)",
    "obsdb_ang_sep_deg(double precision, double precision, double precision, double precision)",
    "obsdb_healpix_ranges(double precision, double precision, double precision, integer)",
    "obsdb__healpix_ring_above(double precision, bigint)",
    "obsdb_healpix_coarse_order(double precision, integer)",
    "obsdb_healpix_max_pixrad(integer)",
    "obsdb_healpix_ang2pix(double precision, double precision, integer)",
    "obsdb_healpix_order()",
)


def upgrade() -> None:
    op.create_table('refcats',
    sa.Column('id', sa.Integer(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('bands', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('source_path', sa.Text(), nullable=False),
    sa.Column('n_stars', sa.BigInteger(), nullable=False),
    sa.Column('has_pm', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('epoch', sa.Double(), nullable=True),
    sa.Column('max_pm', sa.Double(), nullable=True),
    sa.Column('column_map', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('loaded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('n_stars >= 0', name=op.f('ck_refcats_n_stars')),
    sa.CheckConstraint('NOT has_pm OR epoch IS NOT NULL', name=op.f('ck_refcats_pm_epoch')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refcats')),
    sa.UniqueConstraint('name', name=op.f('uq_refcats_name'))
    )
    op.create_table('refcat_stars',
    sa.Column('star_id', sa.BigInteger(), nullable=False),
    sa.Column('healpix', sa.BigInteger(), nullable=False),
    sa.Column('ra', sa.Double(), nullable=False),
    sa.Column('dec', sa.Double(), nullable=False),
    sa.Column('refcat_id', sa.Integer(), nullable=False),
    sa.Column('pm_ra', sa.REAL(), nullable=True),
    sa.Column('pm_dec', sa.REAL(), nullable=True),
    sa.Column('catalog_id', sa.Text(), nullable=True),
    sa.Column('mag', postgresql.ARRAY(sa.REAL()), nullable=False),
    sa.Column('mag_err', postgresql.ARRAY(sa.REAL()), nullable=True),
    sa.CheckConstraint('ra >= 0 AND ra < 360 AND dec >= -90 AND dec <= 90', name=op.f('ck_refcat_stars_position')),
    sa.PrimaryKeyConstraint('refcat_id', 'star_id', name=op.f('pk_refcat_stars'))
    )
    op.create_index('ix_refcat_stars_refcat_id_healpix', 'refcat_stars', ['refcat_id', 'healpix'], unique=False)
    op.execute(HEALPIX_SQL)
    op.execute(CONE_SQL)
    op.execute(TRIGGERS_SQL)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS refcats_truncate_stars ON refcats")
    op.execute("DROP TRIGGER IF EXISTS refcats_delete_stars ON refcats")
    op.execute("DROP FUNCTION IF EXISTS obsdb_refcats_truncate_stars()")
    op.execute("DROP FUNCTION IF EXISTS obsdb_refcats_delete_stars()")
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    op.drop_index('ix_refcat_stars_refcat_id_healpix', table_name='refcat_stars')
    op.drop_table('refcat_stars')
    op.drop_table('refcats')
