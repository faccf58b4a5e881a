#!/usr/bin/env python3
"""Fault bench: attack the real `digitd run` subprocess and print one line per check.

    .venv/bin/python bench/faults.py            # the full run (about 25 min on 2 busy cores)
    .venv/bin/python bench/faults.py --quick    # smaller sizes, a few minutes
    .venv/bin/python bench/faults.py --only kill9_storm,soak --soak-minutes 10
    .venv/bin/python bench/faults.py --pandas /tmp/pandas-venv/bin/python   # + pandas parse

Checks: kill -9 at random moments during a burst (restarting each time), two and four daemons
on one inbox, slow and `cp` writers, the outbox on a full tmpfs, the outbox made read-only (and
SIGTERM while backing off), a drop larger than the kernel's inotify queue, SIGTERM mid-burst,
a soak with a steady trickle, and the hostile inputs of bench/hostile.py. Every check ends with
the same accounting: each input exactly once in results.csv (with the sha256 of its bytes),
filed in processed/ or failed/, nothing left in the work folder or the inbox.

The tmpfs and inotify checks need root (mount, /proc/sys/fs/inotify); they are skipped
otherwise. tests/test_faults.py runs the same scenarios at small sizes in `make test`.
The scenarios are plain functions returning an `Outcome`, so the tests assert on them.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from digitd.claims import work_root
from harness import (
    FAST,
    DaemonProcess,
    Outcome,
    RowCounter,
    Session,
    events,
    guard,
    lowered_sysctl,
    png_bytes,
    read_rows,
    rss_kb,
    sample_digits,
    tmpfs,
    wait_count,
    work_leftovers,
)
from hostile import hostile_inputs

QUEUE_SYSCTL = Path("/proc/sys/fs/inotify/max_queued_events")


# -- outcome and accounting -------------------------------------------------------------------


def make_inputs(n: int, prefix: str, offset: int = 0) -> dict[str, bytes]:
    """`n` distinct good PNGs (MNIST digits, dark on light) by name."""
    digits, _ = sample_digits(n, offset)
    return {f"{prefix}-{i:06d}.png": png_bytes(d) for i, d in enumerate(digits)}


def stage(root: Path, inputs: dict[str, bytes]) -> dict[str, Path]:
    """Write every input under root/staging (same filesystem as the inbox), not yet dropped."""
    staging = root / "staging"
    staging.mkdir(exist_ok=True)
    paths = {}
    for i, (name, data) in enumerate(inputs.items()):
        path = staging / f"s{i:07d}"
        path.write_bytes(data)
        paths[name] = path
    return paths


def drop_staged(inbox: Path, staged: dict[str, Path], rate: float = 0.0) -> float:
    """Rename staged files into the inbox (as fast as possible, or `rate` per second)."""
    t0 = time.monotonic()
    for i, (name, path) in enumerate(staged.items()):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        os.rename(path, inbox / name)
    return time.monotonic() - t0


def filed_names(outbox: Path) -> Counter:
    """Names in processed/ and failed/ (without the .error.json beside each failed one)."""
    names: Counter = Counter()
    for folder in ("processed", "failed"):
        path = outbox / folder
        if path.exists():
            for entry in os.listdir(path):
                if not entry.endswith(".error.json") and not entry.startswith("."):
                    names[entry] += 1
    return names


def inbox_names(inbox: Path) -> set[str]:
    return {n for n in os.listdir(inbox) if n != ".digitd"}


def account(out: Outcome, inbox: Path, outbox: Path, inputs: dict[str, bytes]) -> list[dict]:
    """The end-of-check accounting, into out.figures and out.problems; returns the rows."""
    rows = read_rows(outbox)
    counts = Counter(r["file"] for r in rows)
    lost = [n for n in inputs if counts[n] == 0]
    duplicated = sum(c - 1 for n, c in counts.items() if c > 1)
    unknown = [n for n in counts if n not in inputs]
    wrong_sha = [
        r["file"]
        for r in rows
        if r["file"] in inputs and r["sha256"] != hashlib.sha256(inputs[r["file"]]).hexdigest()
    ]
    filed = filed_names(outbox)
    unfiled = [n for n in inputs if filed[n] == 0]
    left = work_leftovers(inbox)
    in_inbox = inbox_names(inbox) & set(inputs)
    # Every row's id must be in its batch's JSON document (results/<batch>.json).
    docs: dict[str, set[str]] = {}
    json_missing = 0
    for r in rows:
        if r["batch"] not in docs:
            try:
                doc = json.loads((outbox / "results" / f"{r['batch']}.json").read_bytes())
                docs[r["batch"]] = {i["id"] for i in doc["items"]}
            except (OSError, ValueError, KeyError):
                docs[r["batch"]] = set()
        json_missing += r["id"] not in docs[r["batch"]]
    out.figures.update(
        dropped=len(inputs),
        rows=len(rows),
        lost=len(lost),
        duplicated=duplicated,
        filed=sum(filed[n] > 0 for n in inputs),
        work_left=len(left),
    )
    if lost:
        out.problems.append(f"{len(lost)} inputs have no row (e.g. {lost[:3]})")
    if duplicated:
        dup = [n for n, c in counts.items() if c > 1]
        out.problems.append(f"{duplicated} extra rows (e.g. {dup[:3]})")
    if unknown:
        out.problems.append(f"rows for unknown names: {unknown[:3]}")
    if wrong_sha:
        out.problems.append(f"{len(wrong_sha)} rows with a wrong sha256 (e.g. {wrong_sha[:3]})")
    if len({r["id"] for r in rows}) != len(rows):
        out.problems.append("row ids are not unique")
    if unfiled:
        out.problems.append(f"{len(unfiled)} inputs not in processed/ or failed/: {unfiled[:3]}")
    if left:
        out.problems.append(f"work folder not empty: {left[:3]}")
    if in_inbox:
        out.problems.append(f"{len(in_inbox)} inputs still in the inbox")
    if json_missing:
        out.figures["json_missing"] = json_missing
        out.problems.append(f"{json_missing} row ids missing from their results/<batch>.json")
    return rows


class RssSampler(threading.Thread):
    """Samples VmRSS of a process every `period` seconds into `samples` [(t, kB)]."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._halt.is_set():
            kb = rss_kb(self.pid)
            if kb is None:
                return
            self.samples.append((time.monotonic() - t0, kb))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @property
    def max_mb(self) -> float:
        return max((kb for _, kb in self.samples), default=0) / 1024


