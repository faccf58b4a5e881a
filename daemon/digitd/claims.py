"""The work folder: inputs are claimed by atomic rename, and batches a dead daemon left behind
are adopted and finished. The only module that knows the folder's layout, inside the inbox
so that every claim is a rename on one filesystem:

    <inbox>/.digitd/work/<instance>/.lock              flock held while the daemon lives
    <inbox>/.digitd/work/<instance>/<batch>/<name>     the claimed inputs, original names
    <inbox>/.digitd/work/<instance>/<batch>/manifest.json   batch id and each input's id
    <inbox>/.digitd/rejected/<name>    rejected entries that could not be moved to an outbox
                                       on another filesystem (a folder, an unreadable file)

A rename succeeds for exactly one claimant, so several daemons (on one machine, or on several
sharing the folder) can serve one inbox. The manifest is written after the claims and made
durable before any result is committed: a batch folder without one has no results anywhere
and is simply redone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from digitd.fsutil import fsync_dir, is_temporary_name, rename_noreplace, write_atomic

MANIFEST = "manifest.json"


def work_root(inbox: Path) -> Path:
    """<inbox>/.digitd/work: every daemon's instance folder, live or dead."""
    return inbox / ".digitd" / "work"


def set_aside_root(inbox: Path) -> Path:
    """<inbox>/.digitd/rejected: where rejected entries are set aside (see the layout)."""
    return inbox / ".digitd" / "rejected"


def new_id(now: datetime | None = None) -> str:
    """A unique, time-sortable id: UTC time to the millisecond plus 48 random bits."""
    return new_ids(1, now)[0]


def new_ids(count: int, now: datetime | None = None) -> list[str]:
    """`count` ids as new_id makes them, sharing one time: a batch's ids take one clock read,
    one format and one draw of random bits, not one each per file."""
    now = now or datetime.now(timezone.utc)
    prefix = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z-"
    random = secrets.token_hex(6 * count)
    return [prefix + random[i : i + 12] for i in range(0, 12 * count, 12)]


@dataclass(frozen=True)
class Claimed:
    """One input in hand: its id, its original name and where it now lies."""

    id: str
    name: str
    received_at: datetime
    path: Path


@dataclass(frozen=True)
class Batch:
    """A batch folder in the work folder; `recovered` when a crashed run left it behind."""

    id: str
    path: Path
    items: tuple[Claimed, ...]
    recovered: bool = False


class WorkFolder:
    """This daemon's own work folder, locked for as long as the daemon runs."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self.root = work_root(inbox)
        self.aside = set_aside_root(inbox)
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = self.root / self.instance
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create and lock the instance folder (built under a dot name, so no one adopts it
        before the lock is held)."""
        self.root.mkdir(parents=True, exist_ok=True)
        building = self.root / f".{self.instance}"
        building.mkdir()
        fd = os.open(building / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(building, self.path)
        self._lock_fd = fd

    def close(self) -> None:
        """Remove the instance folder if nothing is left in it, then drop the lock."""
        if self._lock_fd is None:
            return
        leftovers = [p for p in self.path.iterdir() if p.name != ".lock"]
        if not leftovers:
            os.unlink(self.path / ".lock")
            os.rmdir(self.path)
        os.close(self._lock_fd)
        self._lock_fd = None

    def claim(self, names: list[str], received: dict[str, datetime]) -> Batch:
        """Rename each named inbox entry into a new batch folder; names another daemon took
        first (or that vanished) are left out. The manifest is written durably."""
        names = list(dict.fromkeys(names))  # unique, in order
        batch_id, *ids = new_ids(1 + len(names))
        folder = self.path / batch_id
        folder.mkdir()
        inbox = os.fspath(self.inbox)
        items = []
        for name, item_id in zip(names, ids, strict=True):
            target = folder / name
            try:
                rename_noreplace(os.path.join(inbox, name), target)
            except FileNotFoundError:
                continue  # claimed by another daemon, or removed by its writer
            items.append(Claimed(item_id, name, received[name], target))
        batch = Batch(batch_id, folder, tuple(items))
        _write_manifest(batch, durable=False)  # see make_durable
        return batch

    def make_durable(self, batch: Batch) -> None:
        """fsync the manifest and the claims: called before the batch's results are committed
        (off the claiming thread, so the fsync overlaps the next batch's work)."""
        fd = os.open(batch.path / MANIFEST, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(batch.path)

    def split(self, batch: Batch, items: list[Claimed]) -> Batch:
        """Move some inputs of a recovered batch into a new batch folder of their own.

        For a batch whose CSV write a crash cut short: the inputs with committed rows stay
        to be filed, these are redone. They keep their ids (no row carries them).
        """
        folder = self.path / new_id()
        folder.mkdir()
        moved = []
        for item in items:
            target = folder / item.name
            os.rename(item.path, target)
            moved.append(Claimed(item.id, item.name, item.received_at, target))
        split = Batch(folder.name, folder, tuple(moved), recovered=True)
        _write_manifest(split)
        return split

    def finish(self, batch: Batch) -> None:
        """The batch's results are durable and its inputs filed: drop its folder."""
        os.unlink(batch.path / MANIFEST)
        try:
            os.rmdir(batch.path)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(batch.path)  # only entries the daemon could not file remain

    def adopt_orphans(self) -> int:
        """Move the batch folders of dead daemons (their lock is free) into ours."""
        adopted = 0
        for other in self.root.iterdir():
            if other == self.path or other.name.startswith("."):
                continue
            try:
                fd = os.open(other / ".lock", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue  # not an instance folder, or already gone
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its daemon is alive
                for batch in other.iterdir():
                    if batch.name != ".lock":
                        os.rename(batch, self.path / batch.name)
                        adopted += 1
                os.unlink(other / ".lock")
                os.rmdir(other)
            except FileNotFoundError:
                pass  # another daemon adopted it at the same moment
            finally:
                os.close(fd)
        return adopted

    def leftovers(self) -> list[Batch]:
        """Batches in our folder from before this start (or adopted): to be finished first."""
        batches = []
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir()):
            batches.append(_read_manifest(folder))
        return batches


def _write_manifest(batch: Batch, durable: bool = True) -> None:
    document = {
        "batch": batch.id,
        "items": [
            {"id": c.id, "name": c.name, "received_at": c.received_at.isoformat()}
            for c in batch.items
        ],
    }
    write_atomic(batch.path / MANIFEST, json.dumps(document).encode(), durable=durable)


def _read_manifest(folder: Path) -> Batch:
    """The batch as the manifest describes it; without a manifest, a new one for its files."""
    try:
        document = json.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        now = datetime.now(timezone.utc)
        names = sorted(
            p.name for p in folder.iterdir() if p.name != MANIFEST and not is_temporary_name(p.name)
        )
        items = tuple(Claimed(new_id(), n, now, folder / n) for n in names)
        batch = Batch(folder.name, folder, items, recovered=True)
        _write_manifest(batch)
        return batch
    items = tuple(
        Claimed(i["id"], i["name"], datetime.fromisoformat(i["received_at"]), folder / i["name"])
        for i in document["items"]
        if os.path.lexists(folder / i["name"])
    )
    return Batch(document["batch"], folder, items, recovered=True)
