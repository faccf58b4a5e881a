"""Numbers (several digits in one PNG): strings read exactly, silent errors, and time per image.

    nice -n 10 .venv/bin/python bench/number_accuracy.py --data ../shared/data/mnist --n 2000
        [--seed 0] [--model PATH] [--numbers PATH] [--segmentation-only]
        [--recognise auto|number] [--min-confidence 0.99] [--keep DIR] [--batch 64]
        [--json-out PATH] [--usps ../shared/data/usps | --uci] [--forms]

1. Renders N numbers of 2-8 MNIST *test* digits (bench/number_scans.py: paper flavours,
   gaps from overlapping to wide, separators, underlines, currency signs, stray strokes).
   With --usps DIR, the digits are instead the held-out USPS test part (digitd.dataset's
   shared split, never trained on): real handwriting from writers MNIST never saw, 16x16
   scans enlarged to the number's size, written along the line in the same way. With --uci,
   the measured half of the UCI digits (bench/corrections.uci_halves, scikit-learn's 8x8
   reductions enlarged 4x: 13 writers neither MNIST nor USPS holds), the other half being
   what bench/number_corrections.py --uci gives a reviewer. With --forms, each number is
   written into a printed form field instead of on plain paper (number_scans.FORM_FLAVOURS:
   a box, a row of boxes or a comb with a digit in each cell, a line to write on, ruled
   paper).
2. Reads each PNG as the daemon does (digitd.reader.read_all: the number model and the
   segmentation reader, or with --segmentation-only the latter alone), on one thread (OpenCV
   and the models limited to one): decode, segment, one number-model call per image (with
   --batch N: per N images, as the daemon calls it once per batch), greedy decoding, and
   where the number model is unsure the pieces and one classifier call. The time per image
   covers all of it, as CPU time of the process (robust on a shared machine) and as wall
   time; with --batch, each image is charged its batch's time / N.
3. Prints: strings exactly right; silent errors (wrong, yet status `ok`: confidence at least
   --min-confidence and no doubtful digit); what goes to review; on MNIST digits, how many
   numbers hold a test digit whose label human raters reject (bench/disputed_labels.py) and
   the strings read exactly among the others; per flavour, per decoration
   and per length; how the string confidence compares with accuracy; how each number was
   read (the number model alone, sure of it; checked by the segmentation reader, agreeing
   or not; the segmentation reader's string; one digit), and the operating points (silent
   errors and share ok) of "confidence >= t".
"""

from __future__ import annotations

import argparse
import collections
import json
import os
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

import number_scans  # noqa: E402
from accuracy import load_test  # noqa: E402
from disputed_labels import disputed  # noqa: E402

_X = _Y = None
_RENDER = number_scans.render_number


def _init(data: str, usps: str | None, uci: bool = False, forms: bool = False) -> None:
    global _X, _Y, _RENDER
    if forms:
        _RENDER = number_scans.render_number_form
    if uci:  # the half of the UCI digits bench/number_corrections.py --uci never reviews
        from corrections import uci_halves

        _X, _Y = uci_halves()[1]
    else:
        _X, _Y = usps_digits(usps) if usps else load_test(Path(data))


