"""Do reviewers' corrections teach the model? (docs/BENCHMARKS.md, "Learning from corrections")

A population the model never saw is split in two, by a seeded permutation: `--count` digits
(800) are reviewed, the rest are only measured. Each reviewed digit is written as a scanned
page, recognised by the model through the daemon's own preprocessing, filed in an outbox's
processed/, and given the verdict a careful reviewer would give (confirmed if the model was
right, corrected to the true digit if not) through digitd.review's writer, so corrections.csv
and corrections/<id>.png are exactly what `digitd review` writes. Then `digitd train
--corrections` runs as a subprocess, and the rest is measured before and after: accuracy, and
at `--min-confidence` the share sent to review and the silent errors (wrong yet `ok`).

Populations (--population):
  uci   the UCI handwritten digits scikit-learn ships (sklearn.datasets.load_digits: 1,797
        digits of 13 writers never in MNIST or USPS, scanned from NIST forms at 32x32 and
        reduced to 8x8 blocks of 0-16 ink counts); each is a page enlarged 4x (bicubic) to
        the 32x32 it was scanned at, with a paper margin. Needs `pip install -e '.[bench]'`.
  usps  the USPS test part of digitd.dataset's shared split (dataset.usps_page), which the
        shipped model already reads at 99.6%.

    .venv/bin/python bench/corrections.py --population uci --usps ../shared/data/usps \\
        --data ../shared/data/mnist

`--usps` is passed on to `digitd train` (the temperature is fitted again on its calibration
part and the held-out corrections). Prints one JSON object; the fine-tuning's own report
(held-out fifth, MNIST, temperature) goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from digitd.calibration import at_threshold
from digitd.dataset import load_usps, usps_page
from digitd.model import default_model_path, load_classifier
from digitd.preprocess import prepare
from digitd.review.index import Item
from digitd.review.verdicts import Corrections, VerdictRequest

SPLIT_SEED = 20261130
UCI_SCALE, UCI_MARGIN = 4, 8  # 8x8 blocks of 4x4 pixels -> the 32x32 scan, 8 px of paper


def uci_page(digit8: np.ndarray) -> np.ndarray:
    """One UCI digit (8x8, ink counts 0-16) as a page: dark ink on white paper, uint8."""
    grey = 255.0 - np.asarray(digit8, np.float32) * (255.0 / 16.0)
    side = 8 * UCI_SCALE
    big = cv2.resize(grey, (side, side), interpolation=cv2.INTER_CUBIC)
    page = np.clip(big + 0.5, 0, 255).astype(np.uint8)
    m = UCI_MARGIN
    return cv2.copyMakeBorder(page, m, m, m, m, cv2.BORDER_CONSTANT, value=255)


def uci_halves() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The UCI digits as digitd.synth writes digits along a line (uint8, ink bright on 0: each
    enlarged 4x as uci_page enlarges it, in its margin), in SPLIT_SEED's order, cut in two:
    the first half is for a reviewer (bench/number_corrections.py --uci), the second is only
    measured (bench/number_accuracy.py --uci). Needs scikit-learn."""
    from sklearn.datasets import load_digits

    data = load_digits()
    ink = np.stack([255 - uci_page(d) for d in data.images])
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ink))
    ink, labels = ink[order], data.target.astype(np.int64)[order]
    half = len(ink) // 2
    return (ink[:half], labels[:half]), (ink[half:], labels[half:])


def population(name: str, usps_path: str | None) -> tuple[list[np.ndarray], np.ndarray, str]:
    """(pages, labels, description), in a seeded random order (writers are spread over both
    the reviewed and the measured part)."""
    if name == "uci":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            sys.exit("bench/corrections.py --population uci needs scikit-learn: "
                     "pip install -e '.[bench]'")
        data = load_digits()
        pages, labels = [uci_page(d) for d in data.images], data.target.astype(np.int64)
        what = "UCI handwritten digits (sklearn.datasets.load_digits)"
    else:
        if not usps_path:
            sys.exit("bench/corrections.py --population usps needs --usps")
        x, y = load_usps(usps_path).part("test")
        pages, labels = [usps_page(d) for d in x], y.astype(np.int64)
        what = "USPS test part (digitd.dataset's shared split)"
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    return [pages[i] for i in order], labels[order], what


def encode(pages: list[np.ndarray]) -> list[bytes]:
    out = []
    for page in pages:
        ok, png = cv2.imencode(".png", page)
        assert ok
        out.append(png.tobytes())
    return out


