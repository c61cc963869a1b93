"""Light curves: the library (obsdb.lightcurves) and the commands, on synthetic rows.

One database per session is filled by ``tests/lightcurve_data.py`` (every test here only
reads it); values coming out of ``obsdb lc`` are compared with the base tables.
Subprocesses run in small concurrent batches to keep the module quick.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
from datetime import datetime, timezone

import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from conftest import obsdb_command
from lightcurve_data import (
    APERTURES,
    PIXEL_SCALE,
    REPORTED,
    VAR2_PERIOD,
    VAR_PERIOD,
    cli_env_for,
    lc_database,  # noqa: F401  (a session fixture shared with the other light-curve modules)
)
from obsdb.lightcurves import (
    LC_COLUMNS,
    QUALITY_FLAGS,
    NoSourceFound,
    SourceMatch,
    add_phase,
    cone,
    find_period,
    format_for_path,
    get,
    parse_time,
    render_rows,
    variability,
)
from obsdb.photometry import flags as F


@pytest.fixture(scope="module")
def lcdb(lc_database):
    return lc_database


@pytest.fixture(scope="module")
def truth(lcdb):
    return lcdb[1]


@pytest.fixture(scope="module")
def lc_sessions(lcdb):
    engine = create_engine(lcdb[0])
    yield sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def env(lcdb, tmp_path_factory):
    return cli_env_for(lcdb[0], tmp_path_factory.mktemp("lc-home"))


def run_many(env, *commands: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run several ``obsdb`` commands at once (they only read) and wait for all."""
    procs = [subprocess.Popen([*obsdb_command(), *map(str, args)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for args in commands]
    out = []
    for p, args in zip(procs, commands, strict=True):
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr.decode()))
    return out


def stored(url: str, source_id: int, *, clean_only: bool = True) -> list[dict]:
    """A source's measurements straight from the base tables (not through the view)."""
    sql = ("SELECT m.frame_id, m.mjd, m.bjd_tdb, f.filter, m.mag, m.mag_err, m.inst_mag, m.flux, m.flux_err, m.snr, "
           "m.fluxes, m.flux_errs, m.upper_limit, m.flags, m.forced, z.zp, z.ensemble_zp, f.airmass, fs.fwhm, "
           "fs.pixel_scale, f.path FROM measurements m JOIN frames f ON f.id = m.frame_id "
           "JOIN frame_solutions fs ON fs.frame_id = m.frame_id JOIN zeropoints z ON z.frame_id = m.frame_id "
           "WHERE m.source_id = %s ORDER BY m.mjd")
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        cur = conn.execute(sql, (source_id,))
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur]
    if clean_only:
        rows = [r for r in rows if r["flags"] & QUALITY_FLAGS == 0]
    return rows


# --- pure functions -----------------------------------------------------------------------


def test_parse_time_accepts_mjd_iso_and_datetimes():
    assert parse_time(None) is None
    assert parse_time("60400.25") == 60400.25
    assert parse_time(60400) == 60400.0
    assert parse_time("2024-03-01") == 60370.0
    assert parse_time("2024-03-01T12:00:00") == pytest.approx(60370.5, abs=1e-9)
    assert parse_time("2024-03-01T13:00:00+01:00") == pytest.approx(60370.5, abs=1e-9)
    assert parse_time("2024-03-01T12:00:00Z") == pytest.approx(60370.5, abs=1e-9)
    assert parse_time(datetime(2024, 3, 1, 12, tzinfo=timezone.utc)) == pytest.approx(60370.5, abs=1e-9)


@pytest.mark.parametrize("bad", ["yesterday", "' OR 1=1 --", "2024-13-45", "1; DROP TABLE frames", "nan", "inf",
                                 "2024-03-01'); DELETE FROM sources; --", ""])
def test_parse_time_rejects_anything_else(bad):
    with pytest.raises(ValueError, match="cannot read the time|not a plausible MJD"):
        parse_time(bad)


def test_source_match_note_names_the_others():
    m = SourceMatch(5, 1.0, 2.0, 0.3, ((7, 1.25), (9, 3.5)), radius_arcsec=5.0)
    assert m.note.startswith("3 sources within 5 arcsec: using the nearest, source 5 (0.30 arcsec)")
    assert "7 (1.25 arcsec), 9 (3.50 arcsec)" in m.note
    assert SourceMatch(5, 1.0, 2.0, 0.3, (), radius_arcsec=5.0).note is None


