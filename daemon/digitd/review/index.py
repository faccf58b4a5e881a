"""What there is to review, read from the outbox as it grows.

A result is one digit (`digit`) or a number (`digit` empty, the string in `digits`: see
digitd.result); both are reviewed, a number as the string it is.

results.csv and corrections.csv are append-only, so each is read from where the last read
stopped, under a shared lock (writers append whole batches under an exclusive one, so a read
never sees half a batch). Only results a person may review are kept in memory: every
`low_confidence` result, and an audit sample of the `ok` ones, picked by a hash of the id so
that every reviewer, every restart and the daemon agree on it. For each, the last row of
corrections.csv wins; a verdict `undone` puts the result back in the queue.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from digitd.codes import Status
from digitd.review.leases import Leases

ID_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")  # the daemon's ids: see claims.new_id
CORRECTIONS_CSV = "corrections.csv"
_BATCH_CACHE = 64  # batch JSON documents kept in memory for the top-3 probabilities


def audit_sampled(item_id: str, share: float) -> bool:
    """True for about `share` of all ids: the `ok` results that are audited.

    A hash of the id, not a random draw, so every process picks the same sample."""
    if share <= 0:
        return False
    value = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big")
    return value < share * 2**64


@dataclass
class Item:
    """One result that may be reviewed, as results.csv records it."""

    id: str
    file: str
    status: str  # "low_confidence", or "ok" for an audited result
    digit: int | None  # None for a number
    confidence: float
    sha256: str
    batch: str
    received_at: str
    processed_at: str
    model: str
    preview: str
    digits: str = ""  # the string read: the digit, or a number's digits

    def __post_init__(self) -> None:
        if not self.digits and self.digit is not None:
            self.digits = str(self.digit)

    @property
    def kind(self) -> str:
        return "audit" if self.status == Status.OK else "low_confidence"

    @property
    def is_number(self) -> bool:
        return self.digit is None


@dataclass
class Verdict:
    """The last row of corrections.csv for one id."""

    verdict: str  # confirmed, corrected, not_a_digit or undone
    label: str
    reviewed_at: str
    reviewer: str


class CsvTail:
    """Reads the rows appended to a CSV file since the last call, as dicts.

    Stops at the last complete line (a crash can leave a torn one, which the writer's next
    start cuts off); starts again from the top when the file was replaced or cut shorter.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: tuple[int, int] | None = None
        self._columns: list[str] | None = None

    def read(self) -> tuple[bool, list[dict[str, str]]]:
        """(restarted, new rows): restarted is True when earlier rows no longer hold."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            restarted = self._inode is not None
            self._offset, self._inode, self._columns = 0, None, None
            return restarted, []
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            stat = os.fstat(fd)
            inode = (stat.st_dev, stat.st_ino)
            restarted = False
            if inode != self._inode or stat.st_size < self._offset:
                restarted = self._inode is not None
                self._offset, self._inode, self._columns = 0, inode, None
            data = _pread_all(fd, self._offset, stat.st_size - self._offset)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return restarted, []
        self._offset += end
        reader = csv.reader(io.StringIO(data[:end].decode("utf-8", "replace"), newline=""))
        rows = []
        for values in reader:
            if self._columns is None:
                self._columns = values
                continue
            rows.append(dict(zip(self._columns, values, strict=False)))
        return restarted, rows


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 24), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


class ReviewIndex:
    """The reviewable results of one outbox and their latest verdicts; thread-safe."""

    def __init__(self, outbox: Path, audit_share: float, leases: Leases | None = None) -> None:
        self.outbox = outbox
        self.audit_share = audit_share
        self._results = CsvTail(outbox / "results.csv")
        self._corrections = CsvTail(outbox / CORRECTIONS_CSV)
        self.items: dict[str, Item] = {}
        self.verdicts: dict[str, Verdict] = {}
        self._verdict_times: list[float] = []  # epoch seconds of every verdict row
        self.leases = leases or Leases(outbox)  # shared with every review process
        self._batches: OrderedDict[str, dict[str, dict]] = OrderedDict()
        self.lock = threading.RLock()

    # -- reading ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Take in the rows appended to results.csv and corrections.csv since the last call."""
        with self.lock:
            restarted, rows = self._results.read()
            if restarted:
                self.items.clear()
            for row in rows:
                item = self._item(row)
                if item is not None:
                    self.items[item.id] = item
            restarted, rows = self._corrections.read()
            if restarted:
                self.verdicts.clear()
                self._verdict_times.clear()
            for row in rows:
                self._take_verdict(row)

    def _item(self, row: dict[str, str]) -> Item | None:
        status = row.get("status")
        wanted = status == Status.LOW_CONFIDENCE or (
            status == Status.OK and audit_sampled(row.get("id", ""), self.audit_share)
        )
        if not wanted or not ID_PATTERN.fullmatch(row.get("id", "")):
            return None
        digits = row.get("digits") or row.get("digit", "")  # no `digits` under the old header
        try:
            digit = int(row["digit"]) if row.get("digit") else None
            confidence = float(row["confidence"])
        except (KeyError, ValueError):
            return None
        if not digits.isascii() or not digits.isdigit() or (digit is None and not digits):
            return None
        return Item(
            id=row["id"], file=row.get("file", ""), status=status, digit=digit,
            confidence=confidence, sha256=row.get("sha256", ""), batch=row.get("batch", ""),
            received_at=row.get("received_at", ""), processed_at=row.get("processed_at", ""),
            model=row.get("model", ""), preview=row.get("preview", ""), digits=digits,
        )  # fmt: skip

    def _take_verdict(self, row: dict[str, str]) -> None:
        item_id = row.get("id", "")
        verdict = Verdict(row.get("verdict", ""), row.get("label", ""),
                          row.get("reviewed_at", ""), row.get("reviewer", ""))
        self.verdicts[item_id] = verdict
        if verdict.verdict != "undone":
            when = _parse_time(verdict.reviewed_at)
            if when is not None:
                self._verdict_times.append(when)

    def get(self, item_id: str) -> Item | None:
        """The reviewable result with this id (reading new rows first if it is not known)."""
        if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
            return None
        with self.lock:
            if item_id not in self.items:
                self.refresh()
            return self.items.get(item_id)

    def reviewed(self, item_id: str) -> bool:
        verdict = self.verdicts.get(item_id)
        return verdict is not None and verdict.verdict != "undone"

    # -- the queue ----------------------------------------------------------------------

    def queue(self, kind: str = "low_confidence", digit: int | None = None,
              session: str = "", limit: int = 50) -> list[Item]:
        """Results not yet reviewed, least confident first. With a session, items held for
        another session (by this process or another one on the outbox: digitd.review.leases)
        are left out, and the ones returned are held for this session, so two reviewers are
        not shown the same digits."""
        with self.lock:
            self.refresh()
            pending = sorted(self._pending(kind, digit), key=lambda i: (i.confidence, i.id))
            if not session:
                return pending[:limit]
            chosen = set(self.leases.claim((i.id for i in pending), session, limit))
            return [i for i in pending if i.id in chosen]

    def release(self, item_id: str) -> None:
        with self.lock:
            self.leases.release(item_id)

    def _pending(self, kind: str, digit: int | None):
        for item in self.items.values():
            wanted = item.kind == kind and (digit is None or item.digit == digit)
            if wanted and not self.reviewed(item.id):
                yield item

    def counts(self) -> dict[str, int | float | None]:
        """Queue sizes, verdicts, and what the audit found so far."""
        with self.lock:
            pending = {"low_confidence": 0, "audit": 0}
            audited = audit_wrong = 0
            for item in self.items.values():
                verdict = self.verdicts.get(item.id)
                if verdict is None or verdict.verdict == "undone":
                    pending[item.kind] += 1
                elif item.kind == "audit":
                    audited += 1
                    audit_wrong += verdict.verdict != "confirmed"
            hour_ago = time.time() - 3600
            self._verdict_times = [t for t in self._verdict_times if t >= hour_ago]
            return {
                "queue": pending["low_confidence"],
                "audit_queue": pending["audit"],
                "reviewed": sum(1 for v in self.verdicts.values() if v.verdict != "undone"),
                "verdicts_last_hour": len(self._verdict_times),
                "audited": audited,
                "audit_wrong": audit_wrong,
                # the silent-error rate of `ok` results, as measured by the audit so far
                "audit_error_rate": round(audit_wrong / audited, 4) if audited else None,
            }

    # -- the batch JSON -------------------------------------------------------------------

    def batch_entry(self, item: Item) -> dict:
        """The item's entry in results/<batch>.json ({} if that document is gone)."""
        with self.lock:
            entries = self._batches.get(item.batch)
            if entries is None:
                entries = {}
                if ID_PATTERN.fullmatch(item.batch):
                    try:
                        path = self.outbox / "results" / f"{item.batch}.json"
                        document = json.loads(path.read_bytes())
                        entries = {e["id"]: e for e in document.get("items", [])}
                    except (OSError, ValueError, KeyError, TypeError, AttributeError):
                        entries = {}
                self._batches[item.batch] = entries
                while len(self._batches) > _BATCH_CACHE:
                    self._batches.popitem(last=False)
            self._batches.move_to_end(item.batch)
            return entries.get(item.id, {})

    def top(self, item: Item, n: int = 3) -> list[list]:
        """The model's n most probable digits, [[digit, probability], ...]; for a number, its
        string and the string's confidence."""
        if item.is_number:
            return [[item.digits, item.confidence]]
        probabilities = self.batch_entry(item).get("probabilities")
        if not isinstance(probabilities, list) or len(probabilities) != 10:
            return [[item.digit, item.confidence]]
        order = sorted(range(10), key=lambda d: -probabilities[d])[:n]
        return [[d, round(float(probabilities[d]), 4)] for d in order]

    def parts(self, item: Item) -> list[dict] | None:
        """A number's digits as the batch JSON gives them (box, digit, confidence, top,
        doubtful), checked; None for a single digit or when the document is gone."""
        if not item.is_number:
            return None
        parts = self.batch_entry(item).get("parts")
        if not isinstance(parts, list):
            return None
        out = []
        for part in parts:
            try:
                out.append({"digit": int(part["digit"]),
                            "confidence": round(float(part["confidence"]), 4),
                            "doubtful": bool(part["doubtful"]),
                            "box": [int(v) for v in part["box"]][:4],
                            "top": [[int(d), round(float(p), 4)] for d, p in part["top"]][:3]})
            except (KeyError, TypeError, ValueError):
                return None
        return out


def _parse_time(text: str) -> float | None:
    try:
        when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc).timestamp()
