"""Accuracy on realistic scans through the real `digitd predict`, against the model's MNIST
test accuracy and against the original script's preprocessing.

    .venv/bin/python bench/accuracy.py --data ../shared/data/mnist --n 10000 [--fonts 1000]
        [--model PATH] [--seed 0] [--keep DIR]

1. Renders the first N MNIST *test* digits as scans (bench/scans.py: twelve flavours, one in
   twelve each) and `--fonts` digits in OpenCV's outline fonts on paper, into a temporary
   folder (or --keep DIR).
2. Runs `python -m digitd predict --json --model M FILE...` as a subprocess over all of them
   (chunks of 2,000 files per process for the argument list).
3. Prints, per flavour: accuracy through digitd, through the original script's
   preprocessing (`cv2.imread(f)[:, :, 0]`, resize to 28x28, `np.invert`, / 255) with the same
   model, and the model's own accuracy on the very MNIST digits that flavour was made from;
   and overall against the model's accuracy on the same N MNIST test digits.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "daemon"))

import scans  # noqa: E402


def load_test(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images and labels from IDX files (gzip or raw) or an .npz."""
    if data.suffix == ".npz":
        d = np.load(data)
        return d["x_test"], d["y_test"]

    def idx(stem: str, offset: int) -> np.ndarray:
        for name in (stem + ".gz", stem):
            path = data / name
            if path.exists():
                raw = path.read_bytes()
                raw = gzip.decompress(raw) if name.endswith(".gz") else raw
                return np.frombuffer(raw, np.uint8, offset=offset)
        raise SystemExit(f"accuracy.py: {data / stem}(.gz) not found")

    return (idx("t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28),
            idx("t10k-labels-idx1-ubyte", 8))


def _render(job):
    kind, index, payload, seed, folder = job
    if kind == "scan":
        data, flavour = scans.render_scan(payload, index, seed)
        name = f"{index:05d}_{flavour}.png"
    else:
        data, flavour = scans.render_font_digit(payload, index, seed)
        name = f"font{index:04d}_{scans.FONTS[index % len(scans.FONTS)][0]}_{flavour}.png"
    (Path(folder) / name).write_bytes(data)
    return name, flavour


def run_predict(files: list[str], model: str | None) -> dict[str, dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "daemon"))
    results = {}
    for start in range(0, len(files), 2000):
        cmd = [sys.executable, "-m", "digitd", "predict", "--json"]
        if model:
            cmd += ["--model", model]
        proc = subprocess.run(cmd + files[start : start + 2000], capture_output=True, text=True,
                              env=env)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"digitd predict failed ({proc.returncode}):\n{proc.stderr}")
        for line in proc.stdout.splitlines():
            row = json.loads(line)
            results[row["file"]] = row
    return results


def original_inputs(files: list[str]) -> np.ndarray:
    """The original script: cv2.imread(f)[:, :, 0], resize to 28x28, np.invert, / 255."""
    import cv2

    out = []
    for f in files:
        img = cv2.imread(f)[:, :, 0]
        img = np.invert(np.array([cv2.resize(img, (28, 28))]))
        out.append(img[0] / 255)
    return np.array(out, np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/mnist"),
                        help="MNIST IDX folder or an .npz with x_test/y_test")
    parser.add_argument("--n", type=int, default=10000, help="MNIST test digits to render")
    parser.add_argument("--fonts", type=int, default=1000, help="font digits to render")
    parser.add_argument("--model", help="a .keras model (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", metavar="DIR", help="render into DIR and keep the files")
    parser.add_argument("--json-out", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()

    x, y = load_test(Path(args.data))
    n = min(args.n, len(x))
    folder_ctx = tempfile.TemporaryDirectory(prefix="digitd-scans-") if not args.keep else None
    folder = Path(args.keep or folder_ctx.name)
    folder.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    jobs = [("scan", i, x[i], args.seed, str(folder)) for i in range(n)]
    jobs += [("font", i, i % 10, args.seed, str(folder)) for i in range(args.fonts)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rendered = list(pool.map(_render, jobs, chunksize=64))
    labels = [int(y[i]) for i in range(n)] + [i % 10 for i in range(args.fonts)]
    kinds = ["scan"] * n + ["font"] * args.fonts
    files = [str(folder / name) for name, _ in rendered]
    flavours = [flavour for _, flavour in rendered]
    fonts = [scans.FONTS[i % len(scans.FONTS)][0] for i in range(args.fonts)]
    print(f"rendered {len(files)} files in {time.time() - t0:.0f} s into {folder}", flush=True)

    t0 = time.time()
    answers = run_predict(files, args.model)
    predict_s = time.time() - t0
    print(f"digitd predict: {len(answers)} answers in {predict_s:.0f} s", flush=True)

    from digitd.model import load_classifier

    classifier = load_classifier(args.model)
    mnist_pred = classifier.predict(x[:n].astype(np.float32) / 255).argmax(1)
    mnist_acc = float((mnist_pred == y[:n]).mean())
    orig_pred = classifier.predict(original_inputs(files)).argmax(1)

    # n, digitd right, original right, rejected, the model right on the same MNIST digits
    table = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    for i, f in enumerate(files):
        group = (kinds[i], flavours[i])
        row = answers[f]
        ok = row["status"] == "ok" and row["digit"] == labels[i]
        cells = [table[group]]
        cells.append(table[(kinds[i], "overall")])
        if kinds[i] == "font":
            cells.append(table[("face", fonts[i - n])])
        for cell in cells:
            cell[0] += 1
            cell[1] += ok
            cell[2] += int(orig_pred[i] == labels[i])
            cell[3] += row["status"] != "ok"
            cell[4] += int(mnist_pred[i] == labels[i]) if kinds[i] == "scan" else 0

    model_name = args.model or "shipped model"
    print(f"\nmodel: {model_name}; MNIST test accuracy on the same {n} digits: {mnist_acc:.2%}")
    print(f"{'set':6s} {'flavour':18s} {'files':>6s} {'digitd':>8s} {'original':>9s}"
          f" {'rejected':>9s} {'same digits as MNIST':>21s}")
    summary = {"model": model_name, "n": n, "fonts": args.fonts, "seed": args.seed,
               "mnist_accuracy": mnist_acc, "predict_seconds": round(predict_s, 1), "rows": []}
    order = list(scans.FLAVOURS) + ["overall"]
    for kind in ("scan", "font", "face"):
        keys = sorted((k for k in table if k[0] == kind),
                      key=lambda k: (order.index(k[1]) if k[1] in order else -1, k[1]))
        for key in keys:
            total, good, orig, rej, raw = table[key]
            same = f"{raw / total:21.2%}" if kind == "scan" else ""
            print(f"{key[0]:6s} {key[1]:18s} {total:6d} {good / total:8.2%} {orig / total:9.2%}"
                  f" {rej:9d} {same}")
            summary["rows"].append({"set": key[0], "flavour": key[1], "files": total,
                                    "digitd": good / total, "original": orig / total,
                                    "rejected": rej,
                                    "mnist_same_digits": raw / total if kind == "scan" else None})
    scan_total, scan_good = table[("scan", "overall")][:2]
    if scan_total:
        gap = mnist_acc - scan_good / scan_total
        print(f"\nrealistic scans {scan_good / scan_total:.2%} vs MNIST {mnist_acc:.2%}: "
              f"{gap * 100:+.2f} points below")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))
    if folder_ctx is not None:
        folder_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
