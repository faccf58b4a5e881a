"""The two runtimes side by side: import, load and warm-up, memory, CPU per digit, answers.

    .venv/bin/python bench/serving_bench.py [--model PATH.keras] [--calls 200]
    .venv/bin/python bench/serving_bench.py --int8      # also a dynamic-range int8 .tflite

Each runtime runs in a fresh subprocess (digitd.model.load_classifier, one thread, as a worker
process of the daemon has), so import time and memory are its own: seconds to import the
runtime, to load and warm the model, the process's peak RSS (VmHWM), and CPU ms per digit in
batches of 64 over `--calls` calls. The answers on the committed 1,000-digit sample are
compared with TensorFlow's. `--int8` also converts the model with dynamic-range quantisation
(int8 weights, TensorFlow's converter) into a temp folder and measures it through LiteRT.
`--scans N` also compares every runtime's answers on N realistic scans (bench/scans.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "mnist_sample.npz"

CHILD = r"""
import json, sys, time
import numpy as np
from digitd.model import LiteRTRunner, import_keras, load_classifier
runtime, model, tflite, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
if runtime == "tensorflow":
    import_keras()
else:
    import ai_edge_litert.interpreter
t1 = time.perf_counter()
if tflite:
    run = LiteRTRunner(tflite, threads=1)
    predict = lambda x: np.concatenate([run(x[i:i + 256]) for i in range(0, len(x), 256)])
    predict(np.zeros((64, 28, 28), np.float32))
else:
    classifier = load_classifier(model, threads=1, runtime=runtime)
    classifier.warm_up(64)
    predict = classifier.predict
t2 = time.perf_counter()
with np.load(sys.argv[5]) as npz:
    x = npz["inputs"] if "inputs" in npz.files else npz["x_test"].astype(np.float32) / 255.0
probs = predict(x)
batch = x[:64]
c0 = time.process_time()
for _ in range(calls):
    predict(batch)
cpu = (time.process_time() - c0) / (calls * 64) * 1000
with open("/proc/self/status") as f:  # VmHWM: this process's peak (ru_maxrss survives exec)
    rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
mods = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "ai_edge_litert"})
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "rss_mb": rss, "cpu_ms": cpu,
                  "answers": probs.argmax(1).tolist(), "probs": probs.tolist(), "modules": mods}))
"""


def measure(runtime: str, model: str, tflite: str, calls: int, data: Path = SAMPLE) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, runtime, model, tflite, str(calls),
                           str(data)], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode:
        sys.exit(f"{runtime}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def int8_copy(model: str, folder: Path) -> str:
    """The model converted with dynamic-range quantisation (int8 weights)."""
    import contextlib
    import io

    from digitd.model import import_keras

    keras = import_keras()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(
        keras.saving.load_model(model, compile=False))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with contextlib.redirect_stdout(io.StringIO()):
        content = converter.convert()
    target = folder / "int8.tflite"
    target.write_bytes(content)
    return str(target)


def main() -> None:
    import numpy as np

    from digitd.model import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--scans", type=int, default=0, metavar="N",
                        help="also compare the answers on N realistic scans (bench/scans.py)")
    args = parser.parse_args()
    print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} at {time.strftime('%H:%M:%S')}")
    with np.load(SAMPLE) as npz:
        labels = npz["y_test"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("tensorflow", ""), ("litert", "")]
        if args.int8:
            runs.append(("litert int8 (dynamic range)", int8_copy(args.model, Path(tmp))))
        results = {name: measure(name.split()[0], args.model, tflite, args.calls)
                   for name, tflite in runs}
        if args.scans:
            data = scan_inputs(args.scans, Path(tmp))
            on_scans = {name: measure(name.split()[0], args.model, tflite, 1, data)
                        for name, tflite in runs}
            scan_labels = np.load(data)["y_test"]
    reference = results["tensorflow"]
    print("| runtime | import s | load + warm s | peak RSS MB | CPU ms / digit (batch 64, 1 thr.) "
          "| accuracy (1,000) | same answers as TensorFlow | largest prob. difference | modules |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in results.items():
        answers = np.array(r["answers"])
        diff = np.abs(np.array(r["probs"]) - np.array(reference["probs"])).max()
        same = int((answers == np.array(reference["answers"])).sum())
        print(f"| {name} | {r['import_s']:.2f} | {r['load_s']:.2f} | {r['rss_mb']:.0f} | "
              f"{r['cpu_ms']:.3f} | {(answers == labels).mean():.1%} | {same:,} / {len(answers):,} "
              f"| {diff:.1e} | {', '.join(r['modules'])} |")

    if args.scans:
        print(f"\nOn {args.scans:,} realistic scans of MNIST test digits (bench/scans.py, seed 0, "
              "through digitd.preprocess.prepare):\n")
        compare(on_scans, scan_labels)


def scan_inputs(n: int, folder: Path) -> Path:
    """The model inputs of the first n MNIST test digits of the sample rendered as scans."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scans
    from digitd.preprocess import prepare

    with np.load(SAMPLE) as npz:
        digits, labels = npz["x_test"], npz["y_test"]
    inputs, kept = [], []
    for i in range(n):
        data, _ = scans.render_scan(digits[i % len(digits)], i, 0)
        inputs.append(prepare(data).model_input)
        kept.append(labels[i % len(digits)])
    target = folder / "scans.npz"
    np.savez(target, inputs=np.stack(inputs).astype(np.float32), y_test=np.array(kept))
    return target


def compare(results: dict, labels) -> None:
    import numpy as np

    reference = results["tensorflow"]
    print("| runtime | accuracy | same answers as TensorFlow | largest probability difference |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in results.items():
        answers = np.array(r["answers"])
        diff = np.abs(np.array(r["probs"]) - np.array(reference["probs"])).max()
        same = int((answers == np.array(reference["answers"])).sum())
        print(f"| {name} | {(answers == labels).mean():.2%} | {same:,} / {len(answers):,} "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
