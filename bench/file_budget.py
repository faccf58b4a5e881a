"""Per-file CPU budget: the daemon's own functions, stage by stage, on one thread.

    .venv/bin/python bench/file_budget.py [--files 6400] [--no-previews]

Takes N 28x28 PNGs (the committed MNIST sample, written elsewhere and renamed into a temp
inbox, as a scanner's drop would be) through every step the daemon takes for them, in its
order and with its own objects (digitd.daemon.Daemon, not started: no threads), one batch of
64 at a time, and charges each step the CPU time (user + system, time.thread_time) it took.
One thread and no contention, so the sum is the floor of what a file costs; the daemon's own
CPU per file in a burst (bench/daemon_bench.py) minus that sum is what running the steps
concurrently costs (threads, GIL hand-offs, queues, the supervisor). CPU time, unlike wall
time, barely depends on what else the machine runs, but the load is printed anyway.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import io
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_bench import stage_files  # noqa: E402
from digitd.config import load_config  # noqa: E402
from digitd.daemon import Daemon  # noqa: E402
from digitd.intake import Intake, read_input_file  # noqa: E402
from digitd.model import load_classifier  # noqa: E402
from digitd.preprocess import decode_png, normalise  # noqa: E402
from digitd.preview import render_preview  # noqa: E402
from digitd.reload import Serving  # noqa: E402


class Ledger:
    """CPU seconds charged to each step, in the order the steps first ran."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def step(self, name: str):
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.cpu[name] += time.thread_time() - t0


def run(files: int, previews: bool) -> tuple[Ledger, int]:
    cv2.setNumThreads(1)
    ledger = Ledger()
    with tempfile.TemporaryDirectory(prefix="digitd-budget-") as tmp:
        root = Path(tmp)
        staged = stage_files(root / "staging", files, "f")
        config = load_config(None, inbox=str(root / "inbox"), outbox=str(root / "outbox"))
        config = dataclasses.replace(
            config, outputs=dataclasses.replace(config.outputs, previews=previews))
        d = Daemon(config)
        config.inbox.mkdir()
        d.outbox.prepare()
        d.work.open()
        d.serving = Serving(load_classifier(config.model, threads=1), config.min_confidence)
        d.classifier.warm_up(config.batch.max_size)
        for path in staged:
            os.rename(path, config.inbox / path.name)
        done = 0
        while done < files:
            with ledger.step("watcher: list the inbox, check each file is complete"):
                arrivals = d.watcher.poll(time.monotonic(), config.batch.max_size)
            if not arrivals:
                continue
            names = [a.name for a in arrivals]
            with ledger.step("claim: rename into the work folder, manifest"):
                batch = d.work.claim(names, {a.name: a.received_at for a in arrivals})
                for name in names:
                    d.watcher.release(name)
            reads = []
            for item in batch.items:
                with ledger.step("read: lstat, open, fstat, PNG header, read"):
                    data = read_input_file(item.path, config.max_pixels)
                with ledger.step("SHA-256 of the input"):
                    sha256 = hashlib.sha256(data).hexdigest()
                with ledger.step("decode the PNG (OpenCV)"):
                    image = decode_png(data, config.max_pixels)
                with ledger.step("normalise: find the digit, crop, scale, centre"):
                    model_input = normalise(image)
                reads.append(Intake(sha256, image, model_input))
            with ledger.step("model: LiteRT, batch of 64, 1 thread"):
                probs = d.classifier.predict(np.stack([r.model_input for r in reads]))
            with ledger.step("results: digit, status, Result objects"):
                now = datetime.now(timezone.utc)
                results = [d._result(batch, item, read, p, None, now, d.serving)
                           for item, read, p in zip(batch.items, reads, probs, strict=True)]
            for result, read in zip(results, reads, strict=True):
                if not result.preview:
                    continue
                with ledger.step("preview: render and encode the PNG"):
                    png = render_preview(read.image, read.model_input, result.digits,
                                         result.confidence, parts=result.parts)
                with ledger.step("preview: write the file (and review/ copy)"):
                    d.outbox.write_preview(result, png)
            with ledger.step("batch JSON: build and write"):
                document = d._batch_document(batch, results, {"wait_ms": 0.0}, d.classifier)
                d.outbox.write_batch_json(batch.id, document)
            with ledger.step("commit: fsync the manifest and the claims"):
                d.work.make_durable(batch)
            with ledger.step("commit: append the CSV rows, fsync"):
                d.outbox.append_csv(results)
            with ledger.step("file the inputs into processed/"):
                for result in results:
                    d.outbox.file_input(result)
            with ledger.step("finish: drop the batch folder"):
                d.work.finish(batch)
            with ledger.step("log: the batch event"), contextlib.redirect_stdout(io.StringIO()):
                d._report(batch, results, {"wait_ms": 0.0})
            done += len(results)
        d.work.close()
    return ledger, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6400)
    parser.add_argument("--no-previews", action="store_true")
    args = parser.parse_args()
    print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} at {time.strftime('%H:%M:%S')}")
    ledger, n = run(args.files, previews=not args.no_previews)
    total = sum(ledger.cpu.values())
    print(f"{n} files, previews {'off' if args.no_previews else 'on'}: "
          f"{total / n * 1000:.3f} ms of CPU per file on one thread")
    print("| step | CPU ms per file | share |\n| --- | ---: | ---: |")
    for name, seconds in ledger.cpu.items():
        print(f"| {name} | {seconds / n * 1000:.3f} | {seconds / total:.0%} |")
    print(f"| **all steps** | **{total / n * 1000:.3f}** | |")


if __name__ == "__main__":
    main()
