"""``obsdb reprocess``: a stage run again with a changed configuration replaces the rows it
made (new time, new config hash, new apertures), measures nothing twice, and a dry run or
a hostile field name changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from conftest import run_obsdb
from obsdb.cli.main import cli
from obsdb.config import Settings, load_settings
from obsdb.provenance import VERSION, config_hash

NIGHT = "2025-10-14"
HOSTILE_FIELDS = [
    "x'; DROP TABLE frames; --",
    "FIELD1' OR '1'='1",
    "%",
    "FIELD1\n--stage masters",
    "FIELD1\u200b",
    "F" * 5000,
]


def _snapshot(engine) -> dict:
    """Everything a reprocess may change, keyed for comparison."""
    with engine.connect() as conn:
        return {
            "solutions": {r.frame_id: (r.created_at, r.config_hash, tuple(r.apertures)) for r in conn.execute(
                text("SELECT frame_id, created_at, config_hash, apertures FROM frame_solutions"))},
            "reductions": {r.frame_id: (r.created_at, r.config_hash) for r in conn.execute(
                text("SELECT frame_id, created_at, config_hash FROM reductions"))},
            "ensembles": {(r.field, r.filter): (r.solved_at, r.config_hash) for r in conn.execute(
                text("SELECT field, filter, solved_at, config_hash FROM ensembles"))},
            "measurement_ids": {r.frame_id: (r.lo, r.hi, r.n) for r in conn.execute(
                text("SELECT frame_id, min(id) AS lo, max(id) AS hi, count(*) AS n FROM measurements GROUP BY 1"))},
            "jobs": conn.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar_one(),
            "frames": conn.execute(text("SELECT count(*) FROM frames")).scalar_one(),
        }


@pytest.fixture
def processed_night(tmp_path, cli_env, db_url):
    """A tiny simulated night (1 field, 2 lights per filter, 256 px), ingested and processed."""
    out = tmp_path / "night"
    run_obsdb("simulate", out, "--size", "256", "--fields", "1", "--lights", "2", "--start-date", NIGHT,
              env=cli_env, check=True)
    run_obsdb("refcat", "load", out / "refcat.csv", "--name", "sim", "--ra-col", "ra", "--dec-col", "dec",
              "--id-col", "id", "--mag", "g=g:g_err", "--mag", "r=r:r_err", env=cli_env, check=True)
    run_obsdb("ingest", out / "raw", env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True)
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


@pytest.mark.slow
def test_reprocess_measure_with_a_changed_config(processed_night, cli_env, tmp_path):
    engine = processed_night
    before = _snapshot(engine)
    assert len(before["solutions"]) == 4 and len(before["ensembles"]) == 2
    old_hash = config_hash(Settings(home=tmp_path))  # the defaults: the night ran without a config file
    assert {s[1] for s in before["solutions"].values()} == {old_hash}
    assert all(len(s[2]) == 4 for s in before["solutions"].values())  # the default four apertures

    # A dry run and hostile field names change nothing (not even the job queue).
    dry = run_obsdb("reprocess", "--night", NIGHT, "--stage", "measure", "--dry-run", "--format", "json",
                    env=cli_env, check=True)
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] and planned["frames"] == 4 and planned["queued"] == 0
    assert planned["made_with"] == {f"{VERSION}/{old_hash}": 4}
    runner = CliRunner()
    for hostile in HOSTILE_FIELDS:
        for stage in ("measure", "ensemble"):
            result = runner.invoke(cli, ["reprocess", "--field", hostile, "--stage", stage], env=cli_env)
            assert result.exit_code == 1, result.output
            assert "no light frame matches" in result.output and "fields: FIELD1" in result.output
    assert _snapshot(engine) == before

    # The same night measured again with two apertures instead of four.
    config = tmp_path / "changed.toml"
    config.write_text("[photometry]\naperture_fwhm_factors = [1.0, 2.0]\n")
    new_hash = config_hash(load_settings(config))
    assert new_hash != old_hash
    env = {**cli_env, "OBSDB_CONFIG": str(config)}
    proc = run_obsdb("reprocess", "--night", NIGHT, "--field", " field1 ", "--stage", "measure", env=env, check=True)
    assert "queued measure for 4 frame(s)" in proc.stdout
    assert f"now: {VERSION}/{new_hash}" in proc.stdout
    run_obsdb("process", "--no-progress", env=env, check=True)

    after = _snapshot(engine)
    assert after["frames"] == before["frames"]
    assert after["reductions"] == before["reductions"]  # upstream untouched
    assert set(after["solutions"]) == set(before["solutions"])
    for frame_id, (created, digest, apertures) in after["solutions"].items():
        assert created > before["solutions"][frame_id][0]
        assert digest == new_hash
        assert len(apertures) == 2
        lo, _, n = after["measurement_ids"][frame_id]
        assert lo > max(hi for _, hi, _ in before["measurement_ids"].values())  # every row replaced
        assert n > 0
    for key, (solved, digest) in after["ensembles"].items():
        assert solved > before["ensembles"][key][0] and digest == new_hash
    with engine.connect() as conn:
        duplicates = conn.execute(text(
            "SELECT count(*) FROM (SELECT frame_id, source_id FROM measurements GROUP BY 1, 2 HAVING count(*) > 1) d"
        )).scalar_one()
        widths = set(conn.execute(text("SELECT DISTINCT array_length(fluxes, 1) FROM measurements")).scalars())
        orphans = conn.execute(text(
            "SELECT count(*) FROM sources s WHERE NOT EXISTS (SELECT 1 FROM measurements m WHERE m.source_id = s.id)"
        )).scalar_one()
        states = dict(conn.execute(text(
            "SELECT state, count(*) FROM frames WHERE imagetyp = 'light' GROUP BY 1")).all())
        failed_jobs = conn.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'")).scalar_one()
    assert duplicates == 0 and orphans == 0 and failed_jobs == 0
    assert widths == {2}
    assert states == {"measured": 4}

    # One frame reduced again: its reduction is new, the others are not; then it is
    # measured again by itself (the reduce stage queues the stages after it).
    frame_id = min(after["reductions"])
    proc = run_obsdb("reprocess", "--frame-id", str(frame_id), "--stage", "reduce", env=env, check=True)
    assert "queued reduce for 1 frame(s)" in proc.stdout
    run_obsdb("process", "--no-progress", env=env, check=True)
    last = _snapshot(engine)
    for fid, (created, digest) in last["reductions"].items():
        if fid == frame_id:
            assert created > after["reductions"][fid][0] and digest == new_hash
            assert last["solutions"][fid][0] > after["solutions"][fid][0]
        else:
            assert (created, digest) == after["reductions"][fid]
            assert last["solutions"][fid] == after["solutions"][fid]

    # The products folder lost (a restore from a database backup): masters, then every
    # light frame, are rebuilt from the raw frames, each once.
    home = Path(cli_env["OBSDB_HOME"])
    shutil.rmtree(home / "products")
    run_obsdb("reprocess", "--all", "--stage", "masters", env=env, check=True)
    run_obsdb("reprocess", "--all", "--stage", "reduce", env=env, check=True)
    run_obsdb("process", "--no-progress", env=env, check=True)
    with engine.connect() as conn:
        paths = list(conn.execute(text("SELECT path FROM masters UNION ALL SELECT path FROM reductions")).scalars())
        states = dict(conn.execute(text("SELECT state, count(*) FROM frames GROUP BY 1")).all())
        reduced = conn.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'obsdb:reduce_frame' "
                                    "AND status = 'succeeded'")).scalar_one()
        failed_jobs = conn.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'")).scalar_one()
    assert paths and all(Path(p).is_file() for p in paths)
    assert set(states) == {"measured", "combined"} and failed_jobs == 0
    assert reduced == 4 + 1 + 4  # the night, the one frame above, the rebuild


def test_reprocess_needs_a_choice_of_frames():
    runner = CliRunner()
    result = runner.invoke(cli, ["reprocess"])
    assert result.exit_code == 2 and "--all" in result.output
    result = runner.invoke(cli, ["reprocess", "--all", "--night", NIGHT])
    assert result.exit_code == 2 and "does not go with" in result.output
    result = runner.invoke(cli, ["reprocess", "--night", "2025-13-45"])
    assert result.exit_code == 2 and "--night" in result.output
    result = runner.invoke(cli, ["reprocess", "--all", "--stage", "everything"])
    assert result.exit_code == 2 and "--stage" in result.output
    result = runner.invoke(cli, ["reprocess", "--frame-id", "0"])
    assert result.exit_code == 2


def test_an_empty_catalog_has_nothing_to_reprocess(cli_env):
    runner = CliRunner()
    result = runner.invoke(cli, ["reprocess", "--all", "--stage", "masters", "--dry-run"], env=cli_env)
    assert result.exit_code == 1 and "no calibration frame matches every frame" in result.output
    result = runner.invoke(cli, ["reprocess", "--field", "FIELD1", "--stage", "masters"], env=cli_env)
    assert result.exit_code == 1 and "have no field" in result.output