def test_format_for_path_and_render_rows():
    assert format_for_path("x.ecsv") == "ecsv"
    assert format_for_path("x.vot") == format_for_path("X.XML") == "votable"
    assert format_for_path(None) == format_for_path("x.dat") == "table"
    rows = [{"mjd": 60000.123456789, "mag": float("nan"), "filter": "V"}]
    assert json.loads(render_rows(rows, ["mjd", "mag", "filter"], "json")) == [
        {"mjd": 60000.123456789, "mag": None, "filter": "V"}]
    assert render_rows(rows, ["mjd", "mag"], "csv").splitlines() == ["mjd,mag", "60000.123456789,"]
    with pytest.raises(ValueError, match="table, csv or json"):
        render_rows(rows, ["mjd"], "xml")


def _synthetic_ts(period, n=150, seed=3):
    from astropy.time import Time
    from astropy.timeseries import TimeSeries

    rng = np.random.default_rng(seed)
    nights = np.repeat(np.arange(8), n // 8 + 1)[:n]
    t = 60000.0 + nights + np.sort(rng.uniform(0.0, 0.3, n))
    mag = 15 + 0.2 * np.sin(2 * np.pi * t / period) + rng.normal(0, 0.02, n)
    ts = TimeSeries(time=Time(t, format="mjd"))
    ts["mjd"], ts["bjd_tdb"], ts["mag"], ts["mag_err"] = t, np.full(n, np.nan), mag, np.full(n, 0.02)
    ts["filter"] = ["V"] * n
    ts["is_upper_limit"] = np.zeros(n, bool)
    ts["flagged"] = np.zeros(n, bool)
    return ts


def test_find_period_on_plain_arrays_and_input_checks():
    ts = _synthetic_ts(0.2731)
    result = find_period(ts)
    assert result.period == pytest.approx(0.2731, rel=0.002)
    assert result.false_alarm_probability < 1e-10 and result.time_column == "mjd"
    with pytest.raises(ValueError, match="0 < min_period < max_period"):
        find_period(ts, min_period=2.0, max_period=1.0)
    with pytest.raises(ValueError, match="at least 10"):
        find_period(ts[:5])
    add_phase(ts, 0.2731)
    assert np.all((ts["phase"] >= 0) & (ts["phase"] < 1)) and ts.meta["fold"]["time"] == "mjd"
    with pytest.raises(ValueError, match="positive number of days"):
        add_phase(ts, -1.0)


# --- the library on the database --------------------------------------------------------


def test_get_by_source_id_matches_the_tables(lcdb, lc_sessions):
    url, truth = lcdb
    ts = get(lc_sessions, source_id=truth.variable)
    rows = stored(url, truth.variable)
    assert len(ts) == len(rows) == len(truth.frames)
    assert [c for c in ts.colnames if c != "time"] == [c[0] for c in LC_COLUMNS]
    assert str(ts["mag"].unit) == "mag" and str(ts["fwhm"].unit) == "arcsec" and str(ts["flux"].unit) == "adu"
    np.testing.assert_allclose(ts["mjd"].value, [r["mjd"] for r in rows], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ts["time"].mjd, [r["mjd"] for r in rows], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ts["bjd_tdb"].value, [r["bjd_tdb"] for r in rows], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ts["mag"].value, [r["mag"] for r in rows], rtol=1e-12)
    np.testing.assert_allclose(ts["flux"].value, [r["flux"] for r in rows], rtol=1e-6)
    zp = [r["ensemble_zp"] if r["ensemble_zp"] is not None else r["zp"] for r in rows]
    np.testing.assert_allclose(ts["zero_point"].value, zp, rtol=1e-12)
    assert any(r["ensemble_zp"] is None for r in rows)  # the fallback to the frame's own fit is exercised
    np.testing.assert_allclose(ts["fwhm"].value, [r["fwhm"] * PIXEL_SCALE for r in rows], rtol=1e-12)
    np.testing.assert_allclose(ts["airmass"], [r["airmass"] for r in rows], rtol=1e-12)
    assert list(ts["file"]) == [r["path"] for r in rows]
    assert list(ts["filter"]) == [r["filter"] for r in rows]
    assert ts.meta["source_id"] == truth.variable and ts.meta["note"] is None
    with Session(lc_sessions.kw["bind"]) as session:  # a session works as well as a sessionmaker
        assert len(get(session, source_id=truth.variable, filters="V")) == len(truth.frames) // 2


def test_get_by_position_picks_the_nearest_and_names_the_others(lc_sessions, truth):
    ra, dec = truth.cluster_pos
    ts = get(lc_sessions, ra=ra, dec=dec, radius_arcsec=5)
    assert ts.meta["source_id"] == truth.cluster[0]
    assert [o["source_id"] for o in ts.meta["other_sources"]] == truth.cluster[1:]
    assert ts.meta["distance_arcsec"] == pytest.approx(truth.cluster_distances[0], abs=0.01)
    assert "3 sources within 5 arcsec" in ts.meta["note"]
    only = get(lc_sessions, ra=ra, dec=dec, radius_arcsec=1.0)
    assert only.meta["source_id"] == truth.cluster[0] and only.meta["note"] is None
    with lc_sessions() as session:
        found = cone(session, ra, dec, 5.0)
    assert [r["source_id"] for r in found] == truth.cluster
    assert [r["distance_arcsec"] for r in found] == pytest.approx(truth.cluster_distances, abs=0.01)


def test_cone_returns_what_the_sql_function_returns(lc_sessions, truth):
    from obsdb.catalog.sources import create_sources

    rng = np.random.default_rng(5)
    edges = [(359.9996, 10.0), (0.0003, 10.0002), (180.0, 89.9996), (0.0, 89.9993), (45.0, -89.9995),
             (90.0, 0.0), (90.0003, -0.0002)]
    near = [(truth.cluster_pos[0] + dx, truth.cluster_pos[1] + dy) for dx, dy in rng.normal(0, 0.002, (40, 2))]
    with lc_sessions() as session:  # extra sources for this transaction only (rolled back)
        added = create_sources(session, [p[0] for p in edges + near], [p[1] for p in edges + near], frame_id=None)
        assert len(added) == len(edges) + len(near)
        cones = [(ra, dec, r) for ra, dec in edges for r in (2.0, 3.0)] + [(0.0, 10.0, 5.0), (0.0, 90.0, 4.0)]
        cones += [(truth.cluster_pos[0], truth.cluster_pos[1], r) for r in (0.6, 1.7, 5.0, 12.0, 60.0, 600.0)]
        for ra, dec, radius in cones:
            mine = cone(session, ra, dec, radius)
            theirs = session.execute(text("SELECT source_id, distance_arcsec FROM obsdb_source_cone(:ra, :dec, :r)"),
                                     {"ra": ra, "dec": dec, "r": radius / 3600}).all()
            assert [m["source_id"] for m in mine] == [t.source_id for t in theirs], (ra, dec, radius)
            assert [m["distance_arcsec"] for m in mine] == pytest.approx([t.distance_arcsec for t in theirs])
            assert all(m["distance_arcsec"] <= radius for m in mine)
        assert len(cone(session, 0.0, 10.0, 5.0)) == 2 and len(cone(session, 0.0, 90.0, 4.0)) == 2
        session.rollback()


def test_get_raises_clear_errors(lc_sessions, truth):
    with pytest.raises(NoSourceFound, match="no source within 2 arcsec"):
        get(lc_sessions, ra=truth.empty_pos[0], dec=truth.empty_pos[1])
    with pytest.raises(NoSourceFound, match="no source with id 999999"):
        get(lc_sessions, source_id=999999)
    with pytest.raises(NoSourceFound, match="no target named"):
        get(lc_sessions, target="' OR 1=1 --")
    with pytest.raises(ValueError, match="exactly one"):
        get(lc_sessions, source_id=1, target="x")
    with pytest.raises(ValueError, match="radius must be between"):
        get(lc_sessions, ra=150.0, dec=20.0, radius_arcsec=-1)
    with pytest.raises(ValueError, match="since .* is after until"):
        get(lc_sessions, source_id=1, since=60400, until=60300)
    with pytest.raises(ValueError, match="aperture must be a positive"):
        get(lc_sessions, source_id=1, aperture=0)
    with pytest.raises(ValueError, match="contains a NUL character"):
        get(lc_sessions, source_id=1, filters=["V\x00'; DROP TABLE frames; --"])
    with pytest.raises(ValueError, match="contains a NUL character"):
        get(lc_sessions, target="x\x00")
    with lc_sessions() as session, pytest.raises(ValueError, match="contains a NUL character"):
        variability(session, filters="R\x00")


def test_flags_and_upper_limits(lcdb, lc_sessions):
    url, truth = lcdb
    clean = get(lc_sessions, source_id=truth.flagged_star)
    everything = get(lc_sessions, source_id=truth.flagged_star, include_flagged=True)
    assert len(everything) == len(truth.frames)
    assert len(clean) == len(truth.frames) - len(truth.flagged_frames)
    assert sorted(everything["frame_id"][everything["flagged"]]) == sorted(truth.flagged_frames)
    assert not clean["flagged"].any()

    ts = get(lc_sessions, target=truth.target_name)  # the apostrophes go through as data
    rows = stored(url, truth.target)
    assert ts.meta["target"] == truth.target_name and ts.meta["source_id"] == truth.target
    expected = np.array([r["forced"] and r["snr"] < 3 for r in rows])
    assert expected.any() and (~expected).any()
    assert list(ts["is_upper_limit"]) == list(expected)
    ul = np.asarray(ts["is_upper_limit"])
    np.testing.assert_allclose(ts["mag"].value[ul], [r["upper_limit"] for r, e in zip(rows, expected) if e],
                               rtol=1e-6)
    assert np.all(np.isnan(ts["mag_err"].value[ul])) and np.all(np.isfinite(ts["mag_err"].value[~ul]))
    assert np.all(ts["forced"]) and np.all(ts["flags"] & F.FORCED)
    assert get(lc_sessions, target=truth.target_name.upper()).meta["source_id"] == truth.target


def test_aperture_picks_the_nearest_radius_without_aperture_correction(lcdb, lc_sessions):
    url, truth = lcdb
    rows = stored(url, truth.variable)
    same = get(lc_sessions, source_id=truth.variable, aperture=APERTURES[REPORTED] + 0.4)
    np.testing.assert_array_equal(same["mag"].value, [r["mag"] for r in rows])
    ts = get(lc_sessions, source_id=truth.variable, aperture=3.2)
    assert np.all(ts["aperture_px"].value == 3.0) and "aperture_note" in ts.meta
    flux3 = np.array([r["fluxes"][0] for r in rows])
    np.testing.assert_allclose(ts["flux"].value, flux3, rtol=1e-6)
    np.testing.assert_allclose(ts["flux_err"].value, [r["flux_errs"][0] for r in rows], rtol=1e-6)
    calib = np.array([r["mag"] - r["inst_mag"] for r in rows])
    np.testing.assert_allclose(ts["mag"].value, -2.5 * np.log10(flux3) + calib, rtol=1e-9)
    # Aperture magnitudes: fainter than the corrected total, by the light outside 3 px.
    assert np.all(ts["mag"].value > same["mag"].value)


def test_since_until_filters(lc_sessions, truth):
    ts = get(lc_sessions, source_id=truth.variable, filters=["R"], since="2024-03-03", until=60373.5)
    assert len(ts) > 0 and set(ts["filter"]) == {"R"}
    assert ts["mjd"].value.min() >= 60372.0 and ts["mjd"].value.max() <= 60373.5
    empty = get(lc_sessions, source_id=truth.variable, filters=["' OR 1=1 --"])
    assert len(empty) == 0 and empty.meta["available_filters"] == ["R", "V"]


def test_variability_ranks_the_variables_first(lc_sessions, truth):
    with lc_sessions() as session:
        for f in ("V", "R"):
            rows = variability(session, filters=[f], min_points=20)
            ranked = [r["source_id"] for r in rows]
            assert set(ranked[:2]) == {truth.variable, truth.variable2}
            by_id = {r["source_id"]: r for r in rows}
            for sid in truth.constants:
                assert by_id[sid]["stetson_j"] < by_id[truth.variable2]["stetson_j"]
                assert by_id[sid]["chi2_dof"] < 2.0 < by_id[truth.variable2]["chi2_dof"]
                assert by_id[sid]["von_neumann"] > 1.4 > by_id[truth.variable2]["von_neumann"]
            var = by_id[truth.variable]
            assert var["amplitude"] > 0.4 and var["wstd"] == pytest.approx(0.25 / math.sqrt(2), rel=0.3)
        both = variability(session, min_points=20, top=4, sort="chi2_dof")
        assert [r["rank"] for r in both] == [1, 2, 3, 4]
        assert {(r["source_id"], r["filter"]) for r in both} == {
            (s, f) for s in (truth.variable, truth.variable2) for f in ("V", "R")}
        with pytest.raises(ValueError, match="unknown sort key"):
            variability(session, sort="mag; DROP TABLE sources")
        with pytest.raises(ValueError, match="min_points must be at least 3"):
            variability(session, min_points=1)


def test_period_of_the_inserted_variables(lc_sessions, truth):
    for sid, period in ((truth.variable, VAR_PERIOD), (truth.variable2, VAR2_PERIOD)):
        result = find_period(get(lc_sessions, source_id=sid))
        assert result.period == pytest.approx(period, rel=0.005)
        assert result.false_alarm_probability < 1e-20 and result.time_column == "bjd_tdb"


# --- the commands, as real subprocesses ------------------------------------------------------


def test_lc_in_every_format(lcdb, env, tmp_path):
    url, truth = lcdb
    rows = stored(url, truth.variable)
    ecsv, vot = tmp_path / "lc.ecsv", tmp_path / "lc.vot"
    table, as_csv, as_json, ecsv_run, vot_run, none = run_many(
        env, ["lc", "--source-id", truth.variable], ["lc", "--source-id", truth.variable, "--format", "csv"],
        ["lc", "--source-id", truth.variable, "--format", "json"],
        ["lc", "--source-id", truth.variable, "--output", ecsv],
        ["lc", "--source-id", truth.variable, "--format", "votable"],
        ["lc", f"{truth.empty_pos[0]}", f"{truth.empty_pos[1]}"])
    assert none.returncode == 1 and none.stdout == b"", none.stderr
    assert "Error: no source within 2 arcsec of RA" in none.stderr and "Traceback" not in none.stderr
    for p in (table, as_csv, as_json, ecsv_run, vot_run):
        assert p.returncode == 0, p.stderr

    lines = table.stdout.decode().splitlines()
    assert lines[0].split()[:5] == ["mjd", "bjd_tdb", "filter", "mag", "mag_err"]
    assert len(lines) == 1 + len(rows)
    first = lines[1].split()
    assert float(first[0]) == pytest.approx(rows[0]["mjd"], abs=1e-6)
    assert float(first[3]) == pytest.approx(rows[0]["mag"], abs=1e-4) and first[-1] == rows[0]["path"]

    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout.decode())))
    assert len(parsed) == len(rows)
    for got, want in zip(parsed, rows, strict=True):
        assert float(got["mjd"]) == want["mjd"] and float(got["bjd_tdb"]) == want["bjd_tdb"]
        assert float(got["mag"]) == want["mag"] and float(got["mag_err"]) == want["mag_err"]
        assert float(got["flux"]) == pytest.approx(want["flux"], rel=1e-6)
        assert int(got["frame_id"]) == want["frame_id"] and got["filter"] == want["filter"]
        assert got["file"] == want["path"] and int(got["flags"]) == want["flags"]

    data = json.loads(as_json.stdout)
    assert [d["mag"] for d in data] == [r["mag"] for r in rows]
    assert [d["frame_id"] for d in data] == [r["frame_id"] for r in rows]
    assert all(d["is_upper_limit"] is False for d in data)

    from astropy.io import votable
    from astropy.table import Table

    t = Table.read(ecsv, format="ascii.ecsv")
    assert str(t["mag"].unit) == "mag" and str(t["mjd"].unit) == "d"
    assert "upper limit" in t["mag"].description
    assert t.meta["source_id"] == truth.variable and t.meta["quality_flags_mask"] == QUALITY_FLAGS
    np.testing.assert_array_equal(np.asarray(t["mag"]), [r["mag"] for r in rows])
    assert f"wrote {len(rows)} points" in ecsv_run.stderr

    vot.write_bytes(vot_run.stdout)
    parsed_vot = votable.parse(str(vot))
    vt = parsed_vot.get_first_table()
    assert {i.name: i.value for i in vt.infos}["source_id"] == str(truth.variable)
    field = {f.name: f for f in vt.fields}
    assert str(field["mag"].unit) == "mag" and field["mag"].ucd == "phot.mag"
    assert field["mjd"].ucd.startswith("time.epoch")
    vtab = vt.to_table()
    np.testing.assert_array_equal(np.asarray(vtab["mag"]), [r["mag"] for r in rows])