def _is_ready(d: DaemonProcess) -> bool:
    d.collect()
    return any("READY=1" in m.split("\n") for m in d.messages)


def need_root(out: Outcome) -> bool:
    if os.geteuid() != 0:
        out.skipped = "needs root (mount, /proc/sys)"
        return False
    return True


# -- kill -9 at random moments ------------------------------------------------------------------


def kill9_storm(root: Path, files: int = 10_000, kills: int = 10, seed: int = 5,
                model: Path | None = None, rate: float = 0.0, **config) -> Outcome:
    """Drop a burst (as fast as possible, or `rate` files per second, so that a small burst
    outlasts the kills); kill -9 the daemon at random moments `kills` times, restarting each
    time; then let a last daemon finish. Most kills come a random 0-1 s after READY
    (mid-batch, mid-write, mid-filing); about one in four comes during start-up, which is
    where the previous run's batches are adopted and recovered."""
    out = Outcome("kill9_storm")
    rng = random.Random(seed)
    inputs = make_inputs(files, "k")
    staged = stage(root, inputs)
    with Session(root, model, {**FAST, **config}) as s:
        counter = RowCounter(s.outbox)
        stager = threading.Thread(target=drop_staged, args=(s.inbox, staged, rate))
        during_start = 0
        at_kills: list[int] = []
        ready_s = 5.0
        for k in range(kills):
            d = s.daemon().start()
            t0 = time.monotonic()
            if k and rng.random() < 0.25:
                time.sleep(rng.uniform(0.1, ready_s))
            else:
                if not guard(out, d.wait_ready, 300):
                    break
                ready_s = time.monotonic() - t0
                if not stager.is_alive() and k == 0:
                    stager.start()
                time.sleep(rng.uniform(0.05, 1.0))
            during_start += not _is_ready(d)
            at_kills.append(counter())
            d.kill()
        if not stager.ident:
            stager.start()
        stager.join()
        t0 = time.monotonic()
        final = s.daemon().start()
        if guard(out, final.wait_ready, 300):
            guard(out, wait_count, counter, files, 120 + files / 50, [final])
        recover_s = time.monotonic() - t0
        time.sleep(0.5)
        code = final.stop()
        out.figures.update(kills=len(at_kills), kills_during_startup=during_start,
                           kills_mid_burst=sum(0 < n < files for n in at_kills),
                           rows_at_kills="/".join(map(str, at_kills)))
        account(out, s.inbox, s.outbox, inputs)
        out.figures.update(final_run_s=recover_s, exit=code)
        out.figures["recoveries"] = sum(1 for e in events(s.procs)
                                        if e.get("event") == "recovering")
        if code != 0:
            out.problems.append(f"final daemon exited {code}")
    return out


