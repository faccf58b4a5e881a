"""Accuracy on realistic scans and form fields through the real `digitd predict`, against the
model's MNIST test accuracy and against the original script's preprocessing.

    .venv/bin/python bench/accuracy.py --data ../shared/data/mnist --n 10000 [--fonts 1000]
        [--forms 10000] [--empty 1000] [--model PATH] [--seed 0] [--keep DIR]
        [--min-confidence P]

1. Renders the first N MNIST *test* digits as scans (bench/scans.py: twelve flavours, one in
   twelve each), `--fonts` digits in OpenCV's outline fonts on paper, the first `--forms` test
   digits written into printed form fields (scans.FORM_FLAVOURS, one in seven each) and
   `--empty` form fields with nothing written in them, into a temporary folder (or --keep DIR).
2. Runs `python -m digitd predict --json --model M FILE...` as a subprocess over all of them
   (chunks of 2,000 files per process for the argument list).
3. Prints, per flavour: accuracy through digitd (the answer's digit is the label, whatever its
   confidence); silent errors (a wrong digit at or above min_confidence: status `ok`, never
   shown to a person); the share sent to review (below min_confidence); rejections; the
   original script's preprocessing (`cv2.imread(f)[:, :, 0]`, resize to 28x28, `np.invert`,
   / 255) with the same model; and the model's own accuracy on the very MNIST digits that
   flavour was made from; and overall against the model's accuracy on the same test digits.
   Empty fields: how many were `no_ink`, and how many got a digit at or above min_confidence.
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
    elif kind in ("form", "empty"):
        data, flavour = scans.render_form(payload, index, seed)
        name = f"{kind}{index:05d}_{flavour}.png"
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
    parser.add_argument("--forms", type=int, default=0,
                        help="MNIST test digits to render written into form fields")
    parser.add_argument("--empty", type=int, default=0, help="empty form fields to render")
    parser.add_argument("--min-confidence", type=float,
                        help="the operating point (default: digitd's configured default)")
    parser.add_argument("--model", help="a .keras model (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", metavar="DIR", help="render into DIR and keep the files")
    parser.add_argument("--json-out", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()

    x, y = load_test(Path(args.data))
    n = min(args.n, len(x))
    n_forms = min(args.forms, len(x))
    if args.min_confidence is None:
        from digitd.config import Config

        args.min_confidence = Config().min_confidence
    folder_ctx = tempfile.TemporaryDirectory(prefix="digitd-scans-") if not args.keep else None
    folder = Path(args.keep or folder_ctx.name)
    folder.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    jobs = [("scan", i, x[i], args.seed, str(folder)) for i in range(n)]
    jobs += [("font", i, i % 10, args.seed, str(folder)) for i in range(args.fonts)]
    jobs += [("form", i, x[i], args.seed, str(folder)) for i in range(n_forms)]
    jobs += [("empty", 100_000 + i, None, args.seed, str(folder)) for i in range(args.empty)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rendered = list(pool.map(_render, jobs, chunksize=64))
    labels = ([int(y[i]) for i in range(n)] + [i % 10 for i in range(args.fonts)]
              + [int(y[i]) for i in range(n_forms)] + [-1] * args.empty)
    kinds = ["scan"] * n + ["font"] * args.fonts + ["form"] * n_forms + ["empty"] * args.empty
    mnist_index = list(range(n)) + [-1] * args.fonts + list(range(n_forms)) + [-1] * args.empty
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
    m = max(n, n_forms)
    mnist_pred = classifier.predict(x[:m].astype(np.float32) / 255).argmax(1)
    orig_pred = classifier.predict(original_inputs(files)).argmax(1)
    low = args.min_confidence

    # files, digitd right, original right, rejected, model right on the same MNIST digits,
    # silent errors (wrong at >= min_confidence), sent to review (< min_confidence)
    table = collections.defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0])
    for i, f in enumerate(files):
        row = answers[f]
        rejected = row["digit"] is None
        sure = not rejected and row["confidence"] >= low
        cells = [table[(kinds[i], flavours[i])], table[(kinds[i], "overall")]]
        if kinds[i] == "font":
            cells.append(table[("face", fonts[i - n])])
        for cell in cells:
            cell[0] += 1
            cell[1] += row["digit"] == labels[i]
            cell[2] += int(orig_pred[i] == labels[i])
            cell[3] += rejected
            cell[4] += int(mnist_pred[mnist_index[i]] == labels[i]) if mnist_index[i] >= 0 else 0
            cell[5] += sure and row["digit"] != labels[i]
            cell[6] += not rejected and not sure

    model_name = args.model or "shipped model"
    print(f"\nmodel: {model_name}; min_confidence {low}")
    print(f"{'set':6s} {'flavour':18s} {'files':>6s} {'digitd':>8s} {'silent':>7s}"
          f" {'review':>7s} {'rejected':>8s} {'original':>9s} {'same digits as MNIST':>21s}")
    summary = {"model": model_name, "n": n, "fonts": args.fonts, "forms": n_forms,
               "empty": args.empty, "seed": args.seed, "min_confidence": low,
               "predict_seconds": round(predict_s, 1), "rows": []}
    order = list(scans.FLAVOURS) + list(scans.FORM_FLAVOURS) + ["overall"]
    for kind in ("scan", "font", "face", "form", "empty"):
        keys = sorted((k for k in table if k[0] == kind),
                      key=lambda k: (order.index(k[1]) if k[1] in order else -1, k[1]))
        for key in keys:
            total, good, orig, rej, raw, silent, review = table[key]
            mnist = kind in ("scan", "form")
            same = f"{raw / total:21.2%}" if mnist else ""
            print(f"{key[0]:6s} {key[1]:18s} {total:6d} {good / total:8.2%}"
                  f" {silent / total:7.2%} {review / total:7.2%} {rej:8d} {orig / total:9.2%}"
                  f" {same}")
            summary["rows"].append({"set": key[0], "flavour": key[1], "files": total,
                                    "digitd": good / total, "silent_errors": silent / total,
                                    "review": review / total, "rejected": rej,
                                    "original": orig / total,
                                    "mnist_same_digits": raw / total if mnist else None})
    for kind, what in (("scan", "realistic scans"), ("form", "form fields")):
        total, good, _, _, raw, silent, _ = table[(kind, "overall")]
        if total:
            print(f"\n{what}: {good / total:.2%} vs the model's {raw / total:.2%} on the same"
                  f" MNIST digits ({(raw - good) / total * 100:+.2f} points below);"
                  f" silent errors {silent / total:.2%}")
    total, _, _, rej, _, silent, _ = table[("empty", "overall")]
    if total:
        print(f"empty form fields: {rej}/{total} no_ink; {silent}/{total} read as a digit at or"
              f" above min_confidence")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))
    if folder_ctx is not None:
        folder_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
