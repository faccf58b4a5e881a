"""Shared test set-up: bench/ is importable, so the tests and the benches share one home for
their helpers (harness.py: the daemon as a subprocess, run_cli, the fault scenarios' accounting;
pngwrite.py: test PNGs and bombs; scans.py: realistic scans)."""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
