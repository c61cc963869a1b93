"""The embedded PostgreSQL: started by the first command, shared, initialised by itself."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import obsdb_command, run_obsdb
from fitsmaker import write_frame

pytestmark = pytest.mark.embedded


@pytest.fixture
def embedded_env(tmp_path):
    # OBSDB_HOME outside pytest's temporary root: as root, pgserver runs PostgreSQL as its
    # own user and opens the parent folders to it, and a pytest session starting meanwhile
    # closes /tmp/pytest-of-root again (mode 700), so the server could not start. The
    # folder stays, as pytest's own would (the embedded server may still be stopping).
    home = Path(tempfile.mkdtemp(prefix="obsdb-embedded-")) / "home"
    (tmp_path / "home").symlink_to(home, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSDB_")}
    env["OBSDB_HOME"] = str(home)
    return env


def test_first_command_initialises_and_data_persists(tmp_path, embedded_env):
    frame = write_frame(tmp_path / "raw" / "a.fits")
    run_obsdb("ingest", frame, env=embedded_env, check=True)
    status = json.loads(run_obsdb("status", "--format", "json", env=embedded_env, check=True).stdout)
    assert status["frames"] == 1
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
    init = run_obsdb("init", env=embedded_env, check=True)
    assert "already at revision" in init.stdout


def test_two_processes_starting_at_once(tmp_path, embedded_env):
    for i in range(2):
        write_frame(tmp_path / f"raw{i}" / "a.fits", seed=i)
    procs = [
        subprocess.Popen([*obsdb_command(), "ingest", str(tmp_path / f"raw{i}")], env=embedded_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    status = json.loads(run_obsdb("status", "--format", "json", env=embedded_env, check=True).stdout)
    assert status["frames"] == 2