def invoke(url: str, *args):
    """Run an obsdb command in this process (click's CliRunner): the same code as the
    console script without a Python start per call."""
    from unittest import mock

    from click.testing import CliRunner

    import obsdb.cli.context as context
    from obsdb.cli.main import cli

    engines = []

    def connect(settings):  # the command's own engine, recorded to close its connections after
        engine, factory = real_connect(settings)
        engines.append(engine)
        return engine, factory

    real_connect = context.connect
    with mock.patch.object(context, "connect", connect):
        result = CliRunner().invoke(cli, [str(a) for a in args], env={"OBSDB_DATABASE_URL": url})
    for engine in engines:
        engine.dispose()
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.output)
    return result


def test_lc_by_position_target_flags_and_aperture(lcdb):
    url, truth = lcdb
    from astropy.coordinates import Angle

    ra, dec = truth.positions[truth.variable]
    ra_text = Angle(ra, unit="deg").to_string(unit="hourangle", sep=":", precision=3)
    dec_text = Angle(dec, unit="deg").to_string(unit="deg", sep=":", precision=2, alwayssign=True)
    sexa = invoke(url, "lc", ra_text, dec_text, "--format", "json")
    assert sexa.exit_code == 0, sexa.output
    assert {d["source_id"] for d in json.loads(sexa.stdout)} == {truth.variable}

    several = invoke(url, "lc", f"{truth.cluster_pos[0]:.7f}", f"{truth.cluster_pos[1]:.7f}", "--radius", "5",
                     "--format", "csv")
    assert several.exit_code == 0, several.output
    assert f"using the nearest, source {truth.cluster[0]}" in several.stderr
    assert f"others: {truth.cluster[1]} (" in several.stderr and f"{truth.cluster[2]} (" in several.stderr
    assert {r["source_id"] for r in csv.DictReader(io.StringIO(several.stdout))} == {str(truth.cluster[0])}

    negative = invoke(url, "lc", "150.0", "-45:00:00")
    assert negative.exit_code == 1 and "Dec -45.000000" in negative.stderr  # a negative Dec is a Dec

    by_target = invoke(url, "lc", "--target", truth.target_name, "--format", "json")
    assert by_target.exit_code == 0, by_target.output
    data = json.loads(by_target.stdout)
    limits = [d for d in data if d["is_upper_limit"]]
    assert limits and all(d["mag"] == d["upper_limit"] and d["mag_err"] is None for d in limits)
    assert all(d["source_id"] == truth.target for d in data)

    flagged = invoke(url, "lc", "--source-id", truth.flagged_star, "--include-flagged", "--format", "json")
    fl = json.loads(flagged.stdout)
    assert sorted(d["frame_id"] for d in fl if d["flagged"]) == sorted(truth.flagged_frames)
    unflagged = json.loads(invoke(url, "lc", "--source-id", truth.flagged_star, "--format", "json").stdout)
    assert len(unflagged) == len(fl) - len(truth.flagged_frames)

    aperture = invoke(url, "lc", "--source-id", truth.variable, "--aperture", "4", "--format", "json", "--filter", "V")
    ap = json.loads(aperture.stdout)
    rows = [r for r in stored(url, truth.variable) if r["filter"] == "V"]
    assert all(d["aperture_px"] == 4.0 for d in ap)
    assert [d["flux"] for d in ap] == pytest.approx([r["fluxes"][1] for r in rows], rel=1e-6)

    folded = json.loads(invoke(url, "lc", "--source-id", truth.variable, "--fold", VAR_PERIOD,
                               "--format", "json").stdout)
    assert all(0 <= d["phase"] < 1 for d in folded)


