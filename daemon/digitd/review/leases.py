"""Leases: an item shown to one reviewer is kept from the others for a while, across every
`digitd review` process on the outbox.

The leases live in one small JSON file in the outbox, {id: [session, expiry]} with the expiry
in epoch seconds, read and rewritten under an exclusive flock on the file itself, so that two
processes (or two threads) handing out items never hand out the same one. A lease is a
courtesy, not a lock on the verdict: anybody may still judge any item, and the last verdict
wins. The file is soft state: expired leases are dropped on every write, and a file that
cannot be parsed (a crash in the middle of a write) counts as no leases.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

LEASES_FILE = "review-leases.json"  # in the outbox
LEASE_S = 120.0  # an item shown to one page is kept from the others this long


class Leases:
    """The leases of one outbox."""

    def __init__(self, outbox: Path, seconds: float = LEASE_S) -> None:
        self.path = outbox / LEASES_FILE
        self.seconds = seconds

    def claim(self, candidates: Iterable[str], session: str, limit: int,
              now: float | None = None) -> list[str]:
        """Up to `limit` of `candidates` (in their order) that no other session holds; they
        are held for `session` from now on (its older leases are renewed)."""
        now = time.time() if now is None else now
        with self._locked() as (fd, leases):
            chosen = []
            for item_id in candidates:
                holder = leases.get(item_id)
                if holder is None or holder[0] == session or holder[1] <= now:
                    chosen.append(item_id)
                    if len(chosen) >= limit:
                        break
            for item_id in chosen:
                leases[item_id] = [session, now + self.seconds]
            self._write(fd, {k: v for k, v in leases.items() if v[1] > now})
        return chosen

    def release(self, item_id: str, now: float | None = None) -> None:
        """Hand an item back (its verdict was undone: anybody may take it again)."""
        now = time.time() if now is None else now
        with self._locked() as (fd, leases):
            if leases.pop(item_id, None) is not None:
                self._write(fd, {k: v for k, v in leases.items() if v[1] > now})

    def held(self, now: float | None = None) -> dict[str, str]:
        """{id: session} of the leases in force."""
        now = time.time() if now is None else now
        with self._locked() as (_, leases):
            return {k: v[0] for k, v in leases.items() if v[1] > now}

    # -- the file ------------------------------------------------------------------------

    def _locked(self):
        return _LockedFile(self.path)

    @staticmethod
    def _write(fd: int, leases: dict[str, list]) -> None:
        data = json.dumps(leases, separators=(",", ":")).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


class _LockedFile:
    """`with _LockedFile(path) as (fd, leases)`: the file open and exclusively locked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> tuple[int, dict[str, list]]:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            size = os.fstat(self.fd).st_size
            raw = os.pread(self.fd, size, 0) if size else b""
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd, _parse(raw)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing drops the lock


def _parse(raw: bytes) -> dict[str, list]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items()
            if isinstance(k, str) and isinstance(v, list) and len(v) == 2
            and isinstance(v[0], str) and isinstance(v[1], (int, float))}
