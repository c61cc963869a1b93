"""A simulated night through the CLI, as README's first command runs it."""

from __future__ import annotations

import csv
import json
from collections import Counter

from obsdb import __version__

from conftest import run_obsdb


def test_version(cli_env):
    proc = run_obsdb("--version", env=cli_env, check=True)
    assert __version__ in proc.stdout


def test_simulated_night_is_ingested_by_type(tmp_path, cli_env):
    out = tmp_path / "night"
    run_obsdb("simulate", out, "--seed", "3", "--size", "256", "--lights", "2", env=cli_env, check=True)
    refused = run_obsdb("simulate", out, "--size", "256", env=cli_env)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr

    with open(out / "truth" / "frames.csv") as fh:
        written = Counter(row["imagetyp"] for row in csv.DictReader(fh))
    names = {"Bias Frame": "bias", "Dark Frame": "dark", "Flat Field": "flat", "Light Frame": "light"}
    truth = Counter({names[k]: n for k, n in written.items()})
    # the whole output folder: truth/ and refcat.csv must not be taken for frames
    summary = json.loads(run_obsdb("ingest", "--format", "json", out, env=cli_env, check=True).stdout)
    assert summary["failures"] == []
    assert Counter(summary["new_by_type"]) == truth
    assert truth["light"] == 2 * 2 * 2  # fields x filters x lights

    lights = json.loads(run_obsdb("frames", "--type", "light", "--format", "json", env=cli_env, check=True).stdout)
    assert {f["filter"] for f in lights} == {"g'", "r'"}
    assert all(f["object"].startswith("FIELD") for f in lights)
    status = json.loads(run_obsdb("status", "--format", "json", env=cli_env, check=True).stdout)
    assert status["frames"] == sum(truth.values())
