"""Cost of preprocessing on one core: PNG bytes in memory -> 28x28 model input (decode included),
and of the annotated preview. Median of many runs; one line per case.

    .venv/bin/python bench/preprocess_bench.py [--runs 300] [--data tests/data/mnist_sample.npz]

Timings on a shared machine are noisy: the median is reported with the 10th and 90th
percentiles, and the load average is printed first, so a disturbed run shows. (The thread's
CPU time was tried too: on this VM it is stretched by contention just like wall-clock time.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "daemon"))

import scans  # noqa: E402
from digitd.preprocess import Rejected, decode_png, normalise, prepare  # noqa: E402
from digitd.preview import render_preview  # noqa: E402
from pngwrite import bomb_png, encode_png  # noqa: E402


def timeit(fn, runs: int) -> tuple[float, float, float]:
    fn()  # warm
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    p10, p50, p90 = np.percentile(times, [10, 50, 90]) * 1e3
    return p10, p50, p90


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--data", default=str(HERE.parent / "tests/data/mnist_sample.npz"))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    digits = np.load(args.data)["x_test"]

    cases: list[tuple[str, bytes]] = [("28x28 MNIST digit, grey PNG", encode_png(digits[0]))]
    for flavour, label in (("paper_grey", "grey"), ("blue_ink", "RGB"),
                           ("photo_jpeg", "RGB photo, shadow, JPEG")):
        data, _ = scans.render_scan(digits[1], 1, flavour=flavour, canvas_size=(800, 1000),
                                    height=240)
        cases.append((f"1000x800 scan, {label}, digit 240 px", data))
    rng = np.random.default_rng(5)
    ink = scans._on_canvas(scans._ink_from_mnist(digits[1], 240), rng, size=(800, 1000))
    clean = scans._paper_scan(ink, rng, colour=False, noise=1.0, blur=0.8, shadow=False)
    cases.append(("1000x800 scan, grey, low noise, digit 240 px",
                  cv2.imencode(".png", clean)[1].tobytes()))
    data, _ = scans.render_scan(digits[2], 2, flavour="paper_grey", canvas_size=(800, 1000),
                                height=40)
    cases.append(("1000x800 scan, grey, digit 40 px", data))
    data, _ = scans.render_scan(digits[3], 3, flavour="paper_grey", canvas_size=(3000, 4000),
                                height=300)
    cases.append(("4000x3000 scan, grey, digit 300 px", data))
    # Form fields (issue 10): the digit in printed ruling, which digitd.ruling takes out.
    for index, flavour, label in ((7, "form_box", "in a box"),
                                  (4, "form_squared", "on squared paper")):
        data, _ = scans.render_form(digits[index], index, flavour=flavour)
        h, w = decode_png(data).shape[:2]
        cases.append((f"{w}x{h} form field, digit {label}", data))
    cases.append(("60000x60000 header (bomb), rejected", bomb_png()))

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} cores; OpenCV threads: 1")
    title = "case (median wall-clock ms, one thread)"
    print(f"{title:50s} {'bytes':>9s} {'decode':>8s} {'prepare':>8s}   prepare p10..p90")
    prepared = {}
    for name, data in cases:
        runs = args.runs if len(data) < 2_000_000 else max(20, args.runs // 10)

        def decode(data=data):
            try:
                decode_png(data)
            except Rejected:
                pass

        def full(data=data):
            try:
                return prepare(data)
            except Rejected:
                return None

        _, dec, _ = timeit(decode, runs)
        p10, p50, p90 = timeit(full, runs)
        prepared[name] = full()
        print(f"{name:50s} {len(data):9,d} {dec:8.3f} {p50:8.3f}   {p10:.3f}..{p90:.3f}")

    many = [encode_png(d) for d in digits[:1000]]
    start = time.perf_counter()
    for data in many:
        prepare(data)
    each = (time.perf_counter() - start) / len(many) * 1e3
    print(f"{'28x28 MNIST digits: mean over ' + str(len(many)) + ' different':50s} {'':9s} "
          f"{'':8s} {each:8.3f}")
    image = decode_png(cases[1][1])
    _, norm, _ = timeit(lambda: normalise(image), args.runs)
    print(f"{'normalise only, 1000x800 grey (no decode)':50s} {'':9s} {'':8s} {norm:8.3f}")

    print()
    for name in (cases[0][0], cases[1][0], cases[2][0]):
        p = prepared[name]
        p10, p50, p90 = timeit(lambda p=p: render_preview(p.image, p.model_input, 7, 0.9987),
                               args.runs * 3)
        size = len(render_preview(p.image, p.model_input, 7, 0.9987))
        print(f"preview of {name:39s} {size:9,d} {'':8s} {p50:8.3f}   {p10:.3f}..{p90:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
