"""A field with no reference catalog: header WCSs that disagree by their pointing errors
must not give each frame its own copy of every star. The frames are aligned to one of
them, and each star is one source measured on every frame."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from obsdb.simulate import SimulationConfig, simulate

from conftest import run_obsdb

pytestmark = pytest.mark.slow

# Header WCSs 3-20 px off (the simulator's default), pointing jitter of 8 px; no refcat.
SIM = SimulationConfig(size=384, n_fields=1, lights_per_field_per_filter=8, seed=23, stars_per_deg2=6000.0)


def test_frames_align_to_one_frame_and_stars_are_not_multiplied(tmp_path, cli_env, sessions):
    out = tmp_path / "sim"
    simulate(out, SIM)
    run_obsdb("ingest", out / "raw", env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True, timeout=900)
    with sessions() as session:
        states = dict(session.execute(text(
            "SELECT state, count(*) FROM frames WHERE imagetyp = 'light' GROUP BY state")).all())
        methods = dict(session.execute(text("SELECT method, count(*) FROM frame_solutions GROUP BY method")).all())
        n_sources = session.scalar(text("SELECT count(*) FROM sources"))
        per_frame = session.scalars(text(
            "SELECT count(*) FILTER (WHERE NOT forced) FROM measurements GROUP BY frame_id")).all()
        # Per frame but the first: the share of its detections that made new sources.
        new_share = session.scalars(text(
            "SELECT (SELECT count(*) FROM sources s WHERE s.first_frame_id = m.frame_id)::float "
            "/ count(*) FILTER (WHERE NOT m.forced) FROM measurements m "
            "WHERE m.frame_id > (SELECT min(frame_id) FROM frame_solutions) GROUP BY m.frame_id")).all()
    n_lights = 2 * SIM.lights_per_field_per_filter
    assert states == {"measured": n_lights}
    # One frame keeps its header's solution; the others are aligned to it.
    assert methods.get("header") == 1 and methods.get("aligned") == n_lights - 1, methods
    # Every star a source once: the sources are about as many as the detections on the
    # richest frame (a few more from faint stars detected on some frames only), where
    # disagreeing header WCSs gave up to one new copy of each star per frame.
    assert n_sources <= 1.3 * max(per_frame), (n_sources, max(per_frame))
    # After the first frame, the stars a frame detects are known: few make new sources.
    assert sorted(new_share)[len(new_share) // 2] <= 0.15, sorted(new_share)
