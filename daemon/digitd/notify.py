"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET.

A no-op when the daemon was not started by systemd (no NOTIFY_SOCKET), so the same code
runs under `make run`, in tests (which bind their own socket) and as a service.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 to the service manager."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Pings at half the watchdog period, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if wanted else None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: object) -> None:
        """Send one message, e.g. send(READY=1, STATUS="Waiting for files")."""
        if self._socket is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            # Non-blocking: a manager that is slow to read must never stall the daemon.
            self._socket.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError:
            pass  # gone or congested: the next STATUS or WATCHDOG carries on

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
