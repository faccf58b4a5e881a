"""Readiness on its own, as paperless-ngx tests its FileStabilityTracker: the rule
(digitd.readiness) and when the watcher hands a file on, driven through `poll(now)` with a
clock the test sets, on real files in a temp folder (no observer started: the periodic
listing is the truth, events only hints)."""

from __future__ import annotations

import os
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from watchdog.events import FileClosedEvent

from digitd.config import WatchConfig
from digitd.readiness import PNG_TRAILER, Candidate, Readiness, has_png_trailer
from digitd.watcher import TAKEOVER_S, InboxWatcher, _Hints
from pngwrite import encode_png

CONFIG = WatchConfig(settle_ms=200, incomplete_after_s=10.0, rescan_interval_s=2.0)
PNG = encode_png(__import__("numpy").zeros((8, 8), "uint8"))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path


def names(arrivals) -> list[str]:
    return [a.name for a in arrivals]


def first_hand_on(w: InboxWatcher, now: float, until: float) -> tuple[float, list[str]]:
    """Poll at the watcher's own deadlines (as the daemon's loop does without events) until
    something is handed on; returns when, and what."""
    while now <= until:
        got = w.poll(now, 100)
        if got:
            return now, sorted(names(got))
        now = w.next_deadline()
    return now, []


def renamed_in(inbox: Path, name: str, data: bytes = PNG) -> Path:
    """Written elsewhere, renamed in after its last write: mtime older than ctime."""
    path = inbox / name
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    return path


def written_in_place(inbox: Path, name: str, data: bytes) -> Path:
    """Still being written for all the watcher knows: mtime not older than ctime."""
    path = inbox / name
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_ctime_ns + 10**9))
    return path


def test_a_complete_png_renamed_in_is_handed_on_at_once_and_only_once(inbox):
    renamed_in(inbox, "a.png")
    w = InboxWatcher(inbox, CONFIG)
    (arrival,) = w.poll(0.0, 10)
    assert arrival.name == "a.png" and arrival.ready_at == 0.0
    assert w.poll(5.0, 10) == []  # still there (not yet claimed): not handed on twice
    w.release("a.png")
    assert names(w.poll(10.0, 10)) == ["a.png"]  # released, still there: a new arrival


def test_the_names_one_listing_finds_are_received_at_its_time(inbox):
    """received_at is when digitd first saw a name: one clock read for all the names a
    listing finds (not one per name: thousands in a burst)."""
    for i in range(20):
        renamed_in(inbox, f"{i:02d}.png")
    before = datetime.now(timezone.utc)
    got = InboxWatcher(inbox, CONFIG).poll(time.monotonic(), 100)
    after = datetime.now(timezone.utc)
    assert len(got) == 20
    assert len({a.received_at for a in got}) == 1
    assert before <= got[0].received_at <= after


def test_a_png_written_in_place_waits_settle_ms_unchanged(inbox):
    written_in_place(inbox, "a.png", PNG)
    w = InboxWatcher(inbox, CONFIG)
    assert w.poll(0.0, 10) == []
    assert w.next_deadline() == pytest.approx(0.2)
    assert w.poll(0.19, 10) == []
    assert names(w.poll(0.2, 10)) == ["a.png"]
    renamed_in(inbox, "b.png")
    written_in_place(inbox, "c.png", PNG)
    # New names without events: found by the next listing (rescan_interval_s after the last).
    assert first_hand_on(w, 0.3, 60.0) == (2.0, ["b.png"])
    assert first_hand_on(w, 2.0, 60.0) == (pytest.approx(2.2), ["c.png"])


def test_a_change_restarts_the_settle_time(inbox):
    path = written_in_place(inbox, "a.png", PNG[:40])
    w = InboxWatcher(inbox, CONFIG)
    assert w.poll(0.0, 10) == []
    with open(path, "ab") as f:  # the writer goes on: now it ends with IEND
        f.write(PNG[40:])
    written_in_place(inbox, "a.png", PNG)
    looked = w.next_deadline()  # no IEND yet at 0.0: the next look within a second
    assert 0 < looked <= 1.0
    assert w.poll(looked, 10) == []  # changed since the last look: unchanged for 0 s
    assert w.poll(looked + 0.19, 10) == []
    assert names(w.poll(looked + 0.21, 10)) == ["a.png"]


