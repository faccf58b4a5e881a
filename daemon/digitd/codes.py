"""digitd's machine codes, each list in one place: a result's status, why an input was
rejected, and the exit codes of the commands. `Rejected` (raised by the readers, the PNG
checks and the normalisation) carries a `Reason`.

The codes are `str` (or `int`) enums, so they are written into the CSV, the JSON documents
and the exit status as their plain values ("low_confidence", "not_png", 2).
"""

from __future__ import annotations

from enum import Enum, IntEnum


class _Code(str, Enum):
    """A string enum (Python 3.10 has no StrEnum): formats and compares as its value."""

    def __str__(self) -> str:
        return self.value


class Status(_Code):
    """What became of one input (results.csv's `status` column)."""

    OK = "ok"  # recognised, confidence at or above min_confidence
    LOW_CONFIDENCE = "low_confidence"  # recognised, below min_confidence: a person should look
    REJECTED = "rejected"  # not recognised; `error` holds the Reason


class Reason(_Code):
    """Why an input was rejected (results.csv's `error` column), with its description."""

    message: str

    def __new__(cls, value: str, message: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.message = message
        return member

    EMPTY = "empty", "the file is empty (0 bytes)"
    NOT_PNG = "not_png", "the content is not a PNG image (text, JPEG or another format named .png)"
    TRUNCATED = "truncated", "the PNG ends before its IEND chunk (cut short or still being written)"
    CORRUPT = "corrupt", "the PNG structure is damaged (bad CRC, bad header, undecodable data)"
    TOO_LARGE = (
        "too_large",
        "the PNG declares more pixels than the configured limit; it was not decoded",
    )
    NO_INK = "no_ink", ("the image is blank, uniform or fully transparent, or an empty form "
                        "field (printed lines only): no digit to recognise")
    UNREADABLE = "unreadable", "the file could not be read (permission denied or an I/O error)"
    MISSING = "missing", "the file does not exist (or vanished before it could be read)"
    NOT_REGULAR = "not_regular", "not a regular file (a symlink, directory, FIFO, socket or device)"


# Reason code -> description, keyed by the plain strings (as read back from results.csv).
REASONS: dict[str, str] = {reason.value: reason.message for reason in Reason}


class Rejected(Exception):
    """An input that cannot be recognised: `code` is machine-readable, `message` is for people.

    `code` is a Reason (a string naming one is accepted and checked: an unknown code is a bug).
    """

    def __init__(self, code: Reason | str, message: str):
        self.code = Reason(code)
        self.message = message
        super().__init__(f"{self.code}: {message}")


class ExitCode(IntEnum):
    """The exit status of every digitd command."""

    OK = 0
    FAILURE = 1  # some inputs were rejected (predict), or the service failed (run)
    USAGE = 2  # bad configuration, bad data, bad arguments, a model that cannot be loaded
    INTERRUPTED = 130  # Ctrl-C
