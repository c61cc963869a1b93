"""Reference catalogs: HEALPix maths (Python and SQL), loading every format, validation,
replacement, cone searches against brute force, and the ``obsdb refcat`` commands."""

from __future__ import annotations

import csv
import json
import math
import threading

import astropy.units as u
import numpy as np
import psycopg
import pytest
from astropy.table import Table
from astropy_healpix import HEALPix
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from obsdb.catalog.cone import cone_search, propagate
from obsdb.catalog.healpix import (
    ORDER,
    angular_separation_deg,
    coarse_order,
    coarse_pixels,
    cone_ranges,
    healpix_index,
    max_pixrad,
)
from obsdb.catalog.refcat import (
    PGCOPY_HEADER,
    PGCOPY_TRAILER,
    BandColumns,
    ColumnMap,
    CopyColumn,
    RefcatError,
    drop_refcat,
    encode_copy_rows,
    guess_format,
    list_refcats,
    load_refcat,
    parse_angle,
)
from obsdb.models import RefCatalog, RefStar
from conftest import run_obsdb

FACE_BOUNDARY_DEC = math.degrees(math.asin(2.0 / 3.0))  # 41.81°: polar caps meet the belt


def _libpq(db_url: str) -> str:
    return make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _random_cones(rng: np.random.Generator, n: int, rmin_deg: float, rmax_deg: float):
    """(ra, dec, radius) with the awkward places over-represented: poles, RA 0/360, face edges."""
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    radius = 10 ** rng.uniform(math.log10(rmin_deg), math.log10(rmax_deg), n)
    special_dec = [90.0, -90.0, 89.99999, -89.9999, 0.0, FACE_BOUNDARY_DEC, -FACE_BOUNDARY_DEC, 89.0, -88.5]
    special_ra = [0.0, 359.9999999, 1e-9, 45.0, 90.0, 180.0, 359.5, 0.5]
    for i in range(n):
        if i % 5 == 0:
            dec[i] = special_dec[(i // 5) % len(special_dec)]
        if i % 3 == 0:
            ra[i] = special_ra[(i // 3) % len(special_ra)]
    return [(float(a), float(d), float(r)) for a, d, r in zip(ra, dec, radius, strict=True)]


def _points_around(rng, ra, dec, sep_deg):
    """Points at the given separations from (ra, dec), in random directions."""
    sep = np.radians(np.asarray(sep_deg, dtype=float))
    pa = rng.uniform(0.0, 2.0 * np.pi, sep.size)
    d0, a0 = math.radians(dec), math.radians(ra)
    sin_d = np.clip(math.sin(d0) * np.cos(sep) + math.cos(d0) * np.sin(sep) * np.cos(pa), -1.0, 1.0)
    d = np.arcsin(sin_d)
    a = a0 + np.arctan2(np.sin(pa) * np.sin(sep) * math.cos(d0), np.cos(sep) - math.sin(d0) * sin_d)
    return np.degrees(a) % 360.0, np.degrees(d)


def _catalog_table(n: int = 400, seed: int = 3) -> Table:
    rng = np.random.default_rng(seed)
    t = Table()
    t["source_id"] = np.arange(n, dtype=np.int64) * 10 + 7
    t["RA_ICRS"] = rng.uniform(10.0, 12.0, n)
    t["DE_ICRS"] = rng.uniform(-1.0, 1.0, n)
    t["pmRA"] = rng.normal(0.0, 20.0, n)
    t["pmDE"] = rng.normal(0.0, 20.0, n)
    t["gmag"] = rng.uniform(12.0, 19.0, n)
    t["e_gmag"] = rng.uniform(0.001, 0.05, n)
    t["rmag"] = rng.uniform(12.0, 19.0, n)
    t["gmag"][5] = np.nan  # no measurement
    t["rmag"][7] = np.nan
    t["pmRA"][9] = np.nan
    return t


GAIA_LIKE = ColumnMap(
    ra="RA_ICRS", dec="DE_ICRS", id="source_id", pm_ra="pmRA", pm_dec="pmDE", epoch=2016.0,
    bands=(BandColumns("g", "gmag", "e_gmag"), BandColumns("r", "rmag")),
)


def _write(table: Table, path, fmt: str) -> None:
    kw = {"csv": "ascii.csv", "ecsv": "ascii.ecsv", "fits": "fits", "votable": "votable"}[fmt]
    table.write(path, format=kw, overwrite=True)


def _load(sessions, path, name="cat", columns=GAIA_LIKE, **kw):
    with sessions() as session, session.begin():
        return load_refcat(session, path, name, columns, **kw)


# -- HEALPix maths ---------------------------------------------------------------------


def test_healpix_index_is_astropy_nested_order_16():
    ra = np.array([0.0, 10.0, 359.999999, 180.0])
    dec = np.array([0.0, 20.0, -89.9999, 90.0])
    expected = HEALPix(nside=2**16, order="nested").lonlat_to_healpix(ra * u.deg, dec * u.deg)
    assert np.array_equal(healpix_index(ra, dec), expected)
    assert ORDER == 16
    with pytest.raises(ValueError, match="finite"):
        healpix_index([np.nan], [0.0])
    with pytest.raises(ValueError, match="Dec outside"):
        healpix_index([1.0], [91.0])


def test_max_pixrad_bounds_every_point_of_every_pixel():
    """No point of any pixel (orders 0-6, boundaries sampled densely) is farther from its
    centre than max_pixrad, the bound the coverage of a cone rests on."""
    for order in range(7):
        hp = HEALPix(nside=2**order, order="nested")
        pix = np.arange(hp.npix)
        clon, clat = hp.healpix_to_lonlat(pix)
        blon, blat = hp.boundaries_lonlat(pix, step=16)
        far = angular_separation_deg(clon.deg[:, None], clat.deg[:, None], blon.deg, blat.deg).max()
        assert math.radians(far) <= max_pixrad(order) * (1 + 1e-12), order
        assert math.radians(far) >= max_pixrad(order) * (1 - 1e-9), order  # and it is attained


def test_cone_ranges_hold_every_point_of_the_cone():
    rng = np.random.default_rng(7)
    for ra, dec, radius in _random_cones(rng, 1500, 0.3 / 3600, 5.0):
        ranges = np.array(cone_ranges(ra, dec, radius))
        assert (ranges[1:, 0] > ranges[:-1, 1] + 1).all()  # sorted, disjoint, merged
        # Points spread over the cone, a quarter of them within a hair of its edge.
        sep = radius * np.sqrt(rng.uniform(0.0, 1.0, 400))
        sep[:100] = radius * (1.0 - rng.uniform(0.0, 1e-9, 100))
        pra, pdec = _points_around(rng, ra, dec, sep)
        inside = angular_separation_deg(ra, dec, pra, pdec) <= radius
        hp = healpix_index(pra[inside], pdec[inside])
        i = np.searchsorted(ranges[:, 0], hp, side="right") - 1
        covered = (i >= 0) & (hp <= ranges[np.maximum(i, 0), 1])
        assert covered.all(), (ra, dec, radius)


def test_cone_ranges_special_radii():
    assert cone_ranges(10.0, 20.0, 180.0) == [(0, 12 * 4**ORDER - 1)]
    tiny = cone_ranges(10.0, 20.0, 0.0)
    assert any(lo <= healpix_index([10.0], [20.0])[0] <= hi for lo, hi in tiny)
    assert coarse_order(1e-6) == ORDER and coarse_order(150.0) == 0
    assert len(coarse_pixels(0.0, 90.0, 1.0, coarse_order(1.0))) >= 4  # all around the pole
    with pytest.raises(ValueError, match="Dec"):
        cone_ranges(0.0, 95.0, 1.0)
    with pytest.raises(ValueError, match="negative radius"):
        cone_ranges(0.0, 0.0, -1.0)


def test_sql_ang2pix_agrees_with_astropy_on_a_million_points(db_url):
    rng = np.random.default_rng(11)
    n = 1_000_000
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    # Places where the pixel arithmetic changes branch or wraps.
    ra[:2000] = rng.choice([0.0, 45.0, 90.0, 135.0, 180.0, 270.0, 359.99999999, 360.0 - 1e-12], 2000)
    dec[2000:4000] = rng.choice([90.0, -90.0, 0.0, FACE_BOUNDARY_DEC, -FACE_BOUNDARY_DEC, 89.9999999], 2000)
    with psycopg.connect(_libpq(db_url)) as conn:
        rows = conn.execute(
            "SELECT obsdb_healpix_ang2pix(r, d) FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY AS u(r, d, i) "
            "ORDER BY i", (ra.tolist(), dec.tolist()),
        ).fetchall()
        other = conn.execute("SELECT obsdb_healpix_ang2pix(10.0, 20.0, 5), obsdb_healpix_order()").fetchone()
        with pytest.raises(psycopg.errors.RaiseException, match="not on the sky"):
            conn.execute("SELECT obsdb_healpix_ang2pix(10.0, 91.0)")
    sql = np.fromiter((r[0] for r in rows), np.int64, n)
    assert np.array_equal(sql, healpix_index(ra, dec))
    assert other == (healpix_index([10.0], [20.0], order=5)[0], ORDER)


def test_sql_ranges_equal_python_ranges(db_url):
    rng = np.random.default_rng(5)
    cones = _random_cones(rng, 2000, 1.0 / 3600, 2.0)
    cones += [(10.0, 20.0, 0.0), (0.0, 90.0, 179.0), (0.0, 0.0, 180.0), (200.0, -90.0, 2.0)]
    with psycopg.connect(_libpq(db_url)) as conn:
        for ra, dec, radius in cones:
            sql = conn.execute("SELECT lo, hi FROM obsdb_healpix_ranges(%s, %s, %s)", (ra, dec, radius)).fetchall()
            assert [tuple(r) for r in sql] == cone_ranges(ra, dec, radius), (ra, dec, radius)
        assert conn.execute("SELECT obsdb_healpix_coarse_order(0.5)").fetchone()[0] == coarse_order(0.5)


# -- loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "fits", "votable"])
def test_load_each_format(fmt, sessions, tmp_path):
    table = _catalog_table()
    path = tmp_path / f"cat.{'vot' if fmt == 'votable' else fmt}"
    _write(table, path, fmt)
    result = _load(sessions, path)
    assert result.n_stars == len(table) and result.format == fmt and result.bands == ["g", "r"]
    with sessions() as session:
        cat = session.scalar(select(RefCatalog))
        assert (cat.name, cat.n_stars, cat.bands, cat.has_pm, cat.epoch) == ("cat", 400, ["g", "r"], True, 2016.0)
        assert cat.column_map["bands"]["g"] == {"mag": "gmag", "err": "e_gmag"} and cat.column_map["format"] == fmt
        assert cat.max_pm == pytest.approx(np.nanmax(np.hypot(table["pmRA"], table["pmDE"])), rel=1e-6)
        stars = {s.catalog_id: s for s in session.scalars(select(RefStar))}
    assert len(stars) == 400
    for i in (0, 5, 7, 9, 399):
        s = stars[str(table["source_id"][i])]
        assert s.ra == table["RA_ICRS"][i] and s.dec == table["DE_ICRS"][i]
        assert s.healpix == healpix_index([s.ra], [s.dec])[0]
        g, r = table["gmag"][i], table["rmag"][i]
        assert s.mag[0] is None if np.isnan(g) else s.mag[0] == pytest.approx(g, rel=1e-6)
        assert s.mag[1] is None if np.isnan(r) else s.mag[1] == pytest.approx(r, rel=1e-6)
        assert s.mag_err[0] == pytest.approx(table["e_gmag"][i], rel=1e-6) and s.mag_err[1] is None
        assert s.pm_ra is None if i == 9 else s.pm_ra == pytest.approx(table["pmRA"][i], rel=1e-6)
    # Star ids follow the HEALPix order, so neighbours on the sky are neighbours on disk.
    by_id = sorted(stars.values(), key=lambda s: s.star_id)
    assert [s.star_id for s in by_id] == list(range(1, 401))
    assert all(a.healpix <= b.healpix for a, b in zip(by_id, by_id[1:]))


def test_units_and_sexagesimal_positions(sessions, tmp_path):
    t = Table()
    t["ra"] = ["00:00:00.5", "23:59:59.9", "10h20m30s", "155d07m30s", "12 30 00"]
    t["dec"] = ["-00:30:00", "+89:59:59", "-10d30m", "45", "-89 59 59.9"]
    t["v"] = [10.0, 11.0, 12.0, 13.0, 14.0]
    t.write(tmp_path / "sexa.csv", format="ascii.csv")
    _load(sessions, tmp_path / "sexa.csv", "sexa", ColumnMap(ra="ra", dec="dec", bands=(BandColumns("V", "v"),)))
    with sessions() as session:
        got = session.execute(text("SELECT ra, dec, catalog_id FROM refcat_stars ORDER BY catalog_id::int")).all()
    expected = [(0.5 / 240, -0.5), (359.99958333333, 89.99972222), (155.125, -10.5), (155.125, 45.0),
                (187.5, -89.99997222)]
    for (ra, dec, cid), (era, edec), n in zip(got, expected, range(1, 6), strict=True):
        assert ra == pytest.approx(era, abs=1e-7) and dec == pytest.approx(edec, abs=1e-7) and cid == str(n)
    # A FITS column in radians is converted; proper motions in arcsec/yr become mas/yr.
    f = Table({"ra": [np.pi / 2] * u.rad, "dec": [0.5] * u.deg, "pmra": [1.5] * u.arcsec / u.yr,
               "pmdec": [-2.0] * u.mas / u.yr, "m": [12.0]})
    f.write(tmp_path / "units.fits")
    cm = ColumnMap(ra="ra", dec="dec", pm_ra="pmra", pm_dec="pmdec", epoch=2000.0, bands=(BandColumns("V", "m"),))
    _load(sessions, tmp_path / "units.fits", "units", cm)
    with sessions() as session:
        star = session.execute(text("SELECT s.ra, s.pm_ra, s.pm_dec FROM refcat_stars s JOIN refcats c "
                                    "ON c.id = s.refcat_id WHERE c.name = 'units'")).one()
    assert star == pytest.approx((90.0, 1500.0, -2.0))


def test_format_from_the_file_name():
    assert [guess_format(n) for n in ("a.csv", "b.CSV.gz", "c.ecsv", "d.fits", "e.fit.gz", "f.vot", "g.xml")] == [
        "csv", "csv", "ecsv", "fits", "fits", "votable", "votable"]
    with pytest.raises(RefcatError, match="pass --format"):
        guess_format("catalog.dat")


def test_forced_format_and_unreadable_files(sessions, tmp_path):
    _write(_catalog_table(20), tmp_path / "cat.dat", "csv")
    assert _load(sessions, tmp_path / "cat.dat", fmt="csv").n_stars == 20
    (tmp_path / "junk.fits").write_bytes(b"not a FITS file at all" * 100)
    with pytest.raises(RefcatError, match="cannot read junk.fits as fits"):
        _load(sessions, tmp_path / "junk.fits", "junk")
    with pytest.raises(RefcatError, match="no such catalog file"):
        _load(sessions, tmp_path / "missing.csv", "missing")


def test_missing_column_names_the_available_ones(sessions, tmp_path):
    _write(_catalog_table(), tmp_path / "c.csv", "csv")
    bad = ColumnMap(ra="RA_ICRS", dec="DE_ICRS", bands=(BandColumns("g", "Gmag_typo"),))
    with pytest.raises(RefcatError, match=r"no column 'Gmag_typo' \(for g magnitude\); its columns are: "
                                          r"source_id, RA_ICRS, DE_ICRS, pmRA, pmDE, gmag, e_gmag, rmag"):
        _load(sessions, tmp_path / "c.csv", columns=bad)
    # Case does not matter when it is unambiguous.
    _load(sessions, tmp_path / "c.csv", columns=ColumnMap(ra="ra_icrs", dec="de_icrs", bands=(BandColumns("g", "GMAG"),)))


def test_bad_values_are_counted_and_the_first_rows_shown(sessions, tmp_path):
    t = _catalog_table(50)
    t["RA_ICRS"][[3, 10, 11, 12, 13, 14, 40]] = [361.0, -1.0, 400.0, 500.0, 600.0, 700.0, 800.0]
    t["DE_ICRS"][[4, 8]] = [-91.0, np.nan]
    t["gmag"] = t["gmag"].astype(object)
    t["gmag"][[20, 21]] = ["bright", "n/a"]
    t.write(tmp_path / "bad.csv", format="ascii.csv")
    with pytest.raises(RefcatError) as err:
        _load(sessions, tmp_path / "bad.csv")
    msg = str(err.value)
    assert "RA column 'RA_ICRS' outside 0-360 degrees: 7 rows: row 4 (361.0), row 11 (-1.0), row 12 (400.0), " \
           "row 13 (500.0), row 14 (600.0), …" in msg
    assert "Dec column 'DE_ICRS' outside -90..+90 degrees: 1 row: row 5 (-91.0)" in msg
    assert "Dec column 'DE_ICRS' empty or NaN: 1 row: row 9" in msg
    assert "g magnitude column 'gmag' not a number: 2 rows: row 21 ('bright'), row 22 ('n/a')" in msg
    with sessions() as session:  # nothing was left behind
        assert session.scalar(text("SELECT count(*) FROM refcats")) == 0
        assert session.scalar(text("SELECT count(*) FROM refcat_stars")) == 0


def test_bad_sexagesimal_and_column_map_errors(sessions, tmp_path):
    t = Table({"ra": ["10:00:00", "ten o'clock"], "dec": ["+10:00:00", "-05:00:00"], "m": [1.0, 2.0]})
    t.write(tmp_path / "s.csv", format="ascii.csv")
    with pytest.raises(RefcatError, match=r"RA column 'ra' neither a number nor a sexagesimal angle: 1 row: "
                                          r"row 2 \(\"ten o'clock\"\)"):
        _load(sessions, tmp_path / "s.csv", columns=ColumnMap(ra="ra", dec="dec"))
    with pytest.raises(RefcatError, match="need --epoch"):
        ColumnMap(ra="a", dec="b", pm_ra="c", pm_dec="d")
    with pytest.raises(RefcatError, match="both --pm-ra-col and --pm-dec-col"):
        ColumnMap(ra="a", dec="b", pm_ra="c", epoch=2016.0)
    with pytest.raises(RefcatError, match="band g given more than once"):
        ColumnMap(ra="a", dec="b", bands=(BandColumns("g", "x"), BandColumns("g", "y")))
    with pytest.raises(RefcatError, match="band name 'ra' is not usable"):
        ColumnMap(ra="a", dec="b", bands=(BandColumns("ra", "x"),))
    with pytest.raises(RefcatError, match="expected BAND=MAGCOL"):
        BandColumns.parse("gmag")
    assert BandColumns.parse("G = phot_g : e_g") == BandColumns("G", "phot_g", "e_g")
    assert parse_angle("10:30:00", hours=True) == pytest.approx(157.5)
    assert parse_angle("-10:30:00", hours=False) == pytest.approx(-10.5)
    with pytest.raises(ValueError, match="outside -90"):
        parse_angle("95", hours=False)


def test_existing_name_is_refused_and_replace_is_atomic(sessions, engine, tmp_path):
    first = _catalog_table(100, seed=1)
    second = _catalog_table(150, seed=2)
    _write(first, tmp_path / "a.fits", "fits")
    _write(second, tmp_path / "b.fits", "fits")
    _load(sessions, tmp_path / "a.fits", "gaia")
    with pytest.raises(RefcatError, match=r"'gaia' already exists \(100 stars from .*a.fits.*pass --replace"):
        _load(sessions, tmp_path / "b.fits", "gaia")

    def count_seen_by_others() -> int:
        with engine.connect() as other:
            return other.execute(text(
                "SELECT count(*) FROM refcat_stars s JOIN refcats c ON c.id = s.refcat_id WHERE c.name = 'gaia'"
            )).scalar()

    with sessions() as session, session.begin():
        result = load_refcat(session, tmp_path / "b.fits", "gaia", GAIA_LIKE, replace=True)
        assert result.replaced and result.n_stars == 150
        assert count_seen_by_others() == 100  # the old stars stay until the new ones are committed
    assert count_seen_by_others() == 150
    # A replacement that fails leaves the catalog as it was.
    bad = second.copy()
    bad["DE_ICRS"][0] = 100.0
    _write(bad, tmp_path / "c.fits", "fits")
    with pytest.raises(RefcatError, match="outside -90"):
        _load(sessions, tmp_path / "c.fits", "gaia", replace=True)
    assert count_seen_by_others() == 150
    with sessions() as session:
        assert [(r["name"], r["n_stars"]) for r in list_refcats(session)] == [("gaia", 150)]
        assert session.scalar(text("SELECT count(*) FROM refcat_stars")) == 150  # no orphans


def test_concurrent_loads_of_one_name_are_serialised(sessions, tmp_path):
    _write(_catalog_table(300), tmp_path / "a.fits", "fits")
    errors: list[Exception] = []

    def load() -> None:
        try:
            _load(sessions, tmp_path / "a.fits", "same")
        except RefcatError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(errors) == 1 and "already exists" in str(errors[0])


def test_deleting_a_catalog_deletes_its_stars(sessions, tmp_path):
    _write(_catalog_table(30), tmp_path / "a.csv", "csv")
    _load(sessions, tmp_path / "a.csv", "one")
    _load(sessions, tmp_path / "a.csv", "two")
    with sessions() as session, session.begin():
        assert drop_refcat(session, "one") == 30
    with sessions() as session, session.begin():
        assert session.scalar(text("SELECT count(*) FROM refcat_stars")) == 30
        session.execute(text("DELETE FROM refcats"))  # from psql, too
        assert session.scalar(text("SELECT count(*) FROM refcat_stars")) == 0
    with sessions() as session, pytest.raises(RefcatError, match="no reference catalog named 'one'"):
        drop_refcat(session, "one")


def test_binary_copy_encoding_round_trips(db_url):
    n = 5
    cols = [
        CopyColumn("int8", np.array([1, -2, 3, 2**40, 0])),
        CopyColumn("float4", np.array([1.5, np.nan, -3.25, np.inf, 0.0])),
        CopyColumn("text", np.array([b"a", b"", b"\xc3\xa9t\xc3\xa9", b"longer text", b"x"]),
                   np.array([False, False, False, False, True])),
        CopyColumn("float4[]", np.array([[1.0, np.nan], [np.nan, np.nan], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])),
        CopyColumn("float4[]", None, True),
        CopyColumn("float4[]", np.zeros((n, 0))),
    ]
    data = PGCOPY_HEADER + encode_copy_rows(cols, n) + PGCOPY_TRAILER
    with psycopg.connect(_libpq(db_url)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (a bigint, b real, c text, d real[], e real[], f real[])")
        with cur.copy("COPY t FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(data)
        rows = cur.execute("SELECT * FROM t").fetchall()
    assert rows == [
        (1, 1.5, "a", [1.0, None], None, []),
        (-2, None, "", [None, None], None, []),
        (3, -3.25, "été", [3.0, 4.0], None, []),
        (2**40, None, "longer text", [5.0, 6.0], None, []),
        (0, 0.0, None, [7.0, 8.0], None, []),
    ]


# -- cone searches ---------------------------------------------------------------------------


@pytest.fixture
def cone_catalog(sessions, tmp_path):
    """Stars clustered on and near the edges of 2000 cones (poles, RA wrap, 1" to 2°), plus a
    uniform background; loaded through a FITS file."""
    rng = np.random.default_rng(21)
    cones = _random_cones(rng, 2000, 1.0 / 3600, 2.0)
    ras, decs = [rng.uniform(0.0, 360.0, 20000)], [np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, 20000)))]
    for ra, dec, radius in cones:
        sep = radius * np.concatenate([rng.uniform(0.0, 2.0, 30), 1.0 + rng.uniform(-1e-7, 1e-7, 6)])
        a, d = _points_around(rng, ra, dec, sep)
        ras.append(a)
        decs.append(d)
    ra, dec = np.concatenate(ras), np.concatenate(decs)
    t = Table({"ra": ra, "dec": dec, "m": rng.uniform(10.0, 20.0, ra.size)})
    t.write(tmp_path / "cones.fits")
    _load(sessions, tmp_path / "cones.fits", "cones", ColumnMap(ra="ra", dec="dec", bands=(BandColumns("V", "m"),)))
    with sessions() as session:
        stars = session.execute(text("SELECT star_id, ra, dec FROM refcat_stars ORDER BY star_id")).all()
    arr = np.array(stars, dtype=float)
    return cones, arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2]


def test_sql_cone_agrees_with_brute_force(cone_catalog, db_url):
    cones, star_id, ra, dec = cone_catalog
    n_found = 0
    with psycopg.connect(_libpq(db_url)) as conn:
        for i, (cra, cdec, radius) in enumerate(cones):
            got = [r[0] for r in conn.execute(
                "SELECT star_id FROM obsdb_refcat_cone('cones', %s, %s, %s)", (cra, cdec, radius))]
            sep = angular_separation_deg(cra, cdec, ra, dec)
            # numpy and PostgreSQL round the last bit of a sine differently: a star within
            # 1e-12 degrees of the edge may fall either way.
            sure_in = set(star_id[sep < radius - 1e-12].tolist())
            maybe = set(star_id[np.abs(sep - radius) <= 1e-12].tolist())
            assert sure_in <= set(got) <= sure_in | maybe, (cra, cdec, radius)
            assert len(got) == len(set(got))
            n_found += len(got)
            if i % 20 == 0:  # the same predicate on every star, with no index: exactly equal
                brute = {r[0] for r in conn.execute(
                    "SELECT s.star_id FROM refcat_stars s WHERE obsdb_ang_sep_deg(%s, %s, s.ra, s.dec) <= %s",
                    (cra, cdec, radius))}
                assert set(got) == brute, (cra, cdec, radius)
        seps = [r[0] for r in conn.execute("SELECT sep_arcsec FROM obsdb_refcat_cone('cones', 0, 90, 2)")]
        assert seps == sorted(seps) and len(seps) > 10
        with pytest.raises(psycopg.errors.RaiseException, match="no reference catalog named 'nope'"):
            conn.execute("SELECT * FROM obsdb_refcat_cone('nope', 0, 0, 1)")
    assert n_found > 30000


def test_python_cone_search_agrees_with_sql(cone_catalog, sessions):
    cones = cone_catalog[0][::10]
    with sessions() as session:
        for ra, dec, radius in cones:
            table = cone_search(session, "cones", ra, dec, radius)
            sql = session.execute(text("SELECT star_id, sep_arcsec FROM obsdb_refcat_cone('cones', :ra, :dec, :r)"),
                                  {"ra": ra, "dec": dec, "r": radius}).all()
            assert list(table["id"]) == [r[0] for r in sql]
            assert np.allclose(table["sep"], [r[1] for r in sql], atol=1e-6)


def test_cone_query_is_an_index_range_scan(cone_catalog, db_url):
    """auto_explain shows the plan of the statement inside obsdb_refcat_cone."""
    plans: list[str] = []
    with psycopg.connect(_libpq(db_url), autocommit=True) as conn:
        try:
            conn.execute("LOAD 'auto_explain'")
        except psycopg.Error:
            pytest.skip("auto_explain is not available on this server")
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on",
                        "auto_explain.log_level = notice", "client_min_messages = notice"):
            conn.execute(f"SET {setting}")
        conn.execute("SELECT * FROM obsdb_refcat_cone('cones', 10.0, 20.0, 0.5)").fetchall()
    inner = "\n".join(p for p in plans if "refcat_stars" in p)
    assert "Index Scan using ix_refcat_stars_refcat_id_healpix on refcat_stars" in inner, inner
    assert "Seq Scan on refcat_stars" not in inner
    assert "JIT" not in inner


def test_cone_search_table_bands_and_proper_motion(sessions, tmp_path):
    t = _catalog_table(400)
    # A fast star 10" outside a 5" cone at 2016 moves to the centre by 2026.
    t["RA_ICRS"][0], t["DE_ICRS"][0] = 11.0, 0.0 + 10.0 / 3600
    t["pmRA"][0], t["pmDE"][0] = 0.0, -1000.0
    _write(t, tmp_path / "pm.fits", "fits")
    _load(sessions, tmp_path / "pm.fits", "pm")
    with sessions() as session:
        at_catalog_epoch = cone_search(session, "pm", 11.0, 0.0, 5.0 / 3600)
        moved = cone_search(session, "pm", 11.0, 0.0, 5.0 / 3600, epoch=2026.0)
        wide = cone_search(session, "pm", 11.0, 0.0, 1.0, bands=["r"])
        with pytest.raises(RefcatError, match="has no band i; its bands: g, r"):
            cone_search(session, "pm", 11.0, 0.0, 1.0, bands=["i"])
        with pytest.raises(RefcatError, match="no reference catalog named 'gaia'; catalogs: pm"):
            cone_search(session, "gaia", 11.0, 0.0, 1.0)
    assert "7" not in list(at_catalog_epoch["catalog_id"])
    assert list(moved["catalog_id"]) == ["7"]
    assert moved["dec"][0] == pytest.approx(0.0, abs=1e-7) and moved["sep"][0] < 0.01
    assert moved.meta["epoch"] == 2026.0 and at_catalog_epoch.meta["epoch"] == 2016.0
    assert wide.colnames == ["id", "catalog_id", "ra", "dec", "pm_ra", "pm_dec", "r", "r_err", "sep"]
    assert wide["ra"].unit == u.deg and wide["sep"].unit == u.arcsec and wide["r"].unit == u.mag
    assert np.all(np.diff(wide["sep"]) >= 0) and len(wide) > 50
    assert np.isnan(wide["r_err"]).all()
    ra, dec = propagate([0.0], [89.9999], [3.6e6 * 0.0002], [0.0], 1.0)  # across the pole without trouble
    assert np.isfinite(ra).all() and dec[0] == pytest.approx(89.9999, abs=1e-3)


# -- the command line -------------------------------------------------------------------------


def test_cli_load_list_cone_and_errors(cli_env, tmp_path):
    t = _catalog_table(200)
    _write(t, tmp_path / "gaia.csv", "csv")
    args = ["refcat", "load", tmp_path / "gaia.csv", "--name", "gaia", "--ra-col", "RA_ICRS", "--dec-col", "DE_ICRS",
            "--id-col", "source_id", "--mag", "g=gmag:e_gmag", "--mag", "r=rmag",
            "--pm-ra-col", "pmRA", "--pm-dec-col", "pmDE", "--epoch", "2016.0"]
    done = run_obsdb(*args, env=cli_env, check=True)
    assert "loaded reference catalog 'gaia': 200 stars (g, r)" in done.stdout
    again = run_obsdb(*args, env=cli_env)
    assert again.returncode == 1 and "already exists" in again.stderr and "--replace" in again.stderr
    replaced = run_obsdb(*args, "--replace", env=cli_env, check=True)
    assert "replaced reference catalog 'gaia'" in replaced.stdout

    listed = json.loads(run_obsdb("refcat", "list", "--format", "json", env=cli_env, check=True).stdout)
    assert [(r["name"], r["n_stars"], r["bands"], r["epoch"]) for r in listed] == [("gaia", 200, "g,r", 2016.0)]
    assert listed[0]["source"].endswith("gaia.csv")

    cone = run_obsdb("refcat", "cone", "gaia", "00:44:00", "+00:00:00", "1800", "--format", "csv",
                     env=cli_env, check=True)
    rows = list(csv.DictReader(cone.stdout.splitlines()))
    sep = angular_separation_deg(11.0, 0.0, t["RA_ICRS"], t["DE_ICRS"]) * 3600
    assert len(rows) == int((sep <= 1800).sum()) > 0
    assert list(rows[0]) == ["id", "catalog_id", "ra", "dec", "sep", "g", "g_err", "r", "r_err", "pm_ra", "pm_dec"]
    assert [float(r["sep"]) for r in rows] == sorted(float(r["sep"]) for r in rows)
    table = run_obsdb("refcat", "cone", "gaia", "11", "0", "600", env=cli_env, check=True)
    assert table.stdout.splitlines()[0].split()[:5] == ["id", "catalog_id", "ra", "dec", "sep"]

    missing = run_obsdb("refcat", "load", tmp_path / "gaia.csv", "--name", "x", "--ra-col", "RA", "--dec-col",
                        "DE_ICRS", env=cli_env)
    assert missing.returncode == 1
    assert "no column 'RA' (for RA); its columns are: source_id, RA_ICRS" in missing.stderr
    unknown = run_obsdb("refcat", "cone", "nope", "11", "0", "60", env=cli_env)
    assert unknown.returncode == 1 and "no reference catalog named 'nope'; catalogs: gaia" in unknown.stderr
    bad_ra = run_obsdb("refcat", "cone", "gaia", "25:00:00x", "0", "60", env=cli_env)
    assert bad_ra.returncode == 2 and "neither degrees nor a sexagesimal angle" in bad_ra.stderr
    dropped = run_obsdb("refcat", "drop", "gaia", "--yes", env=cli_env, check=True)
    assert "deleted reference catalog 'gaia' (200 stars)" in dropped.stdout


def test_cli_loads_the_simulators_catalog(cli_env, tmp_path):
    out = tmp_path / "sim"
    run_obsdb("simulate", out, "--size", "256", "--fields", "1", "--lights", "1", env=cli_env, check=True)
    with open(out / "refcat.csv") as fh:
        n = sum(1 for _ in csv.DictReader(fh))
    done = run_obsdb("refcat", "load", out / "refcat.csv", "--name", "sim", "--ra-col", "ra", "--dec-col", "dec",
                     "--id-col", "id", "--mag", "g=g:g_err", "--mag", "r=r:r_err", env=cli_env, check=True)
    assert f"{n} stars (g, r)" in done.stdout and n > 20
    listed = json.loads(run_obsdb("refcat", "list", "--format", "json", env=cli_env, check=True).stdout)
    assert listed[0]["n_stars"] == n
