"""Reviewed numbers, as `digitd review` leaves them, for `digitd train --arch numbers
--corrections`: the simulated reviewer of docs/BENCHMARKS.md ("Numbers learnt from
reviewers").

    .venv/bin/python bench/number_corrections.py (--usps ../shared/data/usps | --data
        ../shared/data/mnist | --uci) --n 4000 --seed 31 --out /tmp/reviewed [--all]

1. Renders N numbers (bench/number_scans.py: 2-8 digits, paper flavours, separators...)
   written with the digits of the USPS *train* part (digitd.dataset's shared split; the
   bench's `number_accuracy.py --usps` figures are on the test part, which this never
   uses), with --data MNIST's training digits 0-54,999, or with --uci the UCI digits'
   reviewed half (bench/corrections.uci_halves: writers neither MNIST nor USPS holds;
   `number_accuracy.py --uci` measures on the other half).
2. Reads them with `digitd predict --json` (the shipped models, or --number-model, exactly
   as the daemon would) and, as a reviewer would, gives a verdict on each one sent to review
   (low_confidence; with --all, on every one): its true string as the label, `corrected`
   where the reading was wrong, `confirmed` where it was right.
3. Records each verdict with digitd.review's own writer (digitd.review.verdicts.Corrections)
   into the outbox --out, the inputs filed in its processed/ as the daemon files them:
   corrections.csv and corrections/<id>.png, as `digitd review` leaves them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "daemon"))

import number_scans  # noqa: E402

_X = _Y = None


def _init(usps: str | None, data: str | None, uci: bool = False) -> None:
    global _X, _Y
    from digitd.dataset import load_mnist, load_usps, usps_ink
    from digitd.train_numbers import held_out_from

    if uci:  # the half of the UCI digits bench/number_accuracy.py --uci never measures
        from corrections import uci_halves

        _X, _Y = uci_halves()[0]
    elif usps:
        x, y = load_usps(usps).part("train")
        _X, _Y = usps_ink(x), y
    else:
        mnist = load_mnist(data)
        first_held = held_out_from(len(mnist.x_train))
        _X, _Y = mnist.x_train[:first_held], mnist.y_train[:first_held]


def _render(job):
    index, seed, folder = job
    data, text, _ = number_scans.render_number(_X, _Y, index, seed)
    path = Path(folder) / f"{index:05d}.png"
    path.write_bytes(data)
    return str(path), text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--usps", metavar="DIR", help="the USPS train part's digits")
    source.add_argument("--data", metavar="DIR", help="MNIST's training digits")
    source.add_argument("--uci", action="store_true", help="the reviewed half of the UCI "
                        "digits (bench/corrections.py; needs scikit-learn)")
    parser.add_argument("--n", type=int, default=4000, help="numbers to render")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--out", metavar="OUTBOX", required=True)
    parser.add_argument("--number-model", metavar="PATH", help="default: the shipped one")
    parser.add_argument("--all", action="store_true", help="review every number, not only "
                        "those sent to review")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    from digitd.review.index import Item
    from digitd.review.verdicts import Corrections, VerdictRequest

    out = Path(args.out)
    inputs = out / "processed"
    inputs.mkdir(parents=True, exist_ok=True)
    jobs = [(i, args.seed, str(inputs)) for i in range(args.n)]
    with ProcessPoolExecutor(args.jobs, initializer=_init,
                             initargs=(args.usps, args.data, args.uci)) as pool:
        rendered = list(pool.map(_render, jobs, chunksize=32))
    truth = dict(rendered)
    answers = {}
    for first in range(0, len(rendered), 500):
        command = [sys.executable, "-m", "digitd", "predict", "--json",
                   *(["--number-model", args.number_model] if args.number_model else []),
                   *[path for path, _ in rendered[first:first + 500]]]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode not in (0, 1):  # 1: some file rejected
            sys.exit(f"digitd predict failed: {done.stderr}")
        for line in done.stdout.splitlines():
            row = json.loads(line)
            answers[row["file"]] = row
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    writer = Corrections(out, "bench", 40_000_000)
    writer.prepare()
    reviewed = corrected = 0
    for index, (path, text) in enumerate(rendered):
        answer = answers.get(path)
        if answer is None or answer["status"] == "rejected":
            continue
        if answer["status"] == "ok" and not args.all:
            continue
        name = Path(path).name
        item = Item(id=f"sim{args.seed}-{index:06d}", file=name, status=answer["status"],
                    digit=answer["digit"], confidence=answer["confidence"],
                    sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest(), batch="bench",
                    received_at=now, processed_at=now, model="", preview="",
                    digits=answer["digits"])
        verdict = "confirmed" if answer["digits"] == text else "corrected"
        writer.record(VerdictRequest(item.id, verdict, text, None), item, name)
        reviewed += 1
        corrected += verdict == "corrected"
    right = np.mean([answers[p]["digits"] == t for p, t in truth.items() if p in answers])
    print(f"{len(rendered)} numbers read, {right:.2%} exactly; {reviewed} reviewed "
          f"({corrected} corrected) into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
