"""Jobs waiting for an instrument's masters are woken by the last build they need
(queue.wake_waiting_for_masters), not left to their next re-check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from obsdb.models import Frame, Instrument
from obsdb.pipeline import queue


def _frame(instrument: Instrument, name: str, imagetyp: str) -> Frame:
    return Frame(instrument_id=instrument.id, path=f"/data/{name}.fits", sha256=name.ljust(64, "0"), size_bytes=1,
                 file_mtime=datetime(2026, 1, 1, tzinfo=UTC), header={}, imagetyp=imagetyp, naxis1=64, naxis2=64)


def test_the_last_master_build_a_job_waits_for_wakes_it(settings, sessions):
    later = datetime.now(UTC) + timedelta(hours=1)
    app = queue.make_app(settings)
    with app.open(), sessions() as session:
        cam, other = Instrument(name="cam", profile="generic"), Instrument(name="other", profile="generic")
        session.add_all([cam, other])
        session.flush()
        frames = {name: _frame(inst, name, kind) for name, inst, kind in (
            ("bias", cam, "bias"), ("dark", cam, "dark"), ("flat", cam, "flat"), ("light1", cam, "light"),
            ("light2", cam, "light"), ("elsewhere", other, "light"))}
        session.add_all(frames.values())
        session.commit()
        queue.enqueue_frame(app, frames["bias"])
        queue.enqueue_frame(app, frames["dark"])
        for name in ("flat", "light1", "light2", "elsewhere"):  # each waiting for its next re-check
            queue.enqueue_frame(app, frames[name], schedule_at=later)
        ids = {name: f.id for name, f in frames.items()}

    def job(name: str) -> int:
        with sessions() as s:
            return s.scalar(text("SELECT id FROM procrastinate_jobs WHERE (args->>'frame_id')::bigint = :f"),
                            {"f": ids[name]})

    def set_status(name: str, status: str) -> None:
        with sessions() as s, s.begin():
            s.execute(text("UPDATE procrastinate_jobs SET status = CAST(:s AS procrastinate_job_status) "
                           "WHERE id = :id"), {"s": status, "id": job(name)})

    def finish(name: str) -> set[str]:
        """The build of ``name`` ends: the waiting jobs it wakes."""
        with sessions() as s, s.begin():
            assert queue.wake_waiting_for_masters(s, frames[name].instrument_id, job(name)) >= 0
        with sessions() as s:
            due = set(s.scalars(text("SELECT (args->>'frame_id')::bigint FROM procrastinate_jobs "
                                     "WHERE status = 'todo' AND scheduled_at <= now()")))
        return {name for name, i in ids.items() if i in due and name in ("flat", "light1", "light2", "elsewhere")}

    set_status("dark", "doing")
    assert finish("dark") == set()              # the bias build is still queued: everything waits
    set_status("bias", "succeeded")
    assert finish("dark") == {"flat"}           # the flat had only the bias and this dark to wait for
    set_status("dark", "succeeded")
    set_status("flat", "doing")
    assert finish("flat") == {"light1", "light2"}  # the last build the lights waited for
    with sessions() as s:
        assert s.scalar(text("SELECT scheduled_at > now() FROM procrastinate_jobs WHERE id = :id"),
                        {"id": job("elsewhere")})  # another instrument's light keeps waiting
