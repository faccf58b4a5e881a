"""The shared harness of the tests and the benches: drive the real `digitd run` as a
subprocess (temp folders, a real notify socket, real signals), make inputs, count and check
what it wrote, and report a check as an `Outcome`.

One home for these helpers: bench/faults.py, bench/hostile.py and bench/daemon_bench.py
import it from their own folder, the tests through tests/conftest.py (which puts bench/ on
sys.path). PNG bytes for tests (including bombs) come from bench/pngwrite.py.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from digitd.claims import work_root

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "mnist_sample.npz"
# Quick pickup for tests; the benches use the same so that runs are comparable.
FAST = {"watch": {"settle_ms": 100, "incomplete_after_s": 1.0, "rescan_interval_s": 0.5}}


def sample_digits(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` MNIST test digits from the committed sample (cycled), white ink on black."""
    data = np.load(SAMPLE)
    index = (np.arange(n) + offset) % len(data["y_test"])
    return data["x_test"][index], data["y_test"][index]


def classifier_rows(*tops: tuple[int, float]) -> np.ndarray:
    """Probability rows as the digit classifier gives them, one per (digit, probability):
    that digit at that probability, the rest shared evenly by the other nine."""
    rows = np.empty((len(tops), 10), np.float32)
    for row, (digit, p) in zip(rows, tops, strict=True):
        row[:] = (1 - p) / 9
        row[digit] = p
    return rows


def png_bytes(digit: np.ndarray, dark_on_light: bool = True) -> bytes:
    """A 28x28 MNIST digit as a PNG a scanner might write (dark ink on white by default)."""
    image = 255 - digit if dark_on_light else digit
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def drop(inbox: Path, name: str, data: bytes, staging: Path | None = None) -> Path:
    """Write `data` elsewhere on the same filesystem, then rename it into the inbox."""
    staging = staging or inbox.parent / "staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / f"{os.getpid()}-{time.monotonic_ns()}"
    tmp.write_bytes(data)
    target = inbox / name
    os.rename(tmp, target)
    return target


