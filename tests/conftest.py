"""Shared test set-up: bench/ is importable (the scan generator and the PNG writer)."""

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
