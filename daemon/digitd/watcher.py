"""Watching the inbox: watchdog events are hints, the folder listing is the truth.

Events make pickup prompt; a periodic listing finds what events missed (queue overflow, late
events, network shares). A file is handed on only once complete, by the rule of
digitd.readiness (IEND at the end and closed, renamed in, or settled; or never complete for
`incomplete_after_s`): this module is the mechanism that finds names and looks at them when
due, that one the meaning of what it sees.

Several worker processes of one daemon watch the same inbox; each prefers its own share of the
names (by a hash of the name), and takes the others' only when its own are done and the
others' have waited `TAKEOVER_S`, so that workers do not race for the same files while each
still picks up whatever another leaves behind. It takes them newest first: the other worker
takes its share oldest first, so at the end of a burst the two work from opposite ends of
the same backlog and meet in the middle, instead of both claiming the same next names.

During a burst the events only repeat what the listing found, and handling them cost a fifth
of the CPU (measured: 1,775 files/s with them, 2,225/s without). So with `PAUSE_AT` names
waiting the watch is removed, and it is restored, followed by a listing, once fewer than
`RESUME_AT` wait: prompt pickup when idle, no event traffic when busy, nothing missed. While
events are off and fewer than RESUME_AT names of this worker's own share wait, the folder is
listed again (at most every `REFILL_S`): the others' names it knows cannot be taken before
TAKEOVER_S, and without that listing a worker whose own share ran out sat idle until then,
the next regular listing being far off (measured: one of two workers idle for the first
~0.4 s of a burst). PAUSE_AT is two batches: at 1,024 a burst's first thousand renames in,
and the claims of them (each an event for every worker), were still handled one by one
(watchdog's threads took 0.03-0.04 of 0.72 ms of CPU per file in a 3,000-file burst;
0.003-0.01 at 128). A pause and a resume cost ~0.2 ms of CPU, and take at least
PAUSE_AT - RESUME_AT arrivals.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import re
import threading
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

try:  # watchdog >= 7 (pyproject's floor), on Linux
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
except ImportError:  # pragma: no cover - not Linux: no inotify, nothing to tune
    InotifyMoveEventGrouper = None

from digitd.config import WatchConfig
from digitd.readiness import Candidate, Readiness

MAX_TRACKED = 10_000  # names tracked at once; a larger backlog is found by later listings
TAKEOVER_S = 0.5  # another worker's file waiting this long may be taken by this one
PAUSE_AT = 128  # names waiting: events are switched off (they only name files known already)
RESUME_AT = 32  # ...and on again, with a listing, when the backlog is this small
REFILL_S = 0.1  # events off, this worker's own share nearly done: list again this often


@dataclass(frozen=True)
class Arrival:
    """A complete file (or a non-regular entry) in the inbox, ready to be claimed."""

    name: str
    received_at: datetime  # wall clock (UTC) when digitd first saw the name
    ready_at: float  # monotonic time it was found complete: the batcher's clock starts here


class _Hints(FileSystemEventHandler):
    """Turns watchdog events into (name, closed) hints on a queue; never touches the disk."""

    def __init__(self, inbox: str, hints: queue.Queue) -> None:
        self._inbox = inbox
        self._hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(getattr(event, "dest_path", "") or event.src_path)
        head, name = os.path.split(path)
        if head == self._inbox:
            self._hints.put((name, isinstance(event, FileClosedEvent)))


class InboxWatcher:
    """Finds complete files in one folder; `poll()` returns each one once until `release()`."""

    def __init__(self, inbox: Path, config: WatchConfig, share: tuple[int, int] = (0, 1)) -> None:
        self.inbox = inbox
        self._share = share  # (this worker's index, number of workers)
        self._config = config
        self._readiness = Readiness(config)
        # fnmatch's patterns as one regular expression each way (a name is tested by every
        # worker, for every name in the inbox: one match instead of five fnmatchcase calls)
        self._patterns = _one_pattern(config.patterns)
        self._ignore = _one_pattern(config.ignore)
        # queue.Queue, not SimpleQueue: CPython 3.11's SimpleQueue.get(timeout=...) can block
        # for ever when a signal handler runs past the deadline (the SIGTERM handler did,
        # and the daemon never stopped).
        self._hints: queue.Queue = queue.Queue()
        self._candidates: dict[str, Candidate] = {}  # this worker's share of the names
        self._others: dict[str, Candidate] = {}  # the other workers' share, oldest first
        self._handed_on: set[str] = set()
        self._next_listing = 0.0
        self._listed_at = float("-inf")  # monotonic time of the last listing
        self._listing_truncated = False
        self._observer = None
        self._watch = None  # the observer's watch on the inbox; None while events are off

    def start(self) -> None:
        """Start the observer; the first `poll()` lists what is already there."""
        if InotifyMoveEventGrouper is not None:
            # watchdog holds each unpaired IN_MOVED_FROM for 0.5 s, hoping to pair it with an
            # IN_MOVED_TO, in a first-in first-out queue. Every claim is a rename out of the
            # inbox, so each would delay all later events (measured: 170-430 ms pickup).
            # digitd needs no pairing: a rename within the inbox is a hint either way.
            InotifyMoveEventGrouper.delay = 0
        if self._config.observer == "polling":
            observer = PollingObserver(timeout=self._config.poll_interval_s)
        else:
            observer = Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._schedule()

    def _schedule(self) -> None:
        """Watch the inbox (again): events become hints on the queue."""
        handler = _Hints(os.fsdecode(os.path.abspath(self.inbox)), self._hints)
        kinds = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileClosedEvent]
        kinds += [DirCreatedEvent, DirMovedEvent]
        self._watch = self._observer.schedule(
            handler, str(self.inbox), recursive=False, event_filter=kinds
        )

    def _pace_events(self, now: float) -> None:
        """Switch events off while a large backlog waits, on again (and list) when it is
        small; while they are off, list when this worker's own share runs low."""
        if self._observer is None:
            return
        if self._watch is not None:
            if self._tracked() >= PAUSE_AT:
                self._observer.unschedule(self._watch)
                self._watch = None
        elif self._tracked() < RESUME_AT:
            self._schedule()
            self._list(now)  # what arrived while events were off
        elif len(self._candidates) < RESUME_AT and now >= self._listed_at + REFILL_S:
            self._list(now)  # more of its own share, or nothing new: events stay off

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the observer; False if it did not stop within `timeout` seconds.

        watchdog's stop joins its emitter and inotify threads without a time limit: it runs
        in a helper thread, so that the daemon's drain never waits on it for long.
        """
        observer, self._observer = self._observer, None
        if observer is None:
            return True
        stopper = threading.Thread(target=observer.stop, name="watcher-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        observer.join(max(0.0, timeout - 0.1))
        return not stopper.is_alive() and not observer.is_alive()

    def wait(self, timeout: float) -> None:
        """Block until an event arrives or `timeout` seconds pass."""
        try:
            hint = self._hints.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return
        self._hints.put(hint)  # poll() drains it with the others

    def next_deadline(self) -> float:
        """The monotonic time at which `poll()` next has work, were no event to come."""
        soonest = self._next_listing
        for c in self._candidates.values():
            soonest = min(soonest, c.next_check)
        for c in self._others.values():
            soonest = min(soonest, max(c.next_check, c.unchanged_since + TAKEOVER_S))
        return soonest

    def poll(self, now: float, want: int) -> list[Arrival]:
        """Take in events, list the folder when due, and return up to `want` complete files."""
        self._take_hints(now)
        if now >= self._next_listing or (
            self._listing_truncated and self._tracked() < MAX_TRACKED // 2
        ):
            self._list(now)
        self._pace_events(now)
        ready: list[Arrival] = []
        self._collect(ready, want, now, own=True)
        if len(ready) < want and self._others:
            self._collect(ready, want, now, own=False)
        return ready

    def _tracked(self) -> int:
        return len(self._candidates) + len(self._others)

    def _collect(self, ready: list[Arrival], want: int, now: float, own: bool) -> None:
        """Add complete candidates of this worker's share, oldest first (or, past TAKEOVER_S,
        the others', newest first: see the module's docstring).

        Walks the candidates in place (no copy of all of them per poll) and stops at `want`;
        the names handed on, or found gone, leave the dict after the walk."""
        candidates = self._candidates if own else self._others
        taken: list[str] = []
        gone: list[str] = []
        for name in (candidates if own else reversed(candidates)):
            if len(ready) >= want:
                break
            candidate = candidates[name]
            if candidate.next_check > now:
                continue
            if not own and now - candidate.unchanged_since < TAKEOVER_S:
                continue
            try:
                complete = self._readiness.is_ready(os.path.join(self.inbox, name), candidate,
                                                    now)
            except FileNotFoundError:
                gone.append(name)  # renamed away or deleted before it completed
                continue
            if complete:
                taken.append(name)
                ready.append(Arrival(name, candidate.received_at, now))
        for name in gone + taken:
            del candidates[name]
        self._handed_on.update(taken)

    def release(self, name: str) -> None:
        """The name was claimed (or vanished): a new file of that name is a new arrival."""
        self._handed_on.discard(name)

    def wanted(self, name: str) -> bool:
        """Does the name match the patterns and none of the ignore patterns (any case)?"""
        lower = name.lower()
        return self._ignore.match(lower) is None and self._patterns.match(lower) is not None

    def _take_hints(self, now: float) -> None:
        received = None  # one clock read for the names these hints bring
        while True:
            try:
                name, closed = self._hints.get_nowait()
            except queue.Empty:
                return
            received = received or datetime.now(timezone.utc)
            candidate = self._track(name, now, received)
            if candidate is not None:
                candidate.next_check = now
                candidate.closed = candidate.closed or closed

    def _track(self, name: str, now: float, received: datetime) -> Candidate | None:
        """Start tracking a name first seen at `received` (wall clock), unless it is known,
        handed on, unwanted, or too many are tracked."""
        candidate = self._candidates.get(name) or self._others.get(name)
        if candidate is None and name not in self._handed_on and self.wanted(name):
            if self._tracked() >= MAX_TRACKED:
                self._listing_truncated = True
                return None
            index, workers = self._share
            own = workers == 1 or zlib.crc32(os.fsencode(name)) % workers == index
            candidate = Candidate(received, now, unchanged_since=now)
            (self._candidates if own else self._others)[name] = candidate
        return candidate

    def _list(self, now: float) -> None:
        self._next_listing = now + self._config.rescan_interval_s
        self._listed_at = now
        self._listing_truncated = False
        received = datetime.now(timezone.utc)  # when this listing saw its new names
        try:
            with os.scandir(self.inbox) as entries:
                for entry in entries:
                    name = entry.name
                    if name not in self._candidates and name not in self._others:
                        self._track(name, now, received)
        except OSError:
            pass  # the inbox itself is gone or unreadable; the daemon logs its health


def _one_pattern(patterns: list[str]) -> re.Pattern:
    """fnmatch patterns, lower-cased, as one regular expression (matching a lower-cased name
    exactly as fnmatch.fnmatchcase with any of them would); none matches nothing."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns))