def test_closed_after_writing_is_enough(inbox):
    path = written_in_place(inbox, "a.png", PNG)
    w = InboxWatcher(inbox, CONFIG)
    _Hints(os.fsdecode(os.path.abspath(inbox)), w._hints).on_any_event(
        FileClosedEvent(os.fsdecode(path))
    )
    assert names(w.poll(0.0, 10)) == ["a.png"]


def test_a_file_without_iend_is_taken_after_incomplete_after_s(inbox):
    written_in_place(inbox, "cut.png", PNG[:-len(PNG_TRAILER)])
    written_in_place(inbox, "text.png", b"not a PNG at all")
    w = InboxWatcher(inbox, CONFIG)
    when, taken = first_hand_on(w, 0.0, 60.0)
    assert taken == ["cut.png", "text.png"]
    assert 10.0 <= when <= 11.0  # looked at every second or so meanwhile


def test_entries_that_are_not_regular_files_are_handed_on_unopened(inbox):
    os.mkfifo(inbox / "fifo.png")
    (inbox / "dir.png").mkdir()
    (inbox / "link.png").symlink_to("/nonexistent")
    w = InboxWatcher(inbox, CONFIG)
    start = time.monotonic()
    assert sorted(names(w.poll(0.0, 10))) == ["dir.png", "fifo.png", "link.png"]
    assert time.monotonic() - start < 5  # the FIFO was not opened for reading


def test_a_file_that_vanishes_before_it_completes_is_forgotten(inbox):
    path = written_in_place(inbox, "a.png", PNG[:40])
    w = InboxWatcher(inbox, CONFIG)
    assert w.poll(0.0, 10) == []
    path.unlink()
    assert w.poll(20.0, 10) == []
    assert w._candidates == {}


def test_names_are_matched_case_insensitively_and_hidden_or_partial_ones_ignored(inbox):
    for name in ("A.PNG", ".hidden.png", "x.png.part", "~lock.png", "notes.txt", "b.tmp"):
        renamed_in(inbox, name)
    w = InboxWatcher(inbox, CONFIG)
    assert names(w.poll(0.0, 10)) == ["A.PNG"]


def test_at_most_want_files_per_poll(inbox):
    for i in range(5):
        renamed_in(inbox, f"{i}.png")
    w = InboxWatcher(inbox, CONFIG)
    assert len(w.poll(0.0, 3)) == 3
    assert len(w.poll(0.0, 3)) == 2


def test_another_workers_share_is_taken_only_after_takeover(inbox):
    for i in range(40):
        renamed_in(inbox, f"{i}.png")
    mine = InboxWatcher(inbox, CONFIG, share=(0, 2))
    own = names(mine.poll(0.0, 100))
    assert 0 < len(own) < 40  # its own share of the names, at once
    assert mine.poll(TAKEOVER_S / 2, 100) == []
    others = names(mine.poll(TAKEOVER_S, 100))  # the other worker left them waiting
    assert sorted(own + others) == sorted(f"{i}.png" for i in range(40))


def test_another_workers_share_is_taken_newest_first(inbox):
    """The other worker takes its share oldest first: this one takes it from the other end,
    so that the two do not claim the same next names."""
    theirs = [n for n in (f"{i}.png" for i in range(100)) if zlib.crc32(n.encode()) % 2 == 1]
    config = WatchConfig(settle_ms=200, incomplete_after_s=10.0, rescan_interval_s=0.1)
    mine = InboxWatcher(inbox, config, share=(0, 2))
    for i, name in enumerate(theirs[:3]):  # seen by three listings, in this order
        renamed_in(inbox, name)
        assert mine.poll(i * config.rescan_interval_s, 100) == []
    later = 2 * config.rescan_interval_s + TAKEOVER_S + 0.01
    assert names(mine.poll(later, 1)) == [theirs[2]]
    assert names(mine.poll(later, 100)) == [theirs[1], theirs[0]]


def test_the_rule_alone(inbox):
    """Readiness.is_ready on one candidate: a vanished name raises, a FIFO is never opened."""
    rule = Readiness(CONFIG)
    path = written_in_place(inbox, "a.png", PNG)
    candidate = Candidate(received_at=None, next_check=0.0, unchanged_since=0.0)
    assert not rule.is_ready(str(path), candidate, 0.0)
    assert candidate.next_check == pytest.approx(0.2) and candidate.size == len(PNG)
    assert rule.is_ready(str(path), candidate, 0.2)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        rule.is_ready(str(path), candidate, 0.3)
    os.mkfifo(inbox / "fifo.png")
    assert has_png_trailer(str(inbox / "fifo.png"), 100) is None  # not read, not blocked
    assert has_png_trailer(str(inbox / "short.png"), 3) is False


