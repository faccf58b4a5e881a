"""How well digitd.ruling gives back the digit alone: IoU per kind of form ruling.

    .venv/bin/python bench/ruling_iou.py [--n 200] [--data tests/data/mnist_sample.npz]

For the first N test digits of the sample and each of bench/scans.py's form flavours, the
field's geometry as ink maps (scans.form_maps: the digit, and the digit with its printed
ruling at full strength); remove_ruling on the latter; the IoU of the ink left (above half
strength) with the digit alone. Also: the ruling alone (the empty field) must come back
`empty`. Prints one line per kind: IoU percentiles, the share at IoU >= 0.9, empty fields
recognised, and the mean time of one remove_ruling call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "daemon"))

import scans  # noqa: E402
from digitd.ruling import remove_ruling  # noqa: E402

LEVEL = 127


def as_ink(cover: np.ndarray) -> np.ndarray:
    return np.clip(cover * 255 + 0.5, 0, 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--data", default=str(HERE.parent / "tests/data/mnist_sample.npz"))
    args = parser.parse_args()
    x = np.load(args.data)["x_test"][: args.n]
    print(f"{'kind':16s} {'digits':>6s} {'IoU p5':>7s} {'p50':>6s} {'>=0.9':>7s}"
          f" {'empty ok':>9s} {'ms/call':>8s}")
    for flavour in scans.FORM_FLAVOURS:
        scores, empty, spent, calls = [], 0, 0.0, 0
        for i, digit28 in enumerate(x):
            digit, ruling = scans.form_maps(digit28, i, flavour=flavour)
            alone = as_ink(digit) > LEVEL
            start = time.perf_counter()
            left = remove_ruling(as_ink(np.maximum(digit, ruling)), LEVEL).ink > LEVEL
            spent += time.perf_counter() - start
            scores.append(np.count_nonzero(left & alone) / max(1, np.count_nonzero(left | alone)))
            _, blank = scans.form_maps(None, i, flavour=flavour)
            start = time.perf_counter()
            empty += remove_ruling(as_ink(blank), LEVEL).empty
            spent += time.perf_counter() - start
            calls += 2
        s = np.array(scores)
        print(f"{flavour:16s} {len(s):6d} {np.percentile(s, 5):7.3f} {np.median(s):6.3f}"
              f" {np.mean(s >= 0.9):7.1%} {empty / len(s):9.1%} {spent / calls * 1e3:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
