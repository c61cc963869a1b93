"""Forced photometry catches up: a star first detected on a later frame, and a target added
after the night was measured, get a point on every frame they fall on.

The night's first frames are measured as a cloudy or defocused start would be, finding
only the brightest stars (a detection threshold of 40 sigma); the rest of the night,
measured as usual, finds stars of S/N 10-40 for the first time. The first frames must
then be measured again at them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy import text

from obsdb.photometry.catch_up import CONFIRM_DETECTIONS
from obsdb.simulate import SimulationConfig, simulate

from conftest import run_obsdb

pytestmark = pytest.mark.slow

CONFIRMED = "(SELECT count(*) FROM measurements m WHERE m.source_id = s.id AND NOT m.forced) >= :n"
SIM = SimulationConfig(size=384, n_fields=1, lights_per_field_per_filter=8, seed=31, stars_per_deg2=6000.0)


def _missing_points(session) -> tuple[int, int]:
    """(frame, source) pairs where a source detected on CONFIRM_DETECTIONS frames falls on a
    measured frame's pixels (its WCS) but has no measurement there; and all such pairs."""
    frames = session.execute(text(
        "SELECT fs.frame_id, fs.wcs_header, f.naxis1, f.naxis2 FROM frame_solutions fs "
        "JOIN frames f ON f.id = fs.frame_id WHERE f.state = 'measured'")).all()
    sources = session.execute(text(
        f"SELECT s.id, s.ra, s.dec FROM sources s WHERE {CONFIRMED}"),
        {"n": CONFIRM_DETECTIONS}).all()
    have = set(map(tuple, session.execute(text("SELECT frame_id, source_id FROM measurements")).all()))
    ids = np.array([s.id for s in sources])
    ra, dec = np.array([s.ra for s in sources]), np.array([s.dec for s in sources])
    missing = total = 0
    for f in frames:
        x, y = WCS(fits.Header.fromstring(f.wcs_header)).celestial.world_to_pixel_values(ra, dec)
        on = (x >= 0) & (y >= 0) & (x <= f.naxis1 - 1) & (y <= f.naxis2 - 1)
        total += int(on.sum())
        missing += sum((f.frame_id, int(s)) not in have for s in ids[on])
    return missing, total


def test_sources_found_later_and_new_targets_are_measured_on_earlier_frames(tmp_path, cli_env, sessions):
    out = tmp_path / "sim"
    simulate(out, SIM)
    first, rest = tmp_path / "first", tmp_path / "rest"
    for path in sorted((out / "raw").rglob("*.fits")):
        light = path.name.startswith("FIELD")
        late = light and int(path.stem.rsplit("-", 1)[1]) > 2
        (rest if late else first).mkdir(exist_ok=True)
        shutil.copy(path, (rest if late else first) / path.name)
    run_obsdb("refcat", "load", out / "refcat.csv", "--name", "sim", "--ra-col", "ra", "--dec-col", "dec",
              "--id-col", "id", "--mag", "g=g:g_err", "--mag", "r=r:r_err", env=cli_env, check=True)
    poor = tmp_path / "poor.toml"
    poor.write_text("[photometry]\ndetect_threshold = 40.0\n")
    run_obsdb("ingest", first, env={**cli_env, "OBSDB_CONFIG": str(poor)}, check=True)
    run_obsdb("process", "--no-progress", env={**cli_env, "OBSDB_CONFIG": str(poor)}, check=True, timeout=900)
    with sessions() as session:
        first_upto = session.scalar(text("SELECT max(id) FROM sources"))
    run_obsdb("ingest", rest, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True, timeout=900)
    with sessions() as session:
        missing, total = _missing_points(session)
        later = session.scalar(text(f"SELECT count(*) FROM sources s WHERE s.id > :upto AND {CONFIRMED}"),
                               {"upto": first_upto, "n": CONFIRM_DETECTIONS})
        states = dict(session.execute(text(
            "SELECT state, count(*) FROM frames WHERE imagetyp = 'light' GROUP BY state")).all())
        failed_jobs = session.scalar(text("SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"))
    assert states == {"measured": 2 * SIM.lights_per_field_per_filter}
    assert failed_jobs == 0
    assert later >= 20, f"only {later} stars first found after the poor frames"
    assert total > 0 and missing == 0, f"{missing} of {total} points missing"

    # A target added after the night, between the stars: no frame has a point of it yet.
    with sessions() as session:
        ra, dec = session.execute(text(
            "SELECT avg(ra_center), avg(dec_center) FROM frame_solutions")).one()
    added = run_obsdb("targets", "add", "LATE", f"{ra:.6f}", f"{dec:.6f}", env=cli_env, check=True).stdout
    n_frames = 2 * SIM.lights_per_field_per_filter
    assert f"{n_frames} frame(s) queued to be measured at it" in added, added
    run_obsdb("process", "--no-progress", env=cli_env, check=True, timeout=900)
    lc = json.loads(run_obsdb("lc", "--target", "LATE", "--include-flagged", "--format", "json",
                              env=cli_env, check=True).stdout)
    rows = lc["rows"] if isinstance(lc, dict) else lc
    assert len(rows) == n_frames
    assert all(r["forced"] for r in rows)
    # Adding it again finds nothing more to do.
    again = run_obsdb("targets", "add", "LATE", f"{ra:.6f}", f"{dec:.6f}", env=cli_env, check=True).stdout
    assert "queued" not in again, again
