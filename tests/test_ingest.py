"""Ingest end to end: real files, real PostgreSQL, the CLI as a subprocess."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy import func, select, text

from obsdb.ingest import Ingestor
from obsdb.models import Frame, RejectedFile

from conftest import run_obsdb
from fitsmaker import write_frame


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_night_is_classified(ngc520_copy, cli_env):
    proc = run_obsdb("ingest", "--format", "json", ngc520_copy, env=cli_env, check=True)
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {"new": 28}
    assert summary["new_by_type"] == {"bias": 7, "dark": 7, "flat": 7, "light": 7}

    frames = json.loads(run_obsdb("frames", "--format", "json", env=cli_env, check=True).stdout)
    assert len(frames) == 28
    by_name = {Path(f["path"]).name: f for f in frames}
    light = by_name["NGC520-001-g.fit.gz"]
    assert light["imagetyp"] == "light"
    assert light["filter"] == "Sloan g'"
    assert light["exptime"] == 300
    assert light["binning"] == "1x1"
    assert light["date_obs"].startswith("2018-10-14T03:07:02")
    assert light["night"] == "2018-10-13"
    # mid-exposure MJD: JD 2458405.6298842593 at start + 150 s
    assert abs(light["mjd_mid"] - (2458405.6298842593 - 2400000.5 + 150 / 86400)) < 1e-6
    assert {by_name[f"calib-00{i}-d.fit.gz"]["exptime"] for i in range(1, 8)} == {300}

    lights = json.loads(run_obsdb("frames", "--type", "light", "--format", "json", env=cli_env, check=True).stdout)
    assert sorted(Path(f["path"]).name for f in lights) == [f"NGC520-00{i}-g.fit.gz" for i in range(1, 8)]
    csv_out = run_obsdb("frames", "--type", "bias", "--format", "csv", env=cli_env, check=True).stdout
    assert csv_out.splitlines()[0].split(",")[:4] == ["id", "path", "imagetyp", "object"]
    assert len(csv_out.splitlines()) == 8


def test_reingest_copy_and_rename_make_no_duplicates(tmp_path, settings, sessions):
    raw = tmp_path / "raw"
    for i in range(3):
        write_frame(raw / f"f{i}.fits", seed=i, date_obs=f"2024-03-01T02:0{i}:00")
    ingestor = Ingestor(sessions, settings)
    first = ingestor.ingest([raw])
    assert first.counts() == {"new": 3}

    again = ingestor.ingest([raw])
    assert again.counts() == {"unchanged": 3}

    shutil.copy(raw / "f0.fits", raw / "copy-of-f0.fits")
    (raw / "f1.fits").rename(raw / "renamed-f1.fits")
    third = {Path(o.path).name: o for o in ingestor.ingest([raw]).outcomes}
    assert {name: o.status for name, o in third.items()} == {
        "copy-of-f0.fits": "duplicate", "f0.fits": "unchanged", "f2.fits": "unchanged",
        "renamed-f1.fits": "moved",
    }
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Frame)) == 3
        moved = s.get(Frame, third["renamed-f1.fits"].frame_id)
        assert moved.path == str(raw / "renamed-f1.fits")


def test_changed_content_becomes_new_version(tmp_path, settings, sessions):
    path = write_frame(tmp_path / "frame.fits", seed=1)
    ingestor = Ingestor(sessions, settings)
    (old,) = ingestor.ingest([path]).outcomes
    write_frame(path, seed=2)  # the camera software rewrote the file
    (new,) = ingestor.ingest([path]).outcomes
    assert new.status == "new_version"
    with sessions() as s:
        rows = {f.id: f for f in s.scalars(select(Frame))}
    assert rows[old.frame_id].state == "superseded" and rows[old.frame_id].superseded_at is not None
    assert rows[new.frame_id].version == 2 and rows[new.frame_id].supersedes_id == old.frame_id
    assert rows[new.frame_id].sha256 == _sha(path)


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    good = write_frame(folder / "good.fits")
    bad = {}
    bad["empty"] = folder / "empty.fits"
    bad["empty"].write_bytes(b"")
    bad["empty_too"] = folder / "empty-too.fits"  # the same (no) content: a file of its own still
    bad["empty_too"].write_bytes(b"")
    bad["not_fits"] = folder / "notes.fits"
    bad["not_fits"].write_text("this is an observing log, not an image\n" * 100)
    bad["truncated"] = folder / "truncated.fits"
    bad["truncated"].write_bytes(good.read_bytes()[:4000])
    bad["bad_gzip"] = folder / "garbage.fits.gz"
    bad["bad_gzip"].write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8)
    bad["truncated_gz"] = folder / "cut.fits.gz"
    bad["truncated_gz"].write_bytes(gzip.compress(good.read_bytes())[:-600])
    bad["cube"] = folder / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 8, 8), dtype=np.int16)).writeto(bad["cube"])
    bad["no_image"] = folder / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]).writeto(bad["no_image"])
    good.unlink()
    return bad


def test_bad_files_are_recorded_quarantined_and_kept(tmp_path, cli_env, sessions, obsdb_home):
    bad = _bad_files(tmp_path / "bad")
    before = {k: _sha(p) for k, p in bad.items()}
    proc = run_obsdb("ingest", "--format", "json", tmp_path / "bad", env=cli_env)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert len(summary["failures"]) == len(bad)
    assert {Path(f["path"]).name for f in summary["failures"]} == {p.name for p in bad.values()}

    with sessions() as s:
        rejected = {Path(r.path).name: r for r in s.scalars(select(RejectedFile))}
        assert s.scalar(select(func.count()).select_from(Frame)) == 0
    assert set(rejected) == {p.name for p in bad.values()}
    for kind, path in bad.items():
        row = rejected[path.name]
        assert row.reason, kind
        assert path.exists() and _sha(path) == before[kind], "the original must never change"
        copy = Path(row.quarantine_path)
        assert copy.is_relative_to(obsdb_home / "quarantine")
        assert _sha(copy) == before[kind]
    assert rejected["truncated.fits"].kind == "truncated"
    assert rejected["cube.fits"].kind == "cube"
    assert rejected["table.fits"].kind == "no_image"
    assert rejected["notes.fits"].kind == "not_fits"
    assert rejected["empty.fits"].kind == "empty"

    # Trying again records the attempt, not a second row.
    run_obsdb("ingest", tmp_path / "bad", env=cli_env)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(RejectedFile)) == len(bad)
        assert s.scalar(select(func.min(RejectedFile.attempts))) == 2

    status = json.loads(run_obsdb("status", "--format", "json", env=cli_env, check=True).stdout)
    assert status["rejected_files"] == len(bad)
    assert all(r["reason"] for r in status["rejected"])
    text_status = run_obsdb("status", env=cli_env, check=True).stdout
    assert "truncated" in text_status


def test_header_is_stored_as_queryable_json(tmp_path, settings, sessions):
    path = write_frame(tmp_path / "x.fits", extra={"OBSERVER": "E. Hubble", "HISTORY": "flat-fielded nowhere"})
    Ingestor(sessions, settings).ingest([path])
    with sessions() as s:
        observer = s.scalar(text("SELECT header->>'OBSERVER' FROM frames"))
        history = s.scalar(text("SELECT header->'HISTORY' FROM frames"))
    assert observer == "E. Hubble"
    assert history == ["flat-fielded nowhere"]


def test_server_schema_must_be_initialised(empty_db_url, obsdb_home, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSDB_")}
    env.update(OBSDB_HOME=str(obsdb_home), OBSDB_DATABASE_URL=empty_db_url)
    refused = run_obsdb("status", env=env)
    assert refused.returncode != 0
    assert "run `obsdb init`" in refused.stderr
    run_obsdb("init", env=env, check=True)
    assert json.loads(run_obsdb("status", "--format", "json", env=env, check=True).stdout)["frames"] == 0


def test_large_batch_reads_headers_in_worker_processes(tmp_path, settings, sessions):
    raw = tmp_path / "many"
    for i in range(80):
        write_frame(raw / f"f{i:03d}.fits", seed=i, date_obs=f"2024-03-01T03:{i // 60:02d}:{i % 60:02d}")
    (raw / "broken.fits").write_text("not a FITS file")
    report = Ingestor(sessions, settings, processes=2).ingest([raw])
    assert report.counts() == {"new": 80, "rejected": 1}
    with sessions() as s:
        assert s.scalar(select(func.count(func.distinct(Frame.sha256)))) == 80
        dates = s.scalars(select(Frame.date_obs).order_by(Frame.date_obs)).all()
    assert dates[0].isoformat() == "2024-03-01T03:00:00+00:00"
    assert Ingestor(sessions, settings, processes=2).ingest([raw]).counts() == {"unchanged": 80, "rejected": 1}
