"""``python -m benchmarks``: every benchmark beside its baseline, in one table (see run_all)."""

import sys

from benchmarks.run_all import main

sys.exit(main())
