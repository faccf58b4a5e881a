"""Labelled PNG sets for `digitd evaluate --set DIR`: every accuracy figure in
docs/BENCHMARKS.md is measured on one of these, through the daemon's own intake.

    .venv/bin/python bench/evalsets.py --out /tmp/sets [--sets mnist usps scans fonts]
        [--mnist ../shared/data/mnist] [--usps ../shared/data/usps] [--n 10000] [--fonts 1000]
        [--seed 0]

Writes DIR/<set>/NNNNN_<flavour>.png and DIR/<set>/labels.csv (file,label) for:
  mnist   the MNIST test digits as 28x28 PNGs, white on black (the control: the model's own
          population, preprocessing's shortest path)
  usps    the held-out USPS test part (digitd.dataset's shared split: never trained or
          calibrated on), each 16x16 digit as a page: enlarged 4x bicubic, dark ink on white
          with a paper margin (digitd.dataset.usps_page, the same image training uses)
  usps16  the same digits as 16-pixel scans: their own 16x16 values, 2 px of paper around
  scans   the MNIST test digits as realistic scans (bench/scans.py: every flavour in turn)
  forms   the MNIST test digits written into printed form fields (bench/scans.py render_form:
          every FORM_FLAVOURS in turn)
  fonts   digits in OpenCV's outline fonts on paper (bench/scans.py)
Seeded: the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "daemon"))

import scans  # noqa: E402
from accuracy import load_test  # noqa: E402
from digitd.dataset import load_usps, usps_page  # noqa: E402
from pngwrite import encode_png  # noqa: E402

SETS = ("mnist", "usps", "usps16", "scans", "forms", "fonts")


def usps_low_res(digit16: np.ndarray) -> np.ndarray:
    """A USPS digit as a 16-pixel scan: its own 16x16 grey values, dark on white, with 2 px of
    paper around (no enlargement: preprocessing must scale it up itself)."""
    grey = np.clip((1.0 - digit16) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.pad(grey, 2, constant_values=255)


def _write(job) -> tuple[str, int]:
    kind, index, payload, label, seed, folder = job
    if kind == "mnist":
        name, data = f"{index:05d}_mnist.png", encode_png(payload)
    elif kind == "usps":
        name, data = f"{index:05d}_usps.png", encode_png(usps_page(payload))
    elif kind == "usps16":
        name, data = f"{index:05d}_usps16.png", encode_png(usps_low_res(payload))
    elif kind == "forms":
        data, flavour = scans.render_form(payload, index, seed)
        name = f"{index:05d}_{flavour}.png"
    elif kind == "scans":
        data, flavour = scans.render_scan(payload, index, seed)
        name = f"{index:05d}_{flavour}.png"
    else:
        data, flavour = scans.render_font_digit(payload, index, seed)
        name = f"{index:05d}_{scans.FONTS[index % len(scans.FONTS)][0]}_{flavour}.png"
    (Path(folder) / name).write_bytes(data)
    return name, label


def jobs_for(kind: str, args, folder: Path) -> list[tuple]:
    if kind in ("mnist", "scans", "forms"):
        x, y = load_test(Path(args.mnist))
        n = min(args.n, len(x))
        return [(kind, i, x[i], int(y[i]), args.seed, str(folder)) for i in range(n)]
    if kind in ("usps", "usps16"):
        usps = load_usps(args.usps)
        x, y = usps.part("test")
        return [(kind, i, x[i], int(y[i]), args.seed, str(folder)) for i in range(len(y))]
    return [(kind, i, i % 10, i % 10, args.seed, str(folder)) for i in range(args.fonts)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the sets into")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--mnist", default=str(ROOT.parent / "shared/data/mnist"))
    parser.add_argument("--usps", default=str(ROOT.parent / "shared/data/usps"))
    parser.add_argument("--n", type=int, default=10000,
                        help="MNIST test digits (mnist, scans, forms)")
    parser.add_argument("--fonts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    for kind in args.sets:
        folder = Path(args.out) / kind
        folder.mkdir(parents=True, exist_ok=True)
        jobs = jobs_for(kind, args, folder)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            written = list(pool.map(_write, jobs, chunksize=64))
        with open(folder / "labels.csv", "w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(["file", "label"])
            out.writerows(written)
        print(f"{kind}: {len(written)} PNGs and labels.csv in {folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
