"""When a file dropped into the inbox is complete: the readiness rule, apart from the watching
(digitd.watcher finds the names and decides when to look; this module says what it sees).

A file is complete when it ends with PNG's IEND chunk and was closed after writing, renamed
into place after its last write (mtime < ctime), or left unchanged for `settle_ms`. What
never completes (no IEND: truncated, or not a PNG) is handed on after `incomplete_after_s`,
so that it is rejected with a reason instead of waiting forever. An entry that is not a
regular file (FIFO, symlink, folder) or cannot be read is handed on at once, never opened
for reading here: the reader rejects it with its reason.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime

from digitd.config import WatchConfig

PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # an IEND chunk: length 0, type, CRC


@dataclass
class Candidate:
    """A name in the inbox and what was seen of it so far."""

    received_at: datetime  # wall clock (UTC) when digitd first saw the name
    next_check: float  # monotonic: when to look at it again
    size: int = -1
    mtime_ns: int = -1
    unchanged_since: float = 0.0  # monotonic: size and mtime the same since
    closed: bool = False  # a "closed after writing" event was seen


class Readiness:
    """The rule, with the configured times; `is_ready` looks at one candidate."""

    def __init__(self, config: WatchConfig) -> None:
        self.settle_s = config.settle_ms / 1000
        self.incomplete_after_s = config.incomplete_after_s

    def is_ready(self, path: str, candidate: Candidate, now: float) -> bool:
        """Is the file complete (or to be handed on anyway)? If not, `candidate.next_check`
        says when to look again. Raises FileNotFoundError if the name is gone."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise
        except OSError:
            return True  # let the claim and the reader say what is wrong
        if not stat.S_ISREG(st.st_mode):
            return True  # symlink, FIFO, socket, folder: rejected without being opened
        if st.st_size != candidate.size or st.st_mtime_ns != candidate.mtime_ns:
            candidate.size, candidate.mtime_ns = st.st_size, st.st_mtime_ns
            candidate.unchanged_since = now
        unchanged = now - candidate.unchanged_since
        tail = has_png_trailer(path, st.st_size)
        if tail is None:
            return True  # unreadable: rejected as such
        settle = self.settle_s
        if tail and (candidate.closed or st.st_mtime_ns < st.st_ctime_ns or unchanged >= settle):
            return True
        if not tail and unchanged >= self.incomplete_after_s:
            return True
        wait = settle if tail else min(1.0, self.incomplete_after_s / 4)
        candidate.next_check = now + max(0.005, wait - unchanged if tail else wait)
        return False


def has_png_trailer(path: str, size: int) -> bool | None:
    """Does the file end with an IEND chunk? None if it cannot be opened for reading.

    Opened non-blocking and without following links, so a FIFO or a link swapped in since
    the lstat cannot block or redirect the read.
    """
    if size < len(PNG_TRAILER):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.pread(fd, len(PNG_TRAILER), size - len(PNG_TRAILER)) == PNG_TRAILER
    finally:
        os.close(fd)
