"""Daemon speed: start-up, memory, burst throughput and CPU per file, trickle latency,
`digitd predict` on one file, and the original approach.

    .venv/bin/python bench/daemon_bench.py                 # all checks, default sizes
    .venv/bin/python bench/daemon_bench.py --burst 100000  # the big burst (memory bounded?)
    .venv/bin/python bench/daemon_bench.py --burst-only    # help, predict, READY, idle, burst
    .venv/bin/python bench/daemon_bench.py --recognise digit   # the daemons' recognise

Runs the real daemon as a subprocess on temp folders (bench/harness.py). Prints one line per
check with its figure; the figures go into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from harness import DaemonProcess, png_bytes, read_rows, rss_kb, sample_digits


def stage_files(folder: Path, n: int, prefix: str) -> list[Path]:
    """Write `n` 28x28 digit PNGs into a staging folder on the inbox's filesystem."""
    folder.mkdir(parents=True, exist_ok=True)
    digits, _ = sample_digits(n)
    blobs = [png_bytes(d) for d in digits[: min(n, 1000)]]
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:06d}.png"
        path.write_bytes(blobs[i % len(blobs)])
        paths.append(path)
    return paths


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the supervisor and its worker processes)."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    pids += process_tree(int(child))
    except OSError:
        pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (their own threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def tensorflow_mapped(pids: list[int]) -> list[int]:
    """The processes that have a TensorFlow library mapped."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if "tensorflow" in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def bench_burst(root: Path, n: int, previews: bool, config: dict) -> float:
    d = DaemonProcess(root / "burst", outputs={"previews": previews}, log={"format": "json"},
                      **config)
    cpu0 = time.thread_time()
    staged = stage_files(d.root / "staging", n, "b")
    # The file system's state, which the burst's new files (previews, JSON) depend on: on
    # this VM's ext4 (no journal) a file created within minutes of a mass deletion nearby
    # costs 10-30x the CPU (docs/BENCHMARKS.md, "Serving without TensorFlow", fourth part).
    print(f"staging: {n} files encoded and written, {(time.thread_time() - cpu0) / n * 1e6:.0f} us "
          f"of CPU each (mostly the file system's cost of creating a file now)")
    d.start()
    ready_s = d.wait_ready()
    print(f"ready: READY=1 after {ready_s:.2f} s (model loaded and warmed)")
    time.sleep(1.0)
    pids = process_tree(d.proc.pid)
    print(f"idle: {len(pids)} processes, RSS together {rss_kb(d.proc.pid) / 1024:.0f} MiB; "
          f"TensorFlow mapped in {len(tensorflow_mapped(pids))} of them")
    cpu_before = cpu_seconds(pids)
    peak = [rss_kb(d.proc.pid) or 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(rss_kb(d.proc.pid) or 0)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    for path in staged:
        os.rename(path, d.inbox / path.name)
    renamed = time.monotonic() - t0
    rows = d.wait_rows(n, timeout=max(120, n / 50))
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pids) - cpu_before
    done.set()
    assert d.stop() == 0
    rows = read_rows(d.outbox)
    names = [r["file"] for r in rows]
    missing = n - len(set(names))
    duplicated = len(names) - len(set(names))
    print(
        f"burst: {n} files renamed in {renamed:.2f} s, last CSV row after {elapsed:.2f} s: "
        f"{n / elapsed:,.0f} files/s (previews {'on' if previews else 'off'}; "
        f"{n / (elapsed - renamed):,.0f}/s counted from the last rename), "
        f"missing {missing}, duplicated {duplicated}, peak RSS {max(peak) / 1024:.0f} MiB, "
        f"CPU {cpu:.2f} s = {cpu / n * 1000:.3f} ms per file"
    )
    d.close()
    return n / elapsed


def bench_latency(root: Path, n: int, interval_s: float, config: dict) -> None:
    d = DaemonProcess(root / "latency", log={"format": "json"}, **config)
    staged = stage_files(d.root / "staging", n, "l")
    d.start()
    d.wait_ready()
    dropped: dict[str, float] = {}
    seen: dict[str, float] = {}
    csv_path = d.outbox / "results.csv"
    offset = 0

    def poll_rows() -> None:
        nonlocal offset
        try:
            with open(csv_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        now = time.monotonic()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.decode().splitlines():
            name = line.split(",")[1]
            seen.setdefault(name, now)

    for path in staged:
        t = time.monotonic()
        os.rename(path, d.inbox / path.name)
        dropped[path.name] = t
        while time.monotonic() < t + interval_s:
            poll_rows()
            time.sleep(0.0005)
    deadline = time.monotonic() + 10
    while len(seen) < n + 0 and time.monotonic() < deadline:
        poll_rows()
        time.sleep(0.0005)
    assert d.stop() == 0
    d.close()
    latencies = sorted((seen[k] - dropped[k]) * 1000 for k in dropped if k in seen)
    p50 = statistics.median(latencies)
    p90 = latencies[int(0.9 * (len(latencies) - 1))]
    print(
        f"latency: one file every {interval_s * 1000:.0f} ms, {len(latencies)}/{n} seen: "
        f"rename-to-CSV-row p50 {p50:.1f} ms, p90 {p90:.1f} ms, max {latencies[-1]:.1f} ms"
    )


def bench_baseline(root: Path, n: int) -> float:
    """The classroom script's approach as a watcher: one model.predict per file."""
    from digitd.model import default_model_path, import_keras

    keras = import_keras()
    model = keras.models.load_model(default_model_path(), compile=False)
    folder = root / "baseline"
    stage_files(folder, n, "o")
    files = sorted(folder.glob("*.png"))
    model.predict(np.zeros((1, 28, 28), np.float32), verbose=0)  # warm, as the daemon is
    t0 = time.monotonic()
    for f in files:
        img = cv2.imread(str(f))[:, :, 0]
        img = cv2.resize(img, (28, 28))
        img = np.invert(np.array([img])).astype(np.float32) / 255
        model.predict(img, verbose=0)
    rate = n / (time.monotonic() - t0)
    print(f"baseline: original approach (one model.predict per file): {rate:.1f} files/s")
    return rate


def bench_predict(root: Path) -> None:
    """`digitd predict one.png`, wall time from the command to its exit."""
    digitd = Path(sys.executable).with_name("digitd")
    one = stage_files(root / "predict", 1, "p")[0]
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        subprocess.run([str(digitd), "predict", str(one)], check=True, capture_output=True)
        times.append(time.monotonic() - t0)
    print(f"predict: digitd predict one.png in {statistics.median(times) * 1000:.0f} ms "
          f"(median of 5; min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")


def bench_help() -> None:
    digitd = Path(sys.executable).with_name("digitd")
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        subprocess.run([str(digitd), "--help"], check=True, capture_output=True)
        times.append(time.monotonic() - t0)
    print(f"help: digitd --help in {statistics.median(times) * 1000:.0f} ms (median of 5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--latency-files", type=int, default=200)
    parser.add_argument("--baseline-files", type=int, default=200)
    parser.add_argument("--no-previews", action="store_true")
    parser.add_argument("--burst-only", action="store_true", help="skip latency and baseline")
    parser.add_argument("--recognise", choices=("auto", "digit", "number"),
                        help="the daemons' recognise (default: the built-in default)")
    args = parser.parse_args()
    config = {"recognise": args.recognise} if args.recognise else {}  # else the built-in
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="digitd-bench-") as tmp:
        root = Path(tmp)
        print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
              f"{os.getloadavg()[2]:.2f} (1, 5, 15 min) at {time.strftime('%H:%M:%S')}")
        bench_help()
        bench_predict(root)
        ours = bench_burst(root, args.burst, previews=not args.no_previews, config=config)
        if args.burst_only:
            return
        bench_latency(root, args.latency_files, 0.1, config)
        base = bench_baseline(root, args.baseline_files)
        print(f"ratio: burst throughput / original approach = {ours / base:,.0f}x")


if __name__ == "__main__":
    main()
