"""`digitd run` with several worker processes: the supervisor.

Python runs one thread at a time per process, so one process cannot keep several cores busy
with decoding, previews and filing; worker processes can. Each worker is a whole daemon
(digitd.daemon) on the same inbox and outbox, shared exactly as independent daemons share them
(claims by rename, a locked work folder each, CSV appends under flock); each loads its own copy
of the model and prefers its own share of the file names (digitd.watcher).

The supervisor loads no model and touches no file. It owns the systemd notify protocol: the
workers notify it over a socket of its own, and it tells the service manager READY=1 once every
worker is ready, WATCHDOG=1 while each keeps pinging, and STATUS= with their summed counts.
SIGTERM is passed on, and it exits 0 once every worker has drained and exited 0. SIGHUP
(a hot reload, digitd.reload) is passed on to every ready worker: RELOADING=1 goes to
systemd at once, READY=1 once each worker has reloaded (or refused the new model). A worker that
dies is started again (the new one adopts the batches it left); one that fails before the
service was ever ready, or keeps dying soon after starting, ends the service with exit code 1.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import structlog

from digitd.codes import ExitCode
from digitd.config import Config
from digitd.notify import Notifier
from digitd.reload import monotonic_usec

log = structlog.get_logger("digitd")

SLICE_S = 0.25  # the longest the loop waits for a message, so exits and signals are seen
STATUS_EVERY_S = 1.0
START_TIMEOUT_S = 120.0  # a worker not ready by then is killed and started again
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # back-off between restarts of one worker
QUICK_DEATH_S = 60.0  # dying this soon after starting counts towards giving up...
MAX_QUICK_DEATHS = 5  # ...after this many in a row
STOP_TIMEOUT_S = 60.0  # after SIGTERM, a worker still running then is killed
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready: bool = False
    last_ping: float = 0.0
    counts: tuple[int, ...] = (0, 0, 0, 0)  # ok, low confidence, rejected, waiting
    status: str = ""  # its last STATUS= text
    quick_deaths: int = 0
    restart_at: float | None = None
    model: str = ""  # the model it serves (X_DIGITD_MODEL=)
    reload_due: bool = False  # to be sent SIGHUP once ready
    reloading: bool = False  # sent SIGHUP; its READY=1 ends its reload
    reload_error: str = ""


class Supervisor:
    """Starts `processes` workers and speaks for them to systemd; `run()` gives the exit code."""

    def __init__(self, config: Config, args: argparse.Namespace, processes: int) -> None:
        self.config = config
        self.args = args
        self.notifier = Notifier()
        self.workers = [_Worker(i) for i in range(processes)]
        self.retired = [0, 0, 0]  # counts of exited workers, so STATUS never goes backwards
        self.stopping = False
        self.failed = False
        self._reload_requested = False  # set by SIGHUP's handler
        self._reloading = False  # RELOADING=1 sent, READY=1 not yet
        self._ready_sent = False
        self._stop_deadline: float | None = None
        self._next_ping = 0.0
        self._next_status = 0.0
        self._started = time.monotonic()
        self._address = f"\0digitd-{os.getpid()}-{secrets.token_hex(4)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    # -- life cycle ---------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_reload)
        self._sock.bind(self._address)
        log.info("starting", processes=len(self.workers), inbox=str(self.config.inbox),
                 outbox=str(self.config.outbox))
        for worker in self.workers:
            self._spawn(worker)
        while True:
            now = time.monotonic()
            if self.stopping and self._stop_deadline is None:
                self._begin_stop(now)
            self._receive(SLICE_S)
            self._reap(time.monotonic())
            if self._stop_deadline is not None and not self._running():
                break
            now = time.monotonic()
            if self._stop_deadline is None:
                self._restart_due(now)
                self._kill_hung(now)
                self._reload_step()
            elif now > self._stop_deadline:
                self._kill_all("did not stop in time")
            self._housekeeping(now)
        self._sock.close()
        self.notifier.close()  # STOPPING=1 goes out before the process exits
        log.info("stopped", processed=sum(self._counts()[:3]))
        return ExitCode.FAILURE if self.failed else ExitCode.OK

    def _on_signal(self, signum: int, frame) -> None:
        """Pass the stop on at once: the workers stop taking files now, not a loop later."""
        if not self.stopping:
            log.info("stopping", signal=signal.Signals(signum).name)
        self.stopping = True
        for worker in self._running():
            worker.proc.send_signal(signal.SIGTERM)

    def _on_reload(self, signum: int, frame) -> None:
        self._reload_requested = True  # the loop passes it on within SLICE_S

    def _reload_step(self) -> None:
        """Pass a requested reload on to the workers, and tell systemd when all are done."""
        if self._reload_requested:
            self._reload_requested = False
            log.info("reloading", processes=len(self.workers))
            if not self._reloading:
                self.notifier.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(),
                                   STATUS="Reloading the model")
            self._reloading = True
            for worker in self._running():
                worker.reload_due, worker.reload_error = True, ""
        for worker in self._running():
            if worker.reload_due and worker.ready and not worker.reloading:
                worker.reload_due, worker.reloading = False, True
                worker.proc.send_signal(signal.SIGHUP)
        pending = [w for w in self._running() if w.reload_due or w.reloading]
        if self._reloading and not pending:
            self._reloading = False
            errors = "; ".join(f"worker {w.index}: {w.reload_error}"
                               for w in self.workers if w.reload_error)
            status = self._status()
            log.info("reloaded", models=self._models(), errors=errors or None)
            self.notifier.send(READY=1, STATUS=f"{errors}; {status}" if errors else status)

    def _begin_stop(self, now: float) -> None:
        self.notifier.send(STOPPING=1, STATUS="Stopping")
        self._stop_deadline = now + STOP_TIMEOUT_S
        for worker in self.workers:
            worker.restart_at = None
        for worker in self._running():  # again after a signal: harmless; alone after _give_up
            worker.proc.send_signal(signal.SIGTERM)

    def _give_up(self, why: str) -> None:
        """Stop the service with exit code 1: the workers cannot run."""
        if not self.failed:
            log.error("giving_up", reason=why)
            self.notifier.send(STATUS=f"Failed: {why}")
        self.failed = True
        self.stopping = True

    # -- workers ------------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        env = dict(os.environ, NOTIFY_SOCKET="@" + self._address[1:],
                   DIGITD_SUPERVISOR=str(os.getpid()))
        env.pop("WATCHDOG_PID", None)
        env.pop("WATCHDOG_USEC", None)
        if self.notifier.watchdog_interval_s is not None:
            env["WATCHDOG_USEC"] = str(int(self.notifier.watchdog_interval_s * 2e6))
        command = [sys.executable, "-m", "digitd", "run"]
        for option in ("config", "inbox", "outbox"):
            value = getattr(self.args, option, None)
            if value is not None:
                command += [f"--{option}", str(value)]
        command += ["--worker", f"{worker.index}/{len(self.workers)}"]
        worker.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        worker.started_at = worker.last_ping = time.monotonic()
        worker.ready = False
        worker.restart_at = None
        worker.reload_due = worker.reloading = False  # it reads the configuration afresh
        log.info("worker_started", worker=worker.index, pid=worker.proc.pid)

    def _running(self) -> list[_Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def _reap(self, now: float) -> None:
        """Notice workers that exited: restart them later, or end the service."""
        for worker in self.workers:
            if worker.proc is None or worker.proc.poll() is None:
                continue
            code = worker.proc.returncode
            worker.proc = None
            self.retired = [a + b for a, b in zip(self.retired, worker.counts[:3], strict=True)]
            worker.counts = (0, 0, 0, 0)
            if self.stopping:
                log.info("worker_exited", worker=worker.index, code=code)
                # SIGTERM before a worker set up its handler (it was still starting) ends it
                # at once: nothing of its own in hand, only batches a restart recovers.
                if code != 0 and not (code == -signal.SIGTERM and not worker.ready):
                    self.failed = True
                continue
            log.error("worker_died", worker=worker.index, code=code, status=worker.status)
            if not self._ready_sent:
                self._give_up(f"worker {worker.index} failed to start ({worker.status or code})")
                continue
            quick = now - worker.started_at < QUICK_DEATH_S
            worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
            if worker.quick_deaths >= MAX_QUICK_DEATHS:
                self._give_up(f"worker {worker.index} died {worker.quick_deaths} times in a row")
                continue
            delay = RESTART_DELAYS_S[min(worker.quick_deaths, len(RESTART_DELAYS_S) - 1)]
            worker.restart_at = now + delay

    def _restart_due(self, now: float) -> None:
        for worker in self.workers:
            if worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)

    def _kill_hung(self, now: float) -> None:
        """A worker that stopped pinging (or never got ready) is killed, then restarted."""
        interval = self.notifier.watchdog_interval_s
        for worker in self._running():
            if not worker.ready and now - worker.started_at > START_TIMEOUT_S:
                self._kill(worker, "not ready in time")
            elif worker.ready and interval is not None and now - worker.last_ping > 2 * interval:
                self._kill(worker, "stopped sending WATCHDOG=1")

    def _kill(self, worker: _Worker, why: str) -> None:
        log.error("worker_killed", worker=worker.index, reason=why)
        worker.proc.kill()

    def _kill_all(self, why: str) -> None:
        for worker in self._running():
            self._kill(worker, why)

    # -- the notify protocol --------------------------------------------------------------

    def _receive(self, timeout: float) -> None:
        """Read the workers' notify messages; wait up to `timeout` for the first."""
        self._sock.settimeout(timeout)
        while True:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (TimeoutError, BlockingIOError):
                return
            self._sock.setblocking(False)
            pid = next((_CREDENTIALS.unpack(payload[:12])[0] for level, kind, payload in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            worker = next((w for w in self.workers if w.proc and w.proc.pid == pid), None)
            if worker is not None:
                self._on_message(worker, data.decode("utf-8", "replace"))

    def _on_message(self, worker: _Worker, message: str) -> None:
        fields = dict(line.partition("=")[::2] for line in message.split("\n") if "=" in line)
        now = time.monotonic()
        if fields.get("READY") == "1" and not worker.ready:
            worker.ready = True
            log.info("worker_ready", worker=worker.index,
                     seconds=round(now - worker.started_at, 2))
        elif fields.get("READY") == "1" and worker.reloading:
            worker.reloading = False
            status = fields.get("STATUS", "")
            worker.reload_error = status if status.startswith("Reload failed") else ""
        if fields.get("X_DIGITD_MODEL"):
            worker.model = fields["X_DIGITD_MODEL"]
        if fields.get("WATCHDOG") == "1" or "READY" in fields:
            worker.last_ping = now
        if "STATUS" in fields:
            worker.status = fields["STATUS"]
        counts = fields.get("X_DIGITD_COUNTS", "").split()
        if len(counts) == 4 and all(c.isdigit() for c in counts):
            worker.counts = tuple(int(c) for c in counts)
        if not self._ready_sent and all(w.ready for w in self.workers):
            self._ready_sent = True
            log.info("ready", processes=len(self.workers),
                     seconds=round(now - self._started, 2))
            self.notifier.send(READY=1, STATUS=self._status())

    def _housekeeping(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now >= self._next_ping:
            self.notifier.send(WATCHDOG=1)
            self._next_ping = now + interval
        busy = self.stopping or self._reloading
        if now >= self._next_status and self._ready_sent and not busy:
            self.notifier.send(STATUS=self._status())
            self._next_status = now + STATUS_EVERY_S

    def _counts(self) -> list[int]:
        totals = [*self.retired, 0]
        for worker in self.workers:
            totals = [a + b for a, b in zip(totals, worker.counts, strict=True)]
        return totals

    def _models(self) -> list[str]:
        return sorted({w.model for w in self.workers if w.model and w.proc is not None})

    def _status(self) -> str:
        ok, low, rejected, waiting = self._counts()
        running = len([w for w in self.workers if w.ready and w.proc is not None])
        models = self._models()
        model = f"; model {models[0]}" if len(models) == 1 else (
            f"; models {', '.join(models)}" if models else "")
        return (f"{ok + low + rejected} processed ({ok} ok, {low} low confidence, "
                f"{rejected} rejected); {waiting} waiting; "
                f"{running} of {len(self.workers)} worker processes running{model}")


def die_with_parent() -> None:
    """In a worker: be killed when the supervisor dies (even by kill -9), as a service's
    processes are; a worker left alone would hold its batches and notify no one."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = os.environ.get("DIGITD_SUPERVISOR", "")
    if parent.isdigit() and os.getppid() != int(parent):
        os._exit(1)  # the supervisor died before the line above took effect