def rss_kb(pid: int) -> int | None:
    """Resident memory (VmRSS, kB) of a process and its children (the daemon's worker
    processes), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except (OSError, StopIteration):
        return None
    return total + sum(rss_kb(child) or 0 for child in children)


def read_rows(outbox: Path) -> list[dict[str, str]]:
    path = outbox / "results.csv"
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def lowered_sysctl(path: Path, value: int | None, lock: str):
    """Set the kernel limit at `path` to `value` for the block (None: leave it), then restore
    it. Limits such as inotify's queue or a socket's datagram queue are taken when the object
    is created, so the window for other processes stays short. Two runs at once (a bench and
    `make test`) would interleave save and restore and leave the low limit in place for good:
    the window is serialised by the lock file `/tmp/<lock>.lock`. Needs root."""
    if value is None:
        yield
        return
    with open(f"/tmp/{lock}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        old = path.read_text().strip()
        path.write_text(str(value))
        try:
            yield
        finally:
            path.write_text(old)


class DaemonProcess:
    """One `digitd run` subprocess with its own notify socket."""

    def __init__(self, root: Path, model: Path | None = None, **config) -> None:
        self.root = root
        self.inbox = Path(config.pop("inbox", root / "inbox"))
        self.outbox = Path(config.pop("outbox", root / "outbox"))
        self.inbox.mkdir(parents=True, exist_ok=True)
        settings = {
            "inbox": str(self.inbox),
            "outbox": str(self.outbox),
            "log": {"format": "json", "level": "debug"},
            **config,
        }
        if model is not None:
            settings["model"] = str(model)
        self.config_path = root / f"config-{time.monotonic_ns()}.yaml"
        self.config_path.write_text(yaml.safe_dump(settings))
        # AF_UNIX paths are limited to 108 bytes: keep the socket in a short folder.
        self._sockdir = tempfile.mkdtemp(prefix="dn-", dir="/tmp")
        self.socket_path = os.path.join(self._sockdir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.socket_path)
        self.messages: list[str] = []
        self.log_path = root / f"daemon-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    # The unit's WatchdogSec is 30 s; 10 s here still tests the pings, and a loaded test
    # machine does not make the supervisor kill a worker that paused for 2 s.
    command_prefix: tuple[str, ...] = ()  # e.g. setpriv, to drop capabilities

    def start(self, watchdog_usec: int = 10_000_000) -> DaemonProcess:
        env = dict(os.environ, NOTIFY_SOCKET=self.socket_path, WATCHDOG_USEC=str(watchdog_usec))
        env.pop("WATCHDOG_PID", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open for the process lifetime
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "digitd", "run",
             "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
        )
        return self

    def collect(self, timeout: float = 0.0) -> list[str]:
        """Read notify datagrams that have arrived (waiting up to `timeout` for the first)."""
        if timeout > 0:
            self._sock.settimeout(timeout)
        else:
            self._sock.setblocking(False)
        got = []
        while True:
            try:
                got.append(self._sock.recv(4096).decode())
            except (BlockingIOError, TimeoutError):
                break
            self._sock.setblocking(False)
        self.messages.extend(got)
        return got

    def wait_for(self, field: str, timeout: float = 120.0) -> float:
        """Wait until a notify message holds `field` (e.g. "READY=1"); returns seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if any(field in m.split("\n") for m in self.messages):
                return time.monotonic() - start
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            self.collect(timeout=0.2)
        raise AssertionError(f"no {field} within {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = 120.0) -> float:
        return self.wait_for("READY=1", timeout)

    def wait_rows(self, n: int, timeout: float = 120.0) -> list[dict[str, str]]:
        """Wait for n rows. Polls by counting line ends (a row's quoted file name may hold
        one more, so it is parsed before returning): parsing a growing CSV every 50 ms would
        take CPU from the daemon that the benchmarks measure."""
        start = time.monotonic()
        path = self.outbox / "results.csv"
        while time.monotonic() - start < timeout:
            try:
                lines = path.read_bytes().count(b"\n") - 1
            except FileNotFoundError:
                lines = 0
            rows = read_rows(self.outbox) if lines >= n else []
            if len(rows) >= n:
                return rows
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            self.collect(timeout=0.05)
        raise AssertionError(f"only {len(read_rows(self.outbox))} of {n} rows:\n{self.log()}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.collect()
        return code

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.kill()
        self._sock.close()
        try:
            os.unlink(self.socket_path)
            os.rmdir(self._sockdir)
        except OSError:
            pass
        if getattr(self, "_log", None):
            self._log.close()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
    """Run `python -m digitd ...` for real, as an operator would."""
    return subprocess.run([sys.executable, "-m", "digitd", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


# -- one check: its outcome, counting rows, the daemons of a session ------------------------


@dataclass
class Outcome:
    """One check: its figures (printed on one line) and what went wrong, if anything."""

    check: str
    figures: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        if self.skipped:
            return f"SKIP {self.check:<18} {self.skipped}"
        figures = " ".join(f"{k}={_fmt(v)}" for k, v in self.figures.items())
        text = f"{'PASS' if self.ok else 'FAIL'} {self.check:<18} {figures}"
        if self.problems:
            text += "  PROBLEMS: " + " | ".join(self.problems)
        return text


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


class RowCounter:
    """Counts results.csv rows by reading only what was appended since the last call."""

    def __init__(self, outbox: Path) -> None:
        self.path = outbox / "results.csv"
        self.offset = 0
        self.lines = 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        # Count whole records only; a quoted newline inside a name is rare enough here.
        cut = data.rfind(b"\r\n")
        if cut >= 0:
            self.lines += data[: cut + 2].count(b"\r\n")
            self.offset += cut + 2
        return max(0, self.lines - 1)


def wait_count(counter, n: int, timeout: float, procs=(), what: str = "rows") -> float:
    """Wait until counter() >= n; raises TimeoutError (or RuntimeError if a daemon died)."""
    t0 = time.monotonic()
    while True:
        if counter() >= n:
            return time.monotonic() - t0
        for d in procs:
            if d.proc is not None and d.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {d.proc.returncode} at {counter()} {what}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {counter()} of {n} {what} after {timeout:.0f}s")
        time.sleep(0.05)


def work_leftovers(inbox: Path) -> list[str]:
    """Entries left in the work folder (a live daemon's .lock aside): none after a check."""
    work = work_root(inbox)
    if not work.exists():
        return []
    return [str(p.relative_to(work)) for p in work.rglob("*") if p.name != ".lock"]


def events(procs) -> list[dict]:
    """Every JSON log line of the given daemons."""
    found = []
    for d in procs:
        try:
            text = d.log_path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    pass
    return found


class Session:
    """The daemons of one check, all closed at the end."""

    def __init__(self, root: Path, model: Path | None, config: dict) -> None:
        self.root, self.model, self.config = root, model, config
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.procs: list[DaemonProcess] = []

    def daemon(self, cls=DaemonProcess, **extra) -> DaemonProcess:
        d = cls(
            self.root,
            model=self.model,
            inbox=self.inbox,
            outbox=self.outbox,
            **{**self.config, **extra},
        )
        self.procs.append(d)
        threading.Thread(target=_drain, args=(d,), daemon=True).start()
        return d

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        for d in self.procs:
            d.close()


def _drain(d: DaemonProcess) -> None:
    """Keep reading the daemon's notify socket, as systemd does. DaemonProcess reads it only
    inside wait_for(); its datagram queue holds 10 messages (net.unix.max_dgram_qlen), and the
    daemon's blocking sendto() then stalls it (STATUS and WATCHDOG=1 come twice a second)."""
    while True:
        try:
            d.collect(timeout=0.2)
        except OSError:
            return  # closed
        if d.proc is not None and d.proc.poll() is not None:
            time.sleep(0.5)
            if d.proc.poll() is not None and d._sock.fileno() < 0:
                return


def guard(out: Outcome, function, *args) -> bool:
    """Run one step; a timeout or a dead daemon becomes a problem, not a crash of the bench."""
    try:
        function(*args)
        return True
    except (TimeoutError, RuntimeError, AssertionError, subprocess.TimeoutExpired) as exc:
        out.problems.append(str(exc).splitlines()[0][:300])
        return False


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(path)], capture_output=True)
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