def crash_after_filing(root: Path, files: int = 12, model: Path | None = None,
                       **config) -> Outcome:
    """A deterministic crash point: kill -9 after a batch's last input was filed but before
    its work folder was removed (WorkFolder.finish). Simulated by leaving, for a batch that
    completed, its manifest in the work folder of a dead instance (lock free), as the crash
    would. The next start adopts it; its results must stay as they were. When `root` already
    holds a finished outbox (e.g. after kill9_storm), that is reused: one daemon start less."""
    out = Outcome("crash_after_filing")
    settings = {**FAST, "batch": {"max_size": 64, "max_wait_ms": 500}, **config}
    reuse = (root / "outbox" / "results.csv").exists()
    inputs = {} if reuse else make_inputs(files, "caf")
    with Session(root, model, settings) as s:
        if not reuse:
            staged = stage(root, inputs)
            d = s.daemon().start()
            d.wait_ready(300)
            drop_staged(s.inbox, staged)
            guard(out, wait_count, RowCounter(s.outbox), files, 60, [d])
            d.stop()
        rows = read_rows(s.outbox)
        batch = rows[-1]["batch"]
        path = s.outbox / "results" / f"{batch}.json"
        before = json.loads(path.read_bytes())
        dead = work_root(s.inbox) / "deadhost-1-000000"
        (dead / batch).mkdir(parents=True)
        (dead / ".lock").touch()
        manifest = {"batch": batch, "items": [
            {"id": i["id"], "name": i["file"], "received_at": i["received_at"].replace("Z",
                                                                                   "+00:00")}
            for i in before["items"]]}
        (dead / batch / "manifest.json").write_text(json.dumps(manifest))
        again = s.daemon().start()
        again.wait_ready(300)
        time.sleep(1.0)
        code = again.stop()
        after = json.loads(path.read_bytes())
        if reuse:
            rows_after = read_rows(s.outbox)
            out.figures.update(rows=len(rows_after), work_left=len(work_leftovers(s.inbox)))
            if [r["id"] for r in rows_after] != [r["id"] for r in rows]:
                out.problems.append("results.csv changed")
            if out.figures["work_left"]:
                out.problems.append(f"work folder not empty: {work_leftovers(s.inbox)[:3]}")
        else:
            account(out, s.inbox, s.outbox, inputs)
        out.figures.update(batch_items_before=len(before["items"]),
                           batch_items_after=len(after["items"]), exit=code)
        if len(after["items"]) != len(before["items"]):
            out.problems.append(
                f"results/{batch}.json rewritten with {len(after['items'])} of "
                f"{len(before['items'])} items by the recovery")
        if code != 0:
            out.problems.append(f"exit {code}")
    return out


# -- several daemons on one inbox ---------------------------------------------------------------


