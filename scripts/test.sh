#!/usr/bin/env bash
# Install obsdb with its test extras into .venv and run the test suite. Arguments go to
# pytest. OBSDB_TEST_DATABASE_URL=postgresql://... runs the suite on that server; without
# it the suite runs on an embedded PostgreSQL (pgserver).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$rc"
