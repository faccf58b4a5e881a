"""Taking in one dropped file: read it safely, guard, hash, decode and normalise it.

    take_in(path, max_pixels, recognise) -> Intake(sha256, image, model_input, line)
                                             or Intake(error, message)

The one way in for the daemon and `digitd predict`, so that both refuse the same files for
the same reasons. Every failure becomes a reason code (digitd.codes.Reason), never an
exception: a decoder bug costs one file (`corrupt`, with the exception kept for the log), not
the daemon and not the other files of a `digitd predict` run.

The read (`read_input_file`) examines the entry with lstat and fstat before any read, so a
symlink, FIFO (never blocks), socket, folder or device is `not_regular` without being opened
or read, and checks the PNG header before the rest is read, so a file whose header declares
too many pixels is not read further. The image work is digitd.preprocess's and, unless
`recognise` is "digit", digitd.segment's (pure functions): `whole` is always the whole ink
read as one digit, exactly preprocess.normalise's (`model_input`, or for a line made when
first needed); `line` holds the line when the ink may be several digits side by side
(digitd.reader reads it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

import numpy as np

from digitd.codes import Reason, Rejected
from digitd.pngcheck import read_header
from digitd.preprocess import decode_png, prepare
from digitd.segment import Line, segment


@dataclass(frozen=True)
class Intake:
    """What taking in one file gave: a model input (and the decoded image, for the preview),
    or the reason it was refused."""

    sha256: str = ""  # of the file's bytes; "" when they could not be read
    image: np.ndarray | None = None
    model_input: np.ndarray | None = None  # one digit's; None for a line (see `whole`)
    line: Line | None = None  # several digits side by side may be there (not with "digit")
    error: Reason | None = None
    message: str = ""
    crash: Exception | None = None  # an unexpected decoder exception (error is CORRUPT)

    @property
    def ok(self) -> bool:
        return self.model_input is not None or self.line is not None

    @property
    def whole(self) -> np.ndarray | None:
        """All the ink read as one digit (for a line made on first use: a number read
        without it never pays for it)."""
        return self.line.whole if self.line is not None else self.model_input


def take_in(path: str | os.PathLike, max_pixels: int, recognise: str = "digit") -> Intake:
    """Read, guard, hash, decode and normalise (and with `recognise` "auto" or "number",
    segment) one file; never raises for a bad file."""
    try:
        data = read_input_file(path, max_pixels)
    except Rejected as exc:
        return Intake(error=exc.code, message=exc.message)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        if recognise == "digit":
            prepared = prepare(data, max_pixels)
            return Intake(sha256, prepared.image, prepared.model_input)
        image = decode_png(data, max_pixels)
        found = segment(image)
    except Rejected as exc:
        return Intake(sha256, error=exc.code, message=exc.message)
    except Exception as exc:  # a decoder bug must cost one file, not the run
        return Intake(sha256, error=Reason.CORRUPT, message=f"could not be decoded ({exc})",
                      crash=exc)
    if isinstance(found, Line):
        return Intake(sha256, image, None, found)
    return Intake(sha256, image, found.model_input)


def max_file_bytes(max_pixels: int) -> int:
    """No PNG within the pixel limit is bigger than this (16-bit RGBA stored uncompressed)."""
    return 8 * max_pixels + (1 << 20)


def read_input_file(path: str | os.PathLike, max_pixels: int) -> bytes:
    """The bytes of a dropped file, read safely; raises Rejected (missing, not_regular,
    unreadable, too_large, or the PNG header's own reasons) without reading what it refuses.

    lstat first, so a symlink, FIFO, socket, folder or device is never opened; then open
    without following links and non-blocking, and fstat again, in case the entry was swapped
    since. The PNG header is checked before the rest is read, so a file that declares too
    many pixels is not read further. A file under 64 KiB takes one read (a read that
    comes back short of what was asked is at the end of a regular file).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Rejected(Reason.MISSING, "no such file") from None
    except OSError as exc:
        raise Rejected(Reason.UNREADABLE, f"cannot be examined: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Rejected(Reason.NOT_REGULAR,
                       f"is a {_kind(st.st_mode)}, not a regular file: not read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Rejected(Reason.MISSING, "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejected(Reason.NOT_REGULAR, "is a symbolic link: not followed") from None
        raise Rejected(Reason.UNREADABLE, f"cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(Reason.NOT_REGULAR,
                           f"is a {_kind(st.st_mode)}, not a regular file: not read")
        if st.st_size > max_file_bytes(max_pixels):
            raise Rejected(Reason.TOO_LARGE,
                           f"{st.st_size:,} bytes is larger than any PNG allowed")
        # A small file (nearly all of them) in one read, which comes back short: the end;
        # a big one's header first.
        want = max(33, min(st.st_size + 1, 1 << 16))
        data = os.read(fd, want)
        if len(data) >= 33:
            read_header(data[:33], max_pixels)  # too_large, not_png: stop before reading more
        if len(data) < want:
            return data
        parts = [data]
        while chunk := os.read(fd, max(1 << 16, st.st_size)):
            parts.append(chunk)
        return b"".join(parts)
    except OSError as exc:
        raise Rejected(Reason.UNREADABLE, f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"