def recognise(classifier, pngs: list[bytes]) -> np.ndarray:
    inputs = np.stack([prepare(p).model_input for p in pngs]).astype(np.float32)
    return classifier.predict(inputs)


def review(outbox: Path, pngs: list[bytes], labels: np.ndarray, probabilities: np.ndarray,
           model_id: str) -> dict[str, int]:
    """File each page in processed/ and give it a verdict through digitd.review's writer."""
    (outbox / "processed").mkdir(parents=True)
    writer = Corrections(outbox, "bench", 40_000_000)
    writer.prepare()
    verdicts = {"confirmed": 0, "corrected": 0}
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for i, (png, label, probs) in enumerate(zip(pngs, labels, probabilities, strict=True)):
        item_id = f"{now}{i:03d}Z-{i:012x}"
        name = f"page-{i:04d}.png"
        (outbox / "processed" / name).write_bytes(png)
        digit = int(probs.argmax())
        item = Item(id=item_id, file=name, status="low_confidence", digit=digit,
                    confidence=float(probs[digit]), sha256=hashlib.sha256(png).hexdigest(),
                    batch="bench", received_at="", processed_at="", model=model_id,
                    preview="")
        verdict = "confirmed" if digit == int(label) else "corrected"
        row = writer.record(VerdictRequest(item_id, verdict, str(int(label)), None), item, name)
        assert row["image"], row
        verdicts[verdict] += 1
    return verdicts


def measured(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    point = at_threshold(probabilities, labels, threshold)
    return {"accuracy": round(point.accuracy, 4), "review_share": round(point.review_share, 4),
            "silent_errors": round(point.silent_errors, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", choices=("uci", "usps"), default="uci")
    parser.add_argument("--usps", help="zip.train.gz or its folder (usps: the population; "
                        "both: passed to digitd train for the temperature)")
    parser.add_argument("--data", required=True, help="MNIST IDX files, for replay and test")
    parser.add_argument("--base", help="model to fine-tune (default: shipped)")
    parser.add_argument("--count", type=int, default=800, help="corrections to give")
    parser.add_argument("--steps", type=int, help="passed to digitd train")
    parser.add_argument("--min-confidence", type=float, default=0.99,
                        help="the threshold the review share and silent errors are taken at")
    args = parser.parse_args()

    pages, labels, what = population(args.population, args.usps)
    if not 0 < args.count < len(labels):
        sys.exit(f"--count must be between 1 and {len(labels) - 1}")
    pngs = encode(pages)
    reviewed_pngs, reviewed_y = pngs[: args.count], labels[: args.count]
    rest_pngs, rest_y = pngs[args.count :], labels[args.count :]
    base = Path(args.base) if args.base else default_model_path()
    before = load_classifier(base)
    probabilities = recognise(before, reviewed_pngs)
    with tempfile.TemporaryDirectory(prefix="digitd-corrections-") as tmp:
        outbox, models = Path(tmp) / "outbox", Path(tmp) / "models"
        verdicts = review(outbox, reviewed_pngs, reviewed_y, probabilities, before.model_id)
        command = [sys.executable, "-m", "digitd", "train", "--corrections", str(outbox),
                   "--base", str(base), "--data", args.data, "--out", str(models)]
        if args.usps:
            command += ["--usps", args.usps]
        if args.steps:
            command += ["--steps", str(args.steps)]
        started = time.monotonic()
        done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            print(json.dumps({"refused": True, "exit_code": done.returncode}))
            return 1
        written = models / f"{base.name.removesuffix('.keras')}-corrected.keras"
        after = load_classifier(written)
        card = after.card
        rest_before = measured(recognise(before, rest_pngs), rest_y, args.min_confidence)
        rest_after = measured(recognise(after, rest_pngs), rest_y, args.min_confidence)
    print(json.dumps({
        "population": what, "base_model": before.model_id[:12],
        "corrections": args.count, "verdicts": verdicts, "rest": len(rest_y),
        "min_confidence": args.min_confidence,
        "rest_before": rest_before, "rest_after": rest_after,
        "held_out_corrections": card["held_out_accuracy"],
        "mnist_test": card["mnist_test_accuracy"], "steps": card["fine_tuning"]["steps"],
        "temperature": {"base": card["calibration"]["base_temperature"],
                        "after": card["calibration"]["temperature"],
                        "fitted_on": card["calibration"]["fitted_on"]},
        "train_command_seconds": round(seconds, 1),
        "fine_tuning_seconds": card["fine_tuning"]["seconds"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