def test_events_pause_in_a_backlog_and_resume_with_a_listing(inbox):
    """The real observer: with PAUSE_AT names waiting, events stop (a file dropped then is not
    seen, the rescan being far off); once the backlog is taken, a listing finds that file
    and events find the next one at once again."""
    from digitd.watcher import PAUSE_AT

    config = WatchConfig(settle_ms=200, incomplete_after_s=10.0, rescan_interval_s=3600.0)
    for i in range(PAUSE_AT + 5):
        renamed_in(inbox, f"{i:04d}.png")
    w = InboxWatcher(inbox, config)
    w.start()
    try:
        taken = names(w.poll(time.monotonic(), 1))  # the first listing finds the backlog
        renamed_in(inbox, "late.png")  # while events are off
        time.sleep(0.3)
        taken += names(w.poll(time.monotonic(), 10 * PAUSE_AT))
        assert sorted(taken) == [f"{i:04d}.png" for i in range(PAUSE_AT + 5)]
        assert names(w.poll(time.monotonic(), 100)) == ["late.png"]  # resumed, listed
        renamed_in(inbox, "after.png")
        deadline = time.monotonic() + 10
        found = []
        while not found and time.monotonic() < deadline:
            w.wait(0.5)  # returns when an event arrives
            found = names(w.poll(time.monotonic(), 100))
        assert found == ["after.png"]  # by its event: the next listing is an hour away
    finally:
        w.stop()


def test_a_worker_without_its_own_share_lists_while_events_are_off(inbox):
    """The real observer: a backlog of the other worker's share, which this one may not take
    yet, switches events off; a file of its own share dropped meanwhile is still found at once,
    by a listing (not at the regular one, an hour away here, nor after TAKEOVER_S)."""
    from digitd.watcher import PAUSE_AT

    config = WatchConfig(settle_ms=200, incomplete_after_s=10.0, rescan_interval_s=3600.0)
    names_ = [f"{i:04d}.png" for i in range(4 * PAUSE_AT)]
    theirs = [n for n in names_ if zlib.crc32(n.encode()) % 2 == 1][: PAUSE_AT + 5]
    own = next(n for n in names_ if zlib.crc32(n.encode()) % 2 == 0)
    for name in theirs:
        renamed_in(inbox, name)
    w = InboxWatcher(inbox, config, share=(0, 2))
    w.start()
    try:
        assert w.poll(time.monotonic(), 100) == []  # listed; not its own, not yet takeable
        renamed_in(inbox, own)
        deadline = time.monotonic() + 10
        found = []
        while not found and time.monotonic() < deadline:
            w.wait(0.1)
            found = names(w.poll(time.monotonic(), 1))
        assert found == [own]
        assert time.monotonic() < deadline - 10 + TAKEOVER_S  # by its event, before takeover
    finally:
        w.stop()


@pytest.mark.parametrize("patterns, ignore", [
    (["*.png"], [".*", "*.part", "*.tmp", "~*"]),  # the defaults
    (["*.PNG", "scan-??.png", "[ab]*.png"], ["*[!0-9].png"]),
    (["*.png"], []),
    ([], ["*"]),
])
def test_wanted_is_fnmatch_on_the_lower_cased_name(inbox, patterns, ignore):
    import fnmatch

    names = ["a.png", "A.PNG", ".hidden.png", "x.png.part", "~lock.png", "b.tmp", "c.jpg",
             "weird[1].png", "d.Png", "scan-07.png", "scan-7.png", "b1.png", "9.png", "png",
             "a\nb.png", "ä.png"]
    w = InboxWatcher(inbox, WatchConfig(patterns=patterns, ignore=ignore))
    for name in names:
        lower = name.lower()
        expected = (not any(fnmatch.fnmatchcase(lower, p.lower()) for p in ignore)
                    and any(fnmatch.fnmatchcase(lower, p.lower()) for p in patterns))
        assert w.wanted(name) == expected, name
