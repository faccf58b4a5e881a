"""Do reviewers' corrections teach the model? USPS digits stand in for a population the
model never saw (docs/BENCHMARKS.md, "Learning from corrections").

800 digits of the USPS *test* part (the shared split in digitd.dataset) are reviewed: each is
written as a scanned page (dataset.usps_page), recognised by the model through the daemon's
own preprocessing, filed in an outbox's processed/, and given the verdict a careful reviewer
would give (confirmed if the model was right, corrected to the true digit if not), through
digitd.review's writer, so corrections.csv and corrections/<id>.png are exactly what
`digitd review` writes. Then `digitd train --corrections` runs as a subprocess, and the
accuracy on the rest of the test part (never seen in training) is measured before and after.

    .venv/bin/python bench/corrections.py --usps ../shared/data/usps --data ../shared/data/mnist

Prints one JSON object; the fine-tuning's own report (held-out fifth, MNIST) goes to stderr.
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

from digitd.dataset import load_usps, usps_page
from digitd.model import default_model_path, load_classifier
from digitd.preprocess import prepare
from digitd.review.index import Item
from digitd.review.verdicts import Corrections, VerdictRequest


def pages(x16: np.ndarray) -> list[bytes]:
    out = []
    for digit in x16:
        ok, png = cv2.imencode(".png", usps_page(digit))
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
        name = f"usps-{i:04d}.png"
        (outbox / "processed" / name).write_bytes(png)
        digit = int(probs.argmax())
        item = Item(id=item_id, file=name, status="low_confidence", digit=digit,
                    confidence=float(probs[digit]), sha256=hashlib.sha256(png).hexdigest(),
                    batch="bench", received_at="", processed_at="", model=model_id,
                    preview="")
        verdict = "confirmed" if digit == int(label) else "corrected"
        row = writer.record(VerdictRequest(item_id, verdict, int(label), None), item, name)
        assert row["image"], row
        verdicts[verdict] += 1
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usps", required=True, help="folder holding zip.train.gz")
    parser.add_argument("--data", required=True, help="MNIST IDX files, for replay and test")
    parser.add_argument("--base", help="model to fine-tune (default: shipped)")
    parser.add_argument("--count", type=int, default=800, help="corrections to give")
    parser.add_argument("--steps", type=int, help="passed to digitd train")
    args = parser.parse_args()

    usps = load_usps(args.usps)
    x, y = usps.part("test")
    corrected_x, corrected_y = x[: args.count], y[: args.count]
    rest_x, rest_y = x[args.count :], y[args.count :]
    base = Path(args.base) if args.base else default_model_path()
    before = load_classifier(base)
    rest_pngs = pages(rest_x)
    probabilities = recognise(before, pages(corrected_x))
    with tempfile.TemporaryDirectory(prefix="digitd-corrections-") as tmp:
        outbox, models = Path(tmp) / "outbox", Path(tmp) / "models"
        verdicts = review(outbox, pages(corrected_x), corrected_y, probabilities,
                          before.model_id)
        command = [sys.executable, "-m", "digitd", "train", "--corrections", str(outbox),
                   "--base", str(base), "--data", args.data, "--out", str(models)]
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
        rest_before = float((recognise(before, rest_pngs).argmax(1) == rest_y).mean())
        rest_after = float((recognise(after, rest_pngs).argmax(1) == rest_y).mean())
    print(json.dumps({
        "corrections": args.count, "verdicts": verdicts, "rest": len(rest_y),
        "rest_accuracy_before": round(rest_before, 4), "rest_accuracy_after": round(rest_after, 4),
        "held_out_corrections": card["held_out_accuracy"],
        "mnist_test": card["mnist_test_accuracy"], "steps": card["fine_tuning"]["steps"],
        "train_command_seconds": round(seconds, 1),
        "fine_tuning_seconds": card["fine_tuning"]["seconds"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
