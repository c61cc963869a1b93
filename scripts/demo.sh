#!/usr/bin/env bash
# The main job on a fresh machine: install obsdb into .venv, simulate a night, ingest it and
# reduce it (masters, calibrated frames) on the embedded PostgreSQL (kept under ./obsdb-home unless OBSDB_HOME is set).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .
export OBSDB_HOME="${OBSDB_HOME:-$PWD/obsdb-home}"
unset OBSDB_DATABASE_URL
obsdb=.venv/bin/obsdb
$obsdb simulate night --seed 1 --overwrite
$obsdb ingest night/raw
$obsdb process
$obsdb masters
$obsdb frames --type light | head -n 12
