"""measurements' references to frames and sources (migrations 0006 and 0009): checked per
statement through the keys' indexes, cascaded on delete, and safe against a delete that
runs beside an insert."""

from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from obsdb.photometry.writer import copy_measurements
from test_measurement_writer import _frame_and_sources


# copy_measurements speaks to psycopg directly (binary COPY); the ORM wraps the same error.
REFUSED = (IntegrityError, psycopg.errors.ForeignKeyViolation)


def _columns(frame_id: int, source_ids) -> dict:
    n = len(source_ids)
    return dict(frame_id=np.full(n, frame_id), source_id=np.asarray(source_ids), x=np.ones(n), y=np.ones(n),
                ra=np.full(n, 10.0), dec=np.full(n, 20.0), fluxes=np.ones((n, 2)), flux_errs=np.ones((n, 2)))


def _count(engine, where: str = "TRUE") -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM measurements WHERE {where}")).scalar_one()


def test_missing_source_or_frame_is_refused_and_nothing_is_written(sessions, engine):
    with sessions() as session, session.begin():
        frame_id, src = _frame_and_sources(session, 3)
    missing_source = max(src) + 1000
    with pytest.raises(REFUSED, match=f"source_id {missing_source} is not in sources"):
        with sessions() as session, session.begin():
            copy_measurements(session, _columns(frame_id, [src[0], missing_source, src[1]]))
    with pytest.raises(REFUSED, match=f"frame_id {frame_id + 1} is not in frames"):
        with sessions() as session, session.begin():
            copy_measurements(session, _columns(frame_id + 1, src))
    assert _count(engine) == 0
    with sessions() as session, session.begin():
        assert copy_measurements(session, _columns(frame_id, src)) == 3
    assert _count(engine) == 3


def test_a_frames_rows_are_checked_by_index_not_by_reading_all_sources(sessions):
    """A frame's thousand rows against 100,000 sources: the check probes the primary key
    (0006 read and hashed the whole table for every statement)."""
    with sessions() as session, session.begin():
        frame_id, src = _frame_and_sources(session, 2)
        session.execute(text("INSERT INTO sources (ra, dec, healpix) "
                             "SELECT 0, 0, 0 FROM generate_series(1, 100000)"))
        session.execute(text("ANALYZE sources"))
    with sessions() as session, session.begin():
        ids = session.scalars(text("SELECT id FROM sources ORDER BY id LIMIT 1000")).all()
        copy_measurements(session, _columns(frame_id, ids))
        seq, idx = session.execute(text("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
                                        "WHERE relname = 'sources'")).one()
    assert seq == 0 and idx >= 1, (seq, idx)


def test_delete_cascades_and_references_cannot_change(sessions, engine):
    with sessions() as session, session.begin():
        frame_id, src = _frame_and_sources(session, 3)
        copy_measurements(session, _columns(frame_id, src))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM sources WHERE id = :s"), {"s": src[0]})
    assert _count(engine) == 2 and _count(engine, f"source_id = {src[0]}") == 0
    with pytest.raises(IntegrityError, match="cannot change"):
        with engine.begin() as conn:
            conn.execute(text("UPDATE measurements SET source_id = :s WHERE source_id = :t"),
                         {"s": src[2], "t": src[1]})
    with engine.begin() as conn:  # other columns update as before
        conn.execute(text("UPDATE measurements SET mag = 12.5"))
        conn.execute(text("DELETE FROM frames WHERE id = :f"), {"f": frame_id})
    assert _count(engine) == 0


def test_a_delete_beside_an_insert_leaves_no_orphan(sessions, engine):
    """An insert in flight (checked, not committed) and a delete of its source: the
    delete waits for the insert to end and then removes its rows, as a key's row lock
    would have made it; and an insert that starts after the delete fails."""
    with sessions() as session, session.begin():
        frame_id, src = _frame_and_sources(session, 3)

    inserting = sessions()
    inserting.begin()
    copy_measurements(inserting, _columns(frame_id, src))  # checked; not committed yet

    deleted = threading.Event()

    def delete_source():
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM sources WHERE id = :s"), {"s": src[0]})
        deleted.set()

    deleter = threading.Thread(target=delete_source)
    deleter.start()
    time.sleep(1.0)
    assert not deleted.is_set(), "the delete must wait for the insert that references the source"
    inserting.commit()
    inserting.close()
    deleter.join(timeout=30)
    assert deleted.is_set()
    assert _count(engine, f"source_id = {src[0]}") == 0
    assert _count(engine) == 2

    # The other order: the delete holds its lock until it commits, and the insert that
    # waited behind it finds the source gone.
    with engine.connect() as conn:
        conn.execute(text("DELETE FROM sources WHERE id = :s"), {"s": src[1]})
        failures: list[BaseException] = []

        def insert_behind():
            try:
                with sessions() as session, session.begin():
                    copy_measurements(session, _columns(frame_id, [src[1]]))
            except (DBAPIError, psycopg.Error) as exc:
                failures.append(exc)

        inserter = threading.Thread(target=insert_behind)
        inserter.start()
        time.sleep(1.0)
        assert inserter.is_alive(), "the insert must wait for the delete's lock"
        conn.commit()
    inserter.join(timeout=30)
    assert len(failures) == 1 and "is not in sources" in str(failures[0])
    with engine.connect() as conn:
        orphans = conn.execute(text("SELECT count(*) FROM measurements m "
                                    "WHERE NOT EXISTS (SELECT 1 FROM sources s WHERE s.id = m.source_id)")).scalar_one()
    assert orphans == 0