def shared_inbox(root: Path, files: int = 4000, daemons: int = 4,
                 model: Path | None = None, **config) -> Outcome:
    out = Outcome(f"shared_inbox_x{daemons}")
    inputs = make_inputs(files, f"sh{daemons}")
    staged = stage(root, inputs)
    with Session(root, model, {**FAST, **config}) as s:
        procs = [s.daemon().start() for _ in range(daemons)]
        for d in procs:
            d.wait_ready(300)
        counter = RowCounter(s.outbox)
        t0 = time.monotonic()
        drop_staged(s.inbox, staged)
        guard(out, wait_count, counter, files, 60 + files / 50, procs)
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        codes = [d.stop() for d in procs]
        rows = account(out, s.inbox, s.outbox, inputs)
        shares: Counter = Counter()
        for batch in {r["batch"] for r in rows}:
            doc = json.loads((s.outbox / "results" / f"{batch}.json").read_bytes())
            shares[doc["instance"]] += len(doc["items"])
        out.figures.update(seconds=elapsed, files_per_s=files / elapsed,
                           share=sorted(shares.values(), reverse=True))
        out.figures["exits"] = codes
        if any(codes):
            out.problems.append(f"exit codes {codes}")
    return out


# -- slow writers and cp --------------------------------------------------------------------------