def test_variables_period_and_cone_commands(lcdb):
    url, truth = lcdb
    ra, dec = truth.positions[truth.variable]
    variables = invoke(url, "variables", "--filter", "V", "--min-points", "20", "--top", "5", "--format", "json")
    ranked = json.loads(variables.stdout)
    assert len(ranked) == 5 and {r["source_id"] for r in ranked[:2]} == {truth.variable, truth.variable2}
    assert set(ranked[0]) >= {"wstd", "chi2_dof", "stetson_j", "von_neumann", "amplitude"}
    table = invoke(url, "variables", "--top", "3")
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split()[:3] == ["rank", "source_id", "ra"]

    period = invoke(url, "period", f"{ra}", f"{dec}", "--format", "json", "--max-period", "3")
    p = json.loads(period.stdout)
    assert p["period"] == pytest.approx(VAR_PERIOD, rel=0.005) and p["false_alarm_probability"] < 1e-20
    assert p["source_id"] == truth.variable
    text_out = invoke(url, "period", "--source-id", truth.variable2, "--filter", "V").stdout
    assert "best period 1.7" in text_out and "false-alarm probability" in text_out

    cone_run = invoke(url, "sources", "cone", *map(str, truth.cluster_pos), "5", "--format", "csv")
    found = list(csv.DictReader(io.StringIO(cone_run.stdout)))
    assert [int(r["source_id"]) for r in found] == truth.cluster
    assert all(int(r["n_measurements"]) == len(truth.frames) for r in found)
    target_pos = truth.positions[truth.target]
    named = invoke(url, "sources", "cone", *map(str, target_pos), "1", "--format", "json")
    assert json.loads(named.stdout)[0]["targets"] == truth.target_name


