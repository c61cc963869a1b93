#!/usr/bin/env bash
# The main job on a fresh machine: install obsdb into .venv, simulate a night, load its
# reference catalog, ingest the night and reduce it (masters, calibrated frames, stars,
# astrometry, photometry, ensemble zero points) on the embedded PostgreSQL (kept under
# ./obsdb-home unless OBSDB_HOME is set), then print the most variable star's light curve.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .
export OBSDB_HOME="${OBSDB_HOME:-$PWD/obsdb-home}"
unset OBSDB_DATABASE_URL
obsdb=.venv/bin/obsdb
$obsdb simulate night --seed 1 --overwrite
$obsdb refcat load night/refcat.csv --name sim --ra-col ra --dec-col dec --id-col id \
    --mag g=g:g_err --mag r=r:r_err --replace
$obsdb ingest night/raw
$obsdb process
$obsdb masters
$obsdb variables --top 5
top=$($obsdb variables --top 1 --format csv | awk -F, 'NR == 2 {print $2}')
$obsdb lc --source-id "$top" --plot night/lightcurve.html
echo "interactive light curve: night/lightcurve.html"