def scan_like(digit, side: int, seed: int) -> bytes:
    """A digit scaled up to `side` pixels with light paper noise: a few MB, several writes."""
    import cv2
    import numpy as np

    big = cv2.resize(255 - digit, (side, side), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(seed).normal(0, 6, big.shape)
    image = np.clip(big.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return buffer.tobytes()


def slow_writers(root: Path, slow: int = 6, copies: int = 6, seconds: float = 3.2,
                 chunks: int = 16, model: Path | None = None, **config) -> Outcome:
    """Writers that write in place in `chunks` pieces over `seconds` (file kept open, pauses
    longer than settle_ms), and `cp` of multi-MB files into the inbox (no rename)."""
    out = Outcome("slow_writers")
    digits, _ = sample_digits(slow + copies, 77)
    inputs = {f"slow-{i}.png": png_bytes(digits[i]) for i in range(slow)}
    sources = root / "sources"
    sources.mkdir()
    for i in range(copies):
        name = f"cp-{i}.png"
        inputs[name] = scan_like(digits[slow + i], 1600, i)
        (sources / name).write_bytes(inputs[name])

    def write_slowly(name: str) -> None:
        data = inputs[name]
        with open(s.inbox / name, "wb") as f:
            for k in range(chunks):
                f.write(data[k * len(data) // chunks : (k + 1) * len(data) // chunks])
                f.flush()
                time.sleep(seconds / chunks)

    with Session(root, model, {**FAST, **config}) as s:
        d = s.daemon().start()
        d.wait_ready(300)
        threads = [threading.Thread(target=write_slowly, args=(n,)) for n in inputs if "slow" in n]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        for i in range(copies):
            subprocess.run(["cp", str(sources / f"cp-{i}.png"), str(s.inbox)], check=True)
        cp_s = time.monotonic() - t0
        for t in threads:
            t.join()
        guard(out, wait_count, RowCounter(s.outbox), len(inputs), 60, [d])
        time.sleep(0.3)
        code = d.stop()
        rows = account(out, s.inbox, s.outbox, inputs)
        rejected = [r["file"] for r in rows if r["status"] == "rejected"]
        out.figures.update(slow=slow, cp=copies, cp_mb=sum(len(inputs[f"cp-{i}.png"])
                           for i in range(copies)) / 1e6, cp_s=cp_s, rejected=len(rejected))
        if rejected:
            out.problems.append(f"read half-written: {[(r['file'], r['error']) for r in rows if r['status'] == 'rejected'][:4]}")  # noqa: E501
        if code != 0:
            out.problems.append(f"exit {code}")
    return out


# -- the outbox on a tmpfs: full, then read-only --------------------------------------------------


def remount(path: Path, mode: str, tries: int = 100) -> None:
    """remount ro/rw; a tmpfs refuses ro (EBUSY) while a file is open for writing: retry."""
    for _ in range(tries):
        done = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(0.02)
    raise RuntimeError(f"remount,{mode} {path}: {done.stderr.decode().strip()}")


def in_flight(s: Session, inputs) -> dict[str, int]:
    """Where the dropped inputs (names) are right now: nothing may be anywhere else."""
    inbox = inbox_names(s.inbox) & set(inputs)
    work = {Path(p).name for p in work_leftovers(s.inbox)} & set(inputs)
    filed = {n for n in filed_names(s.outbox) if n in inputs}
    nowhere = set(inputs) - inbox - work - filed
    return {"inbox": len(inbox), "work": len(work), "filed": len(filed), "nowhere": len(nowhere)}


def outbox_errors(s: Session) -> list[dict]:
    return [e for e in events(s.procs) if e.get("event") == "outbox_error"]


def wait_event(s: Session, predicate, timeout: float) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for e in events(s.procs):
            if predicate(e):
                return e
        time.sleep(0.1)
    raise TimeoutError(f"no such log event within {timeout:.0f}s")


def outbox_full(root: Path, files: int = 300, size: str = "4m", leave_kb: int = 400,
                hold_s: float = 2.0, model: Path | None = None, **config) -> Outcome:
    """The outbox on a `size` tmpfs, pre-filled with a ballast file so that only `leave_kb`
    stay free; a burst fills it. The daemon must keep the inputs, log outbox_error and back
    off; deleting the ballast must let it finish everything without a restart. Batches of 16,
    so that what the daemon may hold in hand (per worker process: the writer's batch, two
    queued, one being recognised and the batcher's: ~66 files; two workers on two cores) is
    less than the burst and claiming visibly stops."""
    out = Outcome("outbox_full")
    if not need_root(out):
        return out
    inputs = make_inputs(files, "full")
    staged = stage(root, inputs)
    settings = {**FAST, "batch": {"max_size": 16}, **config}
    with tmpfs(root / "outbox", size), Session(root, model, settings) as s:
        d = s.daemon().start()
        d.wait_ready(300)
        st = os.statvfs(s.outbox)
        ballast = s.outbox / "ballast.bin"
        with open(ballast, "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_kb * 1024))
        drop_staged(s.inbox, staged)
        if not guard(out, wait_event, s, lambda e: e.get("event") == "outbox_error", 60):
            return out
        time.sleep(hold_s)
        where = in_flight(s, inputs)
        rows_full = len(read_rows(s.outbox))
        alive = d.proc.poll() is None
        t_free = time.monotonic()
        ballast.unlink()
        guard(out, wait_count, RowCounter(s.outbox), files, 120, [d])
        recover_s = time.monotonic() - t_free
        time.sleep(0.3)
        code = d.stop()
        errors = outbox_errors(s)
        account(out, s.inbox, s.outbox, inputs)
        out.figures.update(
            rows_when_full=rows_full, held=where, outbox_errors=len(errors),
            max_backoff_s=max((e.get("retry_in_s", 0) for e in errors), default=0),
            recover_s=recover_s, exit=code,
        )
        kinds = {e.get("error") for e in errors}
        out.figures["errors"] = "/".join(sorted(str(k) for k in kinds))
        if where["nowhere"]:
            out.problems.append(f"{where['nowhere']} inputs were nowhere while the disk was full")
        if not where["inbox"]:
            out.problems.append("the daemon kept claiming while the outbox was full")
        if not alive:
            out.problems.append("the daemon died while the outbox was full")
        if rows_full >= files:
            out.problems.append("the outbox never filled: raise files or lower leave_kb")
        if code != 0:
            out.problems.append(f"exit {code}")
    return out


def outbox_readonly(root: Path, files: int = 240, model: Path | None = None,
                    **config) -> Outcome:
    """Thirds: processed normally; outbox remounted read-only, then writable again (the same
    daemon must finish by itself); read-only again and SIGTERM while backing off (exit 0,
    batch left for the restart), then writable and a restart finishes the rest."""
    out = Outcome("outbox_readonly")
    if not need_root(out):
        return out
    inputs = make_inputs(files, "ro")
    names = list(inputs)
    thirds = [names[: files // 3], names[files // 3 : 2 * files // 3], names[2 * files // 3 :]]
    staged = stage(root, inputs)
    with tmpfs(root / "outbox", "64m"), Session(root, model, {**FAST, **config}) as s:
        d = s.daemon().start()
        d.wait_ready(300)
        counter = RowCounter(s.outbox)
        drop_staged(s.inbox, {n: staged[n] for n in thirds[0]})
        if not guard(out, wait_count, counter, len(thirds[0]), 60, [d]):
            return out
        # 1. read-only, then writable: the running daemon recovers by itself.
        remount(s.outbox, "ro")
        drop_staged(s.inbox, {n: staged[n] for n in thirds[1]})
        rofs = os.strerror(errno.EROFS)
        if not guard(out, wait_event, s, lambda e: e.get("error") == rofs, 30):
            return out
        time.sleep(1.5)
        held = in_flight(s, thirds[0] + thirds[1])
        t_rw = time.monotonic()
        remount(s.outbox, "rw")
        guard(out, wait_count, counter, len(thirds[0]) + len(thirds[1]), 60, [d])
        recover_s = time.monotonic() - t_rw
        # 2. read-only again and SIGTERM during the back-off.
        remount(s.outbox, "ro")
        drop_staged(s.inbox, {n: staged[n] for n in thirds[2]})
        n_errors = len(outbox_errors(s))
        guard(out, wait_event, s, lambda e: e.get("error") == rofs and
               len(outbox_errors(s)) > n_errors, 30)
        t_term = time.monotonic()
        d.signal(signal.SIGTERM)
        try:
            code = d.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
            out.problems.append("no exit within 30 s of SIGTERM while backing off")
            d.kill()
        stop_s = time.monotonic() - t_term
        held_at_stop = in_flight(s, inputs)
        remount(s.outbox, "rw")
        t_restart = time.monotonic()
        again = s.daemon().start()
        guard(out, wait_count, counter, files, 120, [again])
        restart_s = time.monotonic() - t_restart
        time.sleep(0.3)
        code2 = again.stop()
        account(out, s.inbox, s.outbox, inputs)
        left = sum(1 for e in events(s.procs) if e.get("event") == "batch_left_for_restart")
        out.figures.update(held_ro=held, recover_s=recover_s, sigterm_exit=code,
                           sigterm_stop_s=stop_s, held_at_stop=held_at_stop,
                           batches_left_for_restart=left, restart_finish_s=restart_s)
        for where in (held, held_at_stop):
            if where["nowhere"]:
                out.problems.append(f"{where['nowhere']} inputs nowhere while read-only")
        if code != 0:
            out.problems.append(f"SIGTERM while backing off: exit {code}")
        if code2 != 0:
            out.problems.append(f"restarted daemon exit {code2}")
    return out


# -- more files than the inotify queue holds -----------------------------------------------------


def inotify_flood(root: Path, files: int = 100_000, queue_limit: int | None = None,
                  model: Path | None = None, **config) -> Outcome:
    """Stage `files` inputs, then rename them all into the inbox at once."""
    out = Outcome("inotify_flood")
    if queue_limit is not None and not need_root(out):
        return out
    inputs = make_inputs(files, "flood")
    staged = stage(root, inputs)
    queue_len = int(QUEUE_SYSCTL.read_text())
    with Session(root, model, {**FAST, **config}) as s:
        d = s.daemon()
        with lowered_sysctl(QUEUE_SYSCTL, queue_limit, "digitd-faults-inotify"):
            d.start()
            d.wait_ready(300)
            time.sleep(0.5)  # the observer starts its inotify instance after READY
        queue_len = queue_limit or queue_len
        rss = RssSampler(d.proc.pid)
        rss.start()
        rss_ready = rss_kb(d.proc.pid) / 1024
        counter = RowCounter(s.outbox)
        t0 = time.monotonic()
        drop_s = drop_staged(s.inbox, staged)
        # Progress sampling: the longest time without a new row while work remained.
        last_n, last_t, stall = 0, time.monotonic(), 0.0
        deadline = t0 + 120 + files / 40
        while True:
            n = counter()
            now = time.monotonic()
            if n > last_n:
                last_n, last_t = n, now
            stall = max(stall, now - last_t)
            if n >= files:
                break
            if d.proc.poll() is not None:
                out.problems.append(f"daemon exited {d.proc.returncode} at {n} rows")
                break
            if now > deadline:
                out.problems.append(f"only {n} of {files} rows after {now - t0:.0f}s")
                break
            time.sleep(0.1)
        total_s = time.monotonic() - t0
        rss.stop()
        time.sleep(0.3)
        code = d.stop()
        overflowed = any("overflow" in str(e.get("event", "")).lower() for e in events(s.procs))
        account(out, s.inbox, s.outbox, inputs)
        out.figures.update(
            queue=queue_len, overflow_logged=overflowed, drop_s=drop_s, total_s=total_s,
            files_per_s=files / total_s, longest_stall_s=stall, rss_ready_mb=rss_ready,
            rss_max_mb=rss.max_mb, exit=code,
        )
        if stall > 15:
            out.problems.append(f"no progress for {stall:.1f}s")
        if code != 0:
            out.problems.append(f"exit {code}")
    return out


# -- SIGTERM mid-burst ---------------------------------------------------------------------------


def sigterm_midburst(root: Path, files: int = 10_000, model: Path | None = None,
                     **config) -> Outcome:
    out = Outcome("sigterm_midburst")
    inputs = make_inputs(files, "term")
    staged = stage(root, inputs)
    with Session(root, model, {**FAST, **config}) as s:
        d = s.daemon().start()
        d.wait_ready(300)
        counter = RowCounter(s.outbox)
        stager = threading.Thread(target=drop_staged, args=(s.inbox, staged))
        stager.start()
        guard(out, wait_count, counter, max(1, files // 10), 120, [d])
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.proc.wait(timeout=60)
        stop_s = time.monotonic() - t0
        stager.join()
        rows = read_rows(s.outbox)
        filed = filed_names(s.outbox)
        unfiled_rows = [r["file"] for r in rows if not filed[r["file"]]]
        left = work_leftovers(s.inbox)
        at_stop = len(rows)
        t1 = time.monotonic()
        again = s.daemon().start()
        guard(out, wait_count, counter, files, 120 + files / 50, [again])
        restart_s = time.monotonic() - t1
        time.sleep(0.3)
        code2 = again.stop()
        account(out, s.inbox, s.outbox, inputs)
        out.figures.update(rows_at_stop=at_stop, exit=code, stop_s=stop_s,
                           work_left_at_stop=len(left), restart_finish_s=restart_s)
        if code != 0 or code2 != 0:
            out.problems.append(f"exit codes {code}, {code2}")
        if unfiled_rows:
            out.problems.append(f"{len(unfiled_rows)} committed rows not filed at stop")
        if left:
            out.problems.append(f"batch in hand not finished at stop: {left[:3]}")
        if at_stop >= files:
            out.problems.append("SIGTERM came after the burst: nothing left to test")
    return out


# -- soak ----------------------------------------------------------------------------------------


def soak(root: Path, minutes: float = 10.0, rate: float = 20.0, warmup_s: float = 60.0,
         model: Path | None = None, **config) -> Outcome:
    """A steady trickle of `rate` files per second for `minutes`; VmRSS after warm-up vs end."""
    out = Outcome("soak")
    files = int(minutes * 60 * rate)
    inputs = make_inputs(files, "soak")
    staged = stage(root, inputs)
    with Session(root, model, {**FAST, **config}) as s:
        d = s.daemon().start()
        d.wait_ready(300)
        rss = RssSampler(d.proc.pid, period=1.0)
        rss.start()
        drop_s = drop_staged(s.inbox, staged, rate=rate)
        guard(out, wait_count, RowCounter(s.outbox), files, 120, [d])
        rss.stop()
        time.sleep(0.3)
        code = d.stop()
        rows = account(out, s.inbox, s.outbox, inputs)
        warm = [kb for t, kb in rss.samples if t >= warmup_s]
        if not warm:
            out.problems.append("run shorter than the warm-up")
            return out
        after_warmup, at_end = warm[0] / 1024, warm[-1] / 1024
        growth = (at_end - after_warmup) / after_warmup
        latencies = sorted(_latency(r) for r in rows)
        out.figures.update(minutes=drop_s / 60, rate=rate, rss_after_warmup_mb=after_warmup,
                           rss_end_mb=at_end, rss_max_mb=rss.max_mb, growth_pct=100 * growth,
                           latency_p50_s=latencies[len(latencies) // 2],
                           latency_p99_s=latencies[int(len(latencies) * 0.99)], exit=code)
        if growth > 0.10:
            out.problems.append(f"RSS grew {100 * growth:.1f}% after warm-up")
        if code != 0:
            out.problems.append(f"exit {code}")
    return out


def _latency(row: dict) -> float:
    from datetime import datetime

    def parse(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    return (parse(row["processed_at"]) - parse(row["received_at"])).total_seconds()


# -- the command ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated check names")
    parser.add_argument("--soak-minutes", type=float, default=None)
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders")
    parser.add_argument("--pandas", metavar="PYTHON", help="an interpreter with pandas, for "
                        "the CSV check (pandas is not a digitd dependency)")
    args = parser.parse_args(argv)
    if args.pandas:
        os.environ["DIGITD_PANDAS_PYTHON"] = args.pandas
    quick = args.quick
    soak_minutes = args.soak_minutes if args.soak_minutes is not None else (1 if quick else 10)
    model = args.model
    checks = {
        "kill9_storm": lambda r: kill9_storm(r, 2000 if quick else 10_000, 10, model=model),
        "crash_after_filing": lambda r: crash_after_filing(r, model=model),
        "shared_inbox_x2": lambda r: shared_inbox(r, 1000 if quick else 5000, 2, model=model),
        "shared_inbox_x4": lambda r: shared_inbox(r, 1000 if quick else 5000, 4, model=model),
        "slow_writers": lambda r: slow_writers(r, model=model),
        "outbox_full": lambda r: outbox_full(r, model=model),
        "outbox_readonly": lambda r: outbox_readonly(r, 300 if quick else 1200, model=model),
        "inotify_flood": lambda r: inotify_flood(r, 10_000 if quick else 100_000, model=model),
        "inotify_overflow": lambda r: _renamed(inotify_flood(r, 3000, queue_limit=64,
                                                             model=model), "inotify_overflow"),
        "sigterm_midburst": lambda r: sigterm_midburst(r, 2000 if quick else 10_000, model=model),
        "hostile_inputs": lambda r: hostile_inputs(r, model=model),
        "hostile_cross_fs": lambda r: hostile_inputs(r, model=model, outbox_tmpfs=True),
        "soak": lambda r: soak(r, soak_minutes, warmup_s=min(60, soak_minutes * 15),
                               model=model),
    }
    only = [c for c in args.only.split(",") if c]
    unknown = set(only) - set(checks)
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; known: {', '.join(checks)}")
    failed = 0
    load = os.getloadavg()[0]
    print(f"# digitd fault bench: {'quick' if quick else 'full'}, {os.cpu_count()} cores, "
          f"load {load:.1f}, model {model or 'shipped'}", flush=True)
    for name, check in checks.items():
        if only and name not in only:
            continue
        root = Path(tempfile.mkdtemp(prefix=f"faults-{name}-", dir="/var/tmp"))
        t0 = time.monotonic()
        try:
            outcome = check(root)
        except Exception as exc:  # one broken check must not hide the others
            outcome = Outcome(name, problems=[f"{type(exc).__name__}: {exc}"])
        outcome.figures["wall_s"] = time.monotonic() - t0
        failed += not outcome.ok
        print(outcome.line(), flush=True)
        if not args.keep and outcome.ok:
            shutil.rmtree(root, ignore_errors=True)
        elif not outcome.ok:
            print(f"#   kept {root}", flush=True)
    print(f"# load at end {os.getloadavg()[0]:.1f}; {failed} check(s) failed", flush=True)
    return 1 if failed else 0


def _renamed(outcome: Outcome, name: str) -> Outcome:
    outcome.check = name
    return outcome


if __name__ == "__main__":
    sys.exit(main())