def test_night_report(lcdb, tmp_path):
    url, truth = lcdb
    out = tmp_path / "night.html"
    report = invoke(url, "night-report", truth.nights[1].isoformat(), "--output", out)
    assert report.exit_code == 0, report.output
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js is inline: nothing to fetch
    assert "astrometry: 3 matches, need 6 (clouds?)" in page and "needs_wcs" in page
    assert "/products/masters/bias_2024-03-02.fits" in page and "limiting mag" in page
    assert "2 failures" in report.stdout and "2 masters" in report.stdout
    missing = invoke(url, "night-report", "2020-01-01", "--output", tmp_path / "x.html")
    assert missing.exit_code == 1 and "no frames on the night of 2020-01-01" in missing.stderr
    assert not (tmp_path / "x.html").exists()


# --- hostile input: everything user-typed that reaches SQL ---------------------------------------

HOSTILE = ["' OR 1=1 --", "'; DROP TABLE measurements; --", 'V"; DELETE FROM sources; --',
           "\\'; TRUNCATE frames CASCADE; --", "%s:filters$1"]


def _counts(url: str) -> tuple:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                     for t in ("measurements", "sources", "frames", "targets", "zeropoints"))


def test_hostile_strings_through_every_option(lcdb):
    url, truth = lcdb
    before = _counts(url)
    sid = str(truth.variable)
    cases = []
    for s in HOSTILE:
        cases += [
            (["lc", "--source-id", sid, "--filter", s, "--format", "json"], "empty"),
            (["lc", "--target", s], "error"),
            (["lc", "--source-id", sid, "--since", s], "error"),
            (["lc", "--source-id", sid, "--until", s], "error"),
            (["lc", s, "20.0"], "error"),
            (["lc", "150.0", s], "error"),
            (["lc", "--source-id", s], "error"),
            (["lc", "150.0", "20.0", "--radius", s], "error"),
            (["lc", "--source-id", sid, "--aperture", s], "error"),
            (["variables", "--filter", s, "--format", "json"], "empty"),
            (["variables", "--sort", s], "error"),
            (["period", "--source-id", sid, "--filter", s], "error"),
            (["period", "--target", s], "error"),
            (["sources", "cone", s, "20", "5"], "error"),
            (["sources", "cone", "150", "20", s], "error"),
            (["night-report", s], "error"),
        ]
    for args, expect in cases:
        result = invoke(url, *args)
        assert "Traceback" not in result.output, args
        if expect == "empty":
            assert result.exit_code == 0, (args, result.output)
            assert json.loads(result.stdout) == [], args
        else:
            assert result.exit_code in (1, 2), (args, result.output)
            assert "Error" in result.output, (args, result.output)
    assert _counts(url) == before
    with psycopg.connect(url.replace("+psycopg", "")) as conn:  # the views and the function are still there
        assert conn.execute("SELECT count(*) FROM v_lightcurve WHERE source_id = %s", (truth.variable,)).fetchone()[0]