def usps_digits(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """The USPS test part as number_ink takes digits (digitd.dataset.usps_ink)."""
    from digitd.dataset import load_usps, usps_ink

    x, y = load_usps(folder).part("test")
    return usps_ink(x), y


def _render(job):
    index, seed, folder = job
    data, text, info = _RENDER(_X, _Y, index, seed)
    path = Path(folder) / f"{index:05d}_{text}.png"
    path.write_bytes(data)
    return str(path), text, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/mnist"))
    parser.add_argument("--n", type=int, default=2000, help="numbers to render")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="a digit model (default: the shipped one)")
    parser.add_argument("--numbers", help="a number model (default: the shipped one)")
    parser.add_argument("--segmentation-only", action="store_true",
                        help="read numbers by segmentation alone (no number model)")
    parser.add_argument("--recognise", choices=("auto", "number"), default="auto")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="default: the built-in configuration's min_confidence")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", metavar="DIR", help="render into DIR and keep the files")
    parser.add_argument("--batch", type=int, default=1,
                        help="images read together, as the daemon reads a batch (its "
                             "batch.max_size is 64); the time per image is the batch's / N")
    parser.add_argument("--json-out", metavar="PATH")
    parser.add_argument("--usps", metavar="DIR",
                        help="compose the numbers of the held-out USPS test digits found in "
                             "DIR (e.g. ../shared/data/usps) instead of MNIST test digits")
    parser.add_argument("--uci", action="store_true",
                        help="compose them of the measured half of the UCI digits "
                             "(bench/corrections.py; needs scikit-learn) instead")
    parser.add_argument("--forms", action="store_true",
                        help="write each number into a printed form field (a box, cells, a "
                             "comb, a line, ruled paper) instead of on plain paper")
    args = parser.parse_args()

    import cv2

    from digitd import ctc
    from digitd.config import Config
    from digitd.model import load_classifier
    from digitd.preprocess import Rejected, decode_png
    from digitd.reader import read_all
    from digitd.result import Result
    from digitd.segment import Line, segment

    min_conf = args.min_confidence if args.min_confidence is not None else Config().min_confidence
    folder_ctx = tempfile.TemporaryDirectory(prefix="digitd-numbers-") if not args.keep else None
    folder = Path(args.keep or folder_ctx.name)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = [(i, args.seed, str(folder)) for i in range(args.n)]
    with ProcessPoolExecutor(args.jobs, initializer=_init,
                             initargs=(args.data, args.usps, args.uci, args.forms)) as pool:
        rendered = list(pool.map(_render, jobs, chunksize=32))
    print(f"rendered {len(rendered)} numbers in {time.time() - t0:.0f} s into {folder}",
          flush=True)

    cv2.setNumThreads(1)
    classifier = load_classifier(args.model, threads=1)
    classifier.warm_up(64)
    numbers = None
    if not args.segmentation_only:
        numbers = ctc.load(args.numbers, threads=1)
        numbers.warm_up(args.batch)
    rows = []
    times = []
    for first in range(0, len(rendered), args.batch):
        batch = rendered[first : first + args.batch]
        start, cpu = time.perf_counter(), time.process_time()
        found: list = []
        for path, _, _ in batch:
            try:
                found.append(segment(decode_png(Path(path).read_bytes())))
            except Rejected as exc:
                found.append(exc)
        good = [f for f in found if not isinstance(f, Rejected)]
        lines = [f if isinstance(f, Line) else None for f in good]
        answers = iter(read_all([(None if line is not None else f.model_input, line)
                                 for f, line in zip(good, lines, strict=True)],
                                classifier.predict, args.recognise,
                                numbers.predict if numbers else None, sure=min_conf,
                                second=ctc.second_of(numbers)))
        spent = ((time.perf_counter() - start) / len(batch),
                 (time.process_time() - cpu) / len(batch))
        times += [spent] * len(batch)
        for (path, truth, info), f in zip(batch, found, strict=True):
            if isinstance(f, Rejected):
                rows.append((truth, "", 0.0, False, info, f.code, None))
                continue
            probabilities, reading = next(answers)
            if reading is None:
                result = Result.recognised(probabilities, min_conf, file=path)
                agreed = None
            else:
                result = Result.number(reading, min_conf, file=path)
                agreed = (reading.source, reading.agreed)
            rows.append((truth, result.digits, result.confidence, result.status == "ok",
                         info, "", agreed))

    n = len(rows)
    right = sum(t == r for t, r, *_ in rows)
    ok = sum(r[3] for r in rows)
    silent = sum(t != r and o for t, r, _, o, *_ in rows)
    ok_right = sum(t == r and o for t, r, _, o, *_ in rows)
    ms, cpu_ms = np.array(times).T * 1000
    print(f"\nmodel: {classifier.model_id[:12]} ({classifier.runtime}); number model: "
          f"{numbers.model_id[:12] + ' (' + numbers.runtime + ')' if numbers else 'none'}; "
          f"recognise {args.recognise}; min_confidence {min_conf}")
    print(f"numbers: {n}; strings exactly right: {right / n:.2%}")
    print(f"status ok: {ok / n:.2%} of all, of which right {ok_right / max(ok, 1):.2%}; "
          f"silent errors (wrong and ok): {silent / n:.2%}")
    print(f"to review (low_confidence): {(n - ok) / n:.2%}")
    mnist = not (args.usps or args.uci)
    held = [mnist and disputed(r[4]["picks"]) for r in rows]
    undisputed = [t == r for (t, r, *_), h in zip(rows, held, strict=True) if not h]
    if mnist:
        print(f"numbers holding an MNIST test digit whose label human raters reject "
              f"(bench/disputed_labels.py): {sum(held)}, of which read as labelled "
              f"{right - sum(undisputed)}; strings exactly right among the other "
              f"{len(undisputed)}: {np.mean(undisputed):.2%}")
    print(f"time per number image, one thread, batches of {args.batch}: CPU mean "
          f"{cpu_ms.mean():.2f} ms, median {np.median(cpu_ms):.2f} ms, p95 "
          f"{np.percentile(cpu_ms, 95):.2f} ms; wall mean {ms.mean():.2f} ms "
          f"(load {os.getloadavg()[0]:.1f})")

    table = collections.defaultdict(lambda: [0, 0, 0])  # n, right, silent
    for truth, text, _, status_ok, info, *_ in rows:
        keys = [("flavour", info["flavour"]), ("length", str(len(truth)))]
        keys += [("decoration", d) for d in info["decorations"] or ["none"]]
        for key in keys:
            cell = table[key]
            cell[0] += 1
            cell[1] += truth == text
            cell[2] += truth != text and status_ok
    print(f"\n{'group':11s} {'value':17s} {'numbers':>8s} {'right':>8s} {'silent':>8s}")
    for key in sorted(table):
        total, good, bad = table[key]
        print(f"{key[0]:11s} {key[1]:17s} {total:8d} {good / total:8.2%} {bad / total:8.2%}")

    print("\nstring confidence of ok answers vs their accuracy:")
    bins = [(0.8, 0.9), (0.9, 0.95), (0.95, 0.99), (0.99, 1.01)]
    calibration = []
    for lo, hi in bins:
        sel = [(t == r) for t, r, c, o, *_ in rows if o and lo <= c < hi]
        if sel:
            print(f"  [{lo:.2f}, {min(hi, 1):.2f}): {len(sel):5d} answers, "
                  f"{np.mean(sel):.2%} right")
            calibration.append({"from": lo, "to": min(hi, 1.0), "answers": len(sel),
                                "right": float(np.mean(sel))})
    print("\nstring confidence of all answers vs their accuracy (does it keep its meaning?):")
    for lo, hi in [(0, 0.5), (0.5, 0.8)] + bins:
        sel = [(t == r) for t, r, c, *_ in rows if lo <= c < hi]
        if sel:
            print(f"  [{lo:.2f}, {min(hi, 1):.2f}): {len(sel):5d} answers, "
                  f"{np.mean(sel):.2%} right")
    print("\nhow each was read (share of all, share right):")
    how = collections.defaultdict(list)
    for t, r, *_, a in rows:
        how["one digit" if a is None else
            f"{a[0]}, " + {None: "alone", True: "both agree", False: "readers differ"}[a[1]]
            ].append(t == r)
    for key, hits in sorted(how.items()):
        print(f"  {key:36s} {len(hits) / n:7.2%} {np.mean(hits):8.2%}")
    print("operating points: ok = confidence >= t (the string's, whoever read it)")
    points = []
    for t in (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995):
        kept = [(tr == r) for tr, r, c, *_ in rows if c >= t]
        cells = [len(kept) / n, kept.count(False) / n]
        print(f"  t={t:5.3f}: ok {cells[0]:7.2%} silent {cells[1]:6.2%}")
        points.append({"t": t, "ok": cells[0], "silent": cells[1]})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "n": n, "seed": args.seed,
            "digits": "uci measured half" if args.uci else "usps test" if args.usps
            else "mnist test",
            "forms": args.forms, "batch": args.batch, "min_confidence": min_conf,
            "right": right / n,
            "disputed": sum(held),
            "right_undisputed": float(np.mean(undisputed)) if mnist else None,
            "ok": ok / n, "silent": silent / n, "cpu_ms_mean": float(cpu_ms.mean()),
            "cpu_ms_median": float(np.median(cpu_ms)),
            "cpu_ms_p95": float(np.percentile(cpu_ms, 95)), "wall_ms_mean": float(ms.mean()),
            "calibration": calibration, "operating_points": points,
            "how": {k: [len(v), int(sum(v))] for k, v in how.items()},
            "recognise": args.recognise, "segmentation_only": args.segmentation_only,
            "groups": {f"{k[0]}:{k[1]}": v for k, v in table.items()},
            "wrong": [{"truth": t, "read": r, "confidence": round(c, 4), "ok": o,
                       "agreed": a, "code": code, **info}
                      for t, r, c, o, info, code, a in rows if t != r],
        }, indent=1))
    if folder_ctx is not None:
        folder_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
