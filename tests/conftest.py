"""Shared test set-up: bench/ is importable, so the tests and the benches share one home for
their helpers (harness.py: the daemon as a subprocess, run_cli, the fault scenarios' accounting;
pngwrite.py: test PNGs and bombs; scans.py: realistic scans)."""

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from harness import SAMPLE  # noqa: E402 - bench/ is importable only from here on


@pytest.fixture(scope="session")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """The committed 4,000-digit MNIST sample: (images 28x28 uint8, labels)."""
    data = np.load(SAMPLE)
    return data["x_test"], data["y_test"]
