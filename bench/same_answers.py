"""Do two trees of digitd give the same answers? For speed work that must change nothing.

    .venv/bin/python bench/same_answers.py record before.npz --data ../shared/data/mnist \
        --usps ../shared/data/usps                    # with PYTHONPATH=<other tree>/daemon
    .venv/bin/python bench/same_answers.py record after.npz ...
    .venv/bin/python bench/same_answers.py compare before.npz after.npz

`record` takes a fixed corpus of PNG bytes through the code that `digitd` imports (put another
tree first with PYTHONPATH=<tree>/daemon) exactly as the daemon does in `recognise: digit`
mode: digitd.preprocess.prepare, the shipped model (or --model) through
digitd.model.load_classifier, digitd.result.Result.recognised, digitd.preview.render_preview.
It saves every model input, rejection reason, probability row, digit, confidence, status and
the SHA-256 of every preview's PNG bytes. `compare` says, per field, whether the two files are
bit-for-bit equal (exit 1 if any field differs).

The corpus (7,600 images, seeded): 3,000 MNIST test digits as dark ink on white 28x28 PNGs
(the burst bench's inputs), 1,000 as white on black, 2,400 realistic scans of the twelve
flavours (bench/scans.py, seed 0), 600 form fields (one in five empty), 100 blank pages and
500 USPS digits on scanned pages (digitd.dataset.usps_page).
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import cv2
import numpy as np

import scans
from pngwrite import encode_png

FIELDS = ("model_input", "reason", "probabilities", "digit", "confidence", "status", "preview")


def corpus(mnist: str, usps: str) -> list[bytes]:
    from digitd.dataset import load_mnist, load_usps, usps_page

    x = load_mnist(mnist).x_test
    images = [encode_png(255 - x[i]) for i in range(3000)]
    images += [encode_png(x[i]) for i in range(3000, 4000)]
    images += [scans.render_scan(x[i], i, seed=0)[0] for i in range(2400)]
    images += [scans.render_form(x[i] if i % 5 else None, i, seed=0)[0] for i in range(600)]
    images += [scans.blank_page(i, seed=0) for i in range(100)]
    u = load_usps(usps).x
    images += [encode_png(usps_page(u[i])) for i in range(500)]
    return images


def record(out: str, mnist: str, usps: str, model: str | None) -> None:
    import digitd
    from digitd.codes import Rejected
    from digitd.model import load_classifier
    from digitd.preprocess import prepare
    from digitd.preview import render_preview
    from digitd.result import Result

    cv2.setNumThreads(1)
    inputs, reasons = [], []
    for data in corpus(mnist, usps):
        try:
            inputs.append(prepare(data).model_input)
            reasons.append("")
        except Rejected as exc:
            inputs.append(np.zeros((28, 28), np.float32))
            reasons.append(f"{exc.code}: {exc.message}")
    classifier = load_classifier(model, threads=1)
    probabilities = classifier.predict(np.stack(inputs))
    results = [Result.recognised(p, 0.99, file="-") for p in probabilities]
    # The previews the daemon writes for them (the same call as Daemon._start_previews), as
    # SHA-256s of their PNG bytes; the images are decoded again rather than all kept.
    previews = []
    for data, reason, result in zip(corpus(mnist, usps), reasons, results, strict=True):
        if reason:
            previews.append("")  # a rejected input has no preview
            continue
        prepared = prepare(data)
        png = render_preview(prepared.image, prepared.model_input, result.digits,
                             result.confidence)
        previews.append(hashlib.sha256(png).hexdigest())
    np.savez_compressed(
        out, model_input=np.stack(inputs), reason=np.array(reasons),
        probabilities=probabilities, digit=np.array([r.digit for r in results]),
        confidence=np.array([r.confidence for r in results]),
        status=np.array([str(r.status) for r in results]), preview=np.array(previews),
        model_id=classifier.model_id)
    print(f"{len(inputs)} images ({sum(map(bool, reasons))} rejected) through "
          f"{digitd.__file__.rsplit('/digitd/', 1)[0]}, model {classifier.model_id[:12]}: "
          f"{out}")


def compare(a: str, b: str) -> int:
    first, second = np.load(a), np.load(b)
    if str(first["model_id"]) != str(second["model_id"]):
        print(f"different models: {str(first['model_id'])[:12]} / {str(second['model_id'])[:12]}")
        return 1
    differ = 0
    for name in FIELDS:
        if name not in first or name not in second:  # recorded by an older version of this
            print(f"{name}: not recorded in both")
            continue
        x, y = first[name], second[name]
        rows = (x != y).reshape(len(x), -1).any(axis=1) if x.shape == y.shape else None
        same = rows is not None and not rows.any()
        differ += not same
        print(f"{name}: " + ("the same on all " + f"{len(x):,}" if same else
                             "DIFFERENT" + (f" on {rows.sum():,}" if rows is not None else "")))
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out")
    rec.add_argument("--data", default="../shared/data/mnist", help="MNIST IDX folder")
    rec.add_argument("--usps", default="../shared/data/usps")
    rec.add_argument("--model", default=None, help="a .keras (default: the shipped model)")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.data, args.usps, args.model)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
