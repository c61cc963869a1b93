"""The measurement writer: binary COPY round trips through a real database."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import text

from obsdb.database.copy import CopyColumn, copy_binary
from obsdb.models.frames import Frame, Instrument
from obsdb.models.photometry import Measurement, Source
from obsdb.photometry import writer
from obsdb.photometry.writer import copy_measurements

BIG_SOURCE_ID = 2**40 + 7  # beyond 32 bits: must travel as int8


def _frame_and_sources(session, n: int) -> tuple[int, list[int]]:
    """A minimal instrument, frame and ``n`` sources (the last one with a 41-bit id)."""
    instrument = Instrument(name="cam", profile="generic")
    session.add(instrument)
    session.flush()
    frame = Frame(instrument_id=instrument.id, path="/data/a.fits", sha256="a" * 64, size_bytes=1,
                  file_mtime=datetime(2026, 1, 1, tzinfo=UTC), header={}, imagetyp="light", naxis1=64, naxis2=64)
    sources = [Source(ra=10.0 + i, dec=20.0, healpix=i) for i in range(n - 1)]
    sources.append(Source(id=BIG_SOURCE_ID, ra=9.0, dec=20.0, healpix=99))
    session.add_all([frame, *sources])
    session.flush()
    return frame.id, [s.id for s in sources]


def _rows(session) -> list[dict]:
    result = session.execute(text("SELECT * FROM measurements ORDER BY id"))
    return [dict(r._mapping) for r in result]


def test_round_trip_nulls_arrays_booleans_and_large_ints(sessions):
    with sessions() as session, session.begin():
        frame_id, src = _frame_and_sources(session, 3)
        fluxes = np.array([[1.5, np.nan, 3.0, 4.0], [np.nan, np.nan, np.nan, np.nan], [1e5, 2e5, -7.25, np.inf]])
        n = copy_measurements(session, dict(
            frame_id=np.full(3, frame_id), source_id=np.array(src), x=[0.5, 63.25, 1e-3], y=[1.0, 2.0, 3.0],
            ra=np.array([10.123456789012, 11.0, 359.999999999]), dec=[20.0, -89.5, 0.0],
            mjd=60000.123456789, bjd_tdb=None,  # a single value repeats; None is all NULL
            fluxes=fluxes, flux_errs=np.sqrt(np.abs(fluxes)), flux=fluxes[:, 2], flux_err=[0.1, np.nan, 1.0],
            background=[np.nan, 2.0, 3.0], snr=[50.0, -np.inf, 1.0], inst_mag=[-12.3456789012345, np.nan, 5.0],
            inst_mag_err=[0.001, np.nan, 0.5], mag=[np.nan, np.nan, 17.000000000001], mag_err=None,
            upper_limit=[np.nan, 19.5, np.nan], flags=np.array([0, 2**31 - 1, 128 | 512], np.uint32),
            forced=np.array([False, True, False]),
        ))
        assert n == 3
    with sessions() as session:
        rows = _rows(session)
    assert [r["source_id"] for r in rows] == src and src[-1] == BIG_SOURCE_ID
    assert all(r["frame_id"] == frame_id for r in rows)
    a, b, c = rows
    assert (a["x"], b["x"], c["x"]) == (0.5, 63.25, pytest.approx(1e-3, rel=1e-7))  # real
    assert a["ra"] == 10.123456789012 and c["ra"] == 359.999999999  # double precision kept
    assert [r["mjd"] for r in rows] == [60000.123456789] * 3
    assert all(r["bjd_tdb"] is None and r["mag_err"] is None for r in rows)
    assert a["fluxes"] == [1.5, None, 3.0, 4.0]
    assert b["fluxes"] == [None, None, None, None]
    assert c["fluxes"] == [1e5, 2e5, -7.25, None]  # infinity is NULL too
    assert c["flux_errs"][:3] == pytest.approx([math.sqrt(1e5), math.sqrt(2e5), math.sqrt(7.25)], rel=1e-7)
    assert (a["flux"], b["flux"], c["flux"]) == (3.0, None, -7.25)
    assert (a["flux_err"], b["flux_err"]) == (pytest.approx(0.1, rel=1e-7), None)
    assert (a["background"], b["snr"], c["snr"]) == (None, None, 1.0)
    assert a["inst_mag"] == -12.3456789012345 and b["inst_mag"] is None
    assert (a["mag"], c["mag"]) == (None, 17.000000000001)
    assert (a["upper_limit"], b["upper_limit"]) == (None, 19.5)
    assert [r["flags"] for r in rows] == [0, 2**31 - 1, 640]
    assert [r["forced"] for r in rows] == [False, True, False]


def test_left_out_columns_take_their_defaults_and_orm_reads_the_rows(sessions):
    with sessions() as session, session.begin():
        frame_id, src = _frame_and_sources(session, 2)
        copy_measurements(session, dict(frame_id=frame_id, source_id=src, x=[1, 2], y=[3, 4], ra=[5, 6],
                                        dec=[7, 8], fluxes=np.zeros((2, 0)), flux_errs=np.zeros((2, 0))))
    with sessions() as session:
        got = session.query(Measurement).order_by(Measurement.id).all()
    assert [(m.flags, m.forced, m.fluxes, m.mag) for m in got] == [(0, False, [], None)] * 2
    assert [(m.x, m.y, m.ra, m.dec) for m in got] == [(1.0, 3.0, 5.0, 7.0), (2.0, 4.0, 6.0, 8.0)]


def test_rows_are_sent_in_slices_and_roll_back_with_the_session(sessions, monkeypatch):
    n = 25
    with sessions() as session, session.begin():
        frame_id, src = _frame_and_sources(session, n)
    monkeypatch.setattr("obsdb.database.copy.DEFAULT_CHUNK_ROWS", 4)
    values = np.arange(n, dtype=float)
    cols = dict(frame_id=frame_id, source_id=src, x=values, y=values, ra=values, dec=values,
                fluxes=np.column_stack([values, values]), flux_errs=np.ones((n, 2)),
                mag=np.where(values % 3 == 0, np.nan, values), forced=values % 2 == 0)
    with sessions() as session:
        session.begin()
        assert copy_measurements(session, cols) == n
        assert session.scalar(text("SELECT count(*) FROM measurements")) == n
        session.rollback()
    with sessions() as session, session.begin():
        assert session.scalar(text("SELECT count(*) FROM measurements")) == 0
        copy_measurements(session, cols)
    with sessions() as session:
        rows = _rows(session)
    assert [r["x"] for r in rows] == list(values)
    assert [r["mag"] for r in rows] == [None if v % 3 == 0 else v for v in values]
    assert [r["fluxes"] for r in rows] == [[v, v] for v in values]
    assert [r["forced"] for r in rows] == [v % 2 == 0 for v in values]


def test_writer_kinds_match_the_migrated_table(sessions):
    """Binary COPY does not convert types: each column's kind must be the table's type."""
    udt = {"int8": "int8", "int4": "int4", "float4": "float4", "float8": "float8", "bool": "bool",
           "float4[]": "_float4"}
    with sessions() as session:
        table = dict(session.execute(text(
            "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = 'measurements'")).all())
    assert {name: udt[kind] for name, kind in writer.KINDS.items()} == {k: v for k, v in table.items() if k != "id"}


def test_copy_binary_nullable_integers_and_booleans(sessions):
    """The shared encoder's NULL masks for integer and boolean kinds, and 0-d values."""
    n = 4
    with sessions() as session, session.begin():
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cur:
            cur.execute("CREATE TEMP TABLE t (a smallint, b integer, c bigint, d boolean, e double precision, f real)")
            copy_binary(cur, "t", ["a", "b", "c", "d", "e", "f"], [
                CopyColumn("int2", np.array([1, -2, 3, 32767]), np.array([False, True, False, False])),
                CopyColumn("int4", np.int32(7)),
                CopyColumn("int8", np.array([-(2**63), 0, 2**62, 5]), np.array([False, False, False, True])),
                CopyColumn("bool", np.array([True, False, True, False]), np.array([False, False, True, False])),
                CopyColumn("float8", np.array([np.nan, 1e300, -np.inf, 0.1])),
                CopyColumn("float4", None),
            ], n, chunk_rows=3)
            rows = cur.execute("SELECT * FROM t").fetchall()
    assert rows == [(1, 7, -(2**63), True, None, None), (None, 7, 0, False, 1e300, None),
                    (3, 7, 2**62, None, None, None), (32767, 7, None, False, 0.1, None)]


def test_empty_frame_writes_nothing():
    assert copy_measurements(None, {"source_id": np.array([], np.int64), "x": []}) == 0


@pytest.mark.parametrize(("columns", "match"), [
    ({"source_id": [1], "colour": [1.0]}, "not columns of measurements: colour"),
    ({"source_id": [1, 2], "x": [1.0]}, r"x has shape \(1,\), expected 2 values"),
    ({"source_id": [1, 2], "fluxes": [1.0, 2.0]}, "fluxes must be a 2-D array of 2 rows"),
    ({"source_id": [1, np.nan]}, "source_id must hold whole numbers"),
    ({"source_id": [1], "flags": [2**31]}, "flags has values outside the range of int4"),
    ({"source_id": ["a"]}, "source_id must be integers"),
])
def test_bad_columns_are_refused_before_anything_is_sent(columns, match):
    with pytest.raises(ValueError, match=match):
        copy_measurements(None, columns)


def test_unknown_copy_kind_is_refused():
    with pytest.raises(ValueError, match="unknown COPY column kind 'uuid'"):
        CopyColumn("uuid", [1])
