"""The notify protocol over real sockets: state changes arrive even when the manager is slow.

A notify socket queues net.unix.max_dgram_qlen datagrams (10 by default). A manager that
reads late must still get READY=1 and STOPPING=1; WATCHDOG=1 and STATUS= may be dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from digitd.notify import Notifier
from harness import DaemonProcess, lowered_sysctl

QLEN_SYSCTL = Path("/proc/sys/net/unix/max_dgram_qlen")


@contextlib.contextmanager
def receiver(qlen: int | None = None):
    """A bound notify socket (its path), created while max_dgram_qlen is `qlen` if given."""
    folder = tempfile.mkdtemp(prefix="dn-", dir="/tmp")
    path = os.path.join(folder, "notify")
    with dgram_queue_limit(qlen):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(folder)


def dgram_queue_limit(limit: int | None):
    """Lower net.unix.max_dgram_qlen while sockets are created in the block (a socket takes
    the limit when it is created)."""
    return lowered_sysctl(QLEN_SYSCTL, limit, "digitd-test-dgram-qlen")


def drain(sock: socket.socket, wait_s: float = 0.0) -> list[str]:
    """Every datagram queued now (waiting up to `wait_s` for each next one)."""
    got = []
    sock.settimeout(wait_s) if wait_s else sock.setblocking(False)
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except (BlockingIOError, TimeoutError):
            return got


def test_state_changes_wait_for_a_congested_socket_and_keep_their_order():
    with receiver() as (sock, path):
        notifier = Notifier(path)
        for i in range(30):  # far more than the queue holds: the later ones are dropped
            notifier.send(WATCHDOG=1, STATUS=f"ping {i}")
        notifier.send(READY=1, STATUS="Ready")
        notifier.send(STOPPING=1)
        time.sleep(1.0)  # the manager reads nothing meanwhile
        # The queue is full of pings (max_dgram_qlen, 10 by default, + 1). Each read makes
        # room, which the waiting READY=1 takes at once, behind what is queued: so the first
        # ten read were all queued before it, and none may be READY=1 (it was not dropped
        # ahead of them either: it comes after, below).
        sock.settimeout(5.0)
        got = [sock.recv(4096).decode() for _ in range(10)]
        assert not any("READY=1" in m for m in got)
        got += drain(sock, wait_s=5.0)  # now there is room: the state changes follow
        notifier.close()
    states = [m.split("\n")[0] for m in got if "READY=1" in m or "STOPPING=1" in m]
    assert states == ["READY=1", "STOPPING=1"]
    assert sum("WATCHDOG=1" in m for m in got) < 30, "nothing was dropped: not congested"


def test_status_and_watchdog_never_block_on_a_congested_socket():
    with receiver() as (sock, path):
        notifier = Notifier(path)
        start = time.monotonic()
        for _ in range(200):
            notifier.send(WATCHDOG=1)
        assert time.monotonic() - start < 5.0  # 200 blocking sends would hang for ever
        notifier.close()


def test_close_gives_up_waiting_after_its_timeout():
    with receiver() as (sock, path):
        notifier = Notifier(path)
        for _ in range(20):
            notifier.send(STATUS="filler")
        notifier.send(STOPPING=1)
        start = time.monotonic()
        notifier.close(timeout=0.5)  # nobody reads: close must not hang
        assert time.monotonic() - start < 3.0


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to lower net.unix.max_dgram_qlen")
def test_ready_reaches_a_manager_that_reads_nothing_for_20_s(tmp_path):
    """The issue's reproduction: with a queue of 2 and a 1 s watchdog, the supervisor's
    WATCHDOG=1 pings fill the queue long before READY=1, which used to be dropped."""
    with dgram_queue_limit(2):
        daemon = DaemonProcess(tmp_path, processes=2)
    try:
        daemon.start(watchdog_usec=1_000_000)
        started = time.monotonic()
        # Read nothing until the supervisor has sent READY=1 (its log says so just before)
        # and at least 20 s have passed: by then the 1 s watchdog's pings filled the queue.
        supervisor_ready_logged(daemon, timeout=180)
        time.sleep(max(20 - (time.monotonic() - started), 2))
        daemon.wait_ready(timeout=30)
        assert daemon.stop() == 0
    finally:
        daemon.close()


def supervisor_ready_logged(daemon: DaemonProcess, timeout: float) -> None:
    """Wait until the supervisor logs `ready` (all workers ready, READY=1 being sent),
    read from its log without touching the notify socket."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for line in daemon.log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "ready" and "processes" in event:
                return
        assert daemon.proc.poll() is None, daemon.log()
        time.sleep(0.5)
    raise AssertionError(f"the supervisor did not log ready within {timeout} s:\n{daemon.log()}")
