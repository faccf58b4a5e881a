"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET.

A no-op when the daemon was not started by systemd (no NOTIFY_SOCKET), so the same code
runs under `make run`, in tests (which bind their own socket) and as a service.

Two kinds of message, two ways of sending:
- state changes (READY=1, RELOADING=1, STOPPING=1) must arrive: a manager that never sees
  READY=1 kills the service at TimeoutStartSec. A notify socket queues only
  net.unix.max_dgram_qlen datagrams (10 by default), so when the manager is slow to read they
  are handed to a sender thread that waits until the socket takes them (at most
  DELIVERY_TIMEOUT_S), in the order they were sent;
- WATCHDOG=1 and STATUS= are sent non-blocking and dropped when the socket is congested:
  the next one carries on, and a daemon must never stall on its manager.
"""

from __future__ import annotations

import os
import queue
import socket
import threading

import structlog

log = structlog.get_logger("digitd")

STATE_FIELDS = frozenset({"READY", "RELOADING", "STOPPING"})
DELIVERY_TIMEOUT_S = 120.0  # longer than a start may take; systemd's default is 90 s
FLUSH_TIMEOUT_S = 5.0  # close() waits this long for state changes still queued


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 to the service manager."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._pending: queue.Queue[bytes | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._starting = threading.Lock()
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Pings at half the watchdog period, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if wanted else None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: object) -> None:
        """Send one message, e.g. send(READY=1, STATUS="Waiting for files").

        A message holding a state change is delivered (in order, by the sender thread when
        the socket is congested); any other is dropped if the socket cannot take it now.
        """
        if self._socket is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        if STATE_FIELDS.isdisjoint(fields):
            try:
                self._socket.sendto(message, socket.MSG_DONTWAIT, self._address)
            except OSError:
                pass  # gone or congested: the next STATUS or WATCHDOG carries on
            return
        with self._starting:  # the loop and a reload thread may both send: one sender
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(target=self._deliver_loop, name="notify",
                                                daemon=True)
                self._sender.start()
            self._pending.put(message)

    def close(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait (up to `timeout`) for queued state changes to go out, then close."""
        if self._sender is not None:
            self._pending.put(None)
            self._sender.join(timeout)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _deliver_loop(self) -> None:
        """The sender thread: state changes, one at a time, in order."""
        while (message := self._pending.get()) is not None:
            _deliver(self._address, message)


def _deliver(address: str, message: bytes) -> None:
    """Send `message`, waiting while the receiver's queue is full, up to DELIVERY_TIMEOUT_S.

    The socket is connected, so that waiting polls the receiver's queue (an unconnected
    datagram socket polls writable at once and would spin).
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.settimeout(DELIVERY_TIMEOUT_S)
            sock.send(message)
    except TimeoutError:
        log.warning("notify_failed", message=message.decode(),
                    error=f"the service manager read nothing for {DELIVERY_TIMEOUT_S:.0f} s")
    except OSError as exc:  # no manager listening (any more): nobody to tell
        log.warning("notify_failed", message=message.decode(), error=str(exc))
