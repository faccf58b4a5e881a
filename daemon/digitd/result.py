"""The outcome for one input, `Result`, and every format it is written in:

    Result.row()             a results.csv row (CSV_COLUMNS); Result.from_row() reads one back
    Result.batch_item()      its item in outbox/results/<batch>.json
    Result.error_document()  outbox/failed/<name>.error.json, for a rejected input
    Result.line()            `digitd predict`'s text line (the digit, or a number's string)
    Result.answer()          `digitd predict --json`'s object

and the one rule that turns the model's probabilities into a status (`Result.recognised`), so
that the daemon and `digitd predict` tell the same truth. The CSV contract: a stable header
(new columns appended only), RFC 4180 quoting by Python's csv, UTF-8 (names that are not
become U+FFFD), ISO-8601 UTC times, and nothing a spreadsheet would run as a formula.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitd.codes import REASONS, Reason, Status

if TYPE_CHECKING:
    from digitd.claims import Claimed
    from digitd.reader import Reading

CSV_COLUMNS = (
    "id", "file", "status", "digit", "confidence", "sha256", "batch",
    "received_at", "processed_at", "model", "preview", "error",
    "digits", "digit_count",
)  # fmt: skip
CSV_HEADER = ",".join(CSV_COLUMNS) + "\r\n"
# The header before numbers were read (`digits` and `digit_count` appended since): an outbox
# whose results.csv has it keeps getting rows of these columns only (digitd.outputs).
CSV_COLUMNS_V1 = CSV_COLUMNS[:12]
CSV_HEADER_V1 = ",".join(CSV_COLUMNS_V1) + "\r\n"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(kw_only=True)
class Result:
    """The outcome for one input. `digitd predict` fills the answer (file, status, digit,
    confidence, probabilities, error, message); the daemon also the identity and the outbox's
    fields."""

    id: str = ""
    file: str  # the input's original name (predict: the path as given)
    status: Status
    digit: int | None = None
    confidence: float | None = None
    sha256: str = ""
    batch: str = ""
    received_at: datetime = field(default_factory=_now)
    processed_at: datetime = field(default_factory=_now)
    model: str = ""
    preview: str = ""  # path relative to the outbox, "" when none
    error: Reason | str = ""  # the reason code, "" unless rejected
    message: str = ""
    probabilities: list[float] | None = None
    source: Path | None = None  # the claimed input in the work folder
    digits: str = ""  # the string read: a number, or the one digit; "" when rejected
    parts: list[dict] | None = None  # a number's digits: box, value, confidence, top-3, doubtful

    def __post_init__(self) -> None:
        if type(self.status) is not Status:  # a plain "ok" is accepted, an unknown one is not
            self.status = Status(self.status)
        if not self.digits and self.digit is not None:
            self.digits = str(self.digit)  # one digit: the string is that digit
        if self.error in REASONS:
            self.error = Reason(self.error)

    # -- the status rule ------------------------------------------------------------------

    @classmethod
    def recognised(cls, probabilities: np.ndarray, min_confidence: float, **fields) -> Result:
        """The model's answer: the most probable digit, `ok` when its probability is at least
        `min_confidence`, `low_confidence` below it."""
        probabilities = np.asarray(probabilities)
        digit = int(probabilities.argmax())
        confidence = float(probabilities[digit])
        status = Status.LOW_CONFIDENCE if confidence < min_confidence else Status.OK
        return cls(status=status, digit=digit, confidence=confidence, digits=str(digit),
                   probabilities=[round(p, 6) for p in probabilities.tolist()], **fields)

    @classmethod
    def number(cls, reading: Reading, min_confidence: float, **fields) -> Result:
        """A number read (digitd.reader): its confidence is the string's (calibrated: the
        number model's path probability, or the surer number model's where all three
        readers read it alike, or without it the product of the digits' probabilities,
        sharpened); `ok` only when that is at least `min_confidence` and no
        digit is doubtful (below `min_confidence`, not agreed by the two readers, or, read by
        segmentation alone, cut out of touching ink or joined from parts: its shape is a
        guess). `digit` is empty: the string is in `digits`."""
        parts = [
            {
                "box": list(d.box),
                "digit": d.value,
                "confidence": round(d.confidence, 6),
                "top": [[value, p] for value, p in d.top],
                "doubtful": d.cut or not d.agreed or d.confidence < min_confidence,
            }
            for d in reading.digits
        ]
        doubtful = any(p["doubtful"] for p in parts)
        low = doubtful or reading.confidence < min_confidence
        status = Status.LOW_CONFIDENCE if low else Status.OK
        return cls(status=status, confidence=reading.confidence, digits=reading.text,
                   parts=parts, **fields)

    @property
    def digit_count(self) -> int | None:
        return len(self.digits) if self.digits else None

    @classmethod
    def rejected(cls, error: Reason, message: str, **fields) -> Result:
        return cls(status=Status.REJECTED, error=error, message=message, **fields)

    # -- results.csv --------------------------------------------------------------------

    def row(self) -> list[str]:
        """The CSV row, in CSV_COLUMNS order."""
        return [
            self.id,
            spreadsheet_safe(printable_name(self.file)),
            self.status,
            "" if self.digit is None else str(self.digit),
            "" if self.confidence is None else f"{self.confidence:.4f}",
            self.sha256,
            self.batch,
            iso_time(self.received_at),
            iso_time(self.processed_at),
            self.model,
            self.preview,
            self.error,
            self.digits,
            "" if self.digit_count is None else str(self.digit_count),
        ]

    @classmethod
    def from_row(cls, row: dict[str, str], item: Claimed, batch: str) -> Result:
        """The Result a committed row records, for the claimed input it names (crash recovery
        files the inputs whose rows were written before the crash). The CSV's file name was
        made printable and spreadsheet-safe, so the name comes from the claim."""
        return cls(
            id=row["id"],
            file=item.name,
            status=Status(row["status"]),
            digit=int(row["digit"]) if row["digit"] else None,
            confidence=float(row["confidence"]) if row["confidence"] else None,
            sha256=row["sha256"],
            batch=batch,
            received_at=item.received_at,
            processed_at=parse_iso_time(row["processed_at"]),
            model=row["model"],
            preview=row["preview"],
            error=row["error"],
            message=REASONS.get(row["error"], ""),
            source=item.path,
            digits=row.get("digits") or row["digit"],  # no `digits` under the old header
        )

    # -- the JSON documents ---------------------------------------------------------------

    def batch_item(self) -> dict:
        """Its item in outbox/results/<batch>.json."""
        return {
            "id": self.id,
            "file": printable_name(self.file),
            "status": self.status,
            "digit": self.digit,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "sha256": self.sha256,
            "received_at": iso_time(self.received_at),
            "processed_at": iso_time(self.processed_at),
            "preview": self.preview,
            "error": self.error,
            "message": self.message,
            "digits": self.digits or None,
            "digit_count": self.digit_count,
            "parts": self.parts,
        }

    def error_document(self) -> dict:
        """outbox/failed/<name>.error.json (a `kept_at` is added when the input could not be
        put beside it)."""
        return {
            "id": self.id,
            "file": printable_name(self.file),
            "error": self.error,
            "message": self.message,
            "batch": self.batch,
            "sha256": self.sha256,
            "received_at": iso_time(self.received_at),
            "processed_at": iso_time(self.processed_at),
        }

    # -- digitd predict -------------------------------------------------------------------

    def line(self) -> str:
        """`FILE DIGITS CONFIDENCE` (one digit, or the number's string), with
        ` low_confidence` appended when unsure, or `FILE rejected CODE: MESSAGE`."""
        if self.status == Status.REJECTED:
            return f"{self.file} rejected {self.error}: {self.message}"
        text = f"{self.file} {self.digits} {self.confidence:.4f}"
        return text + " low_confidence" if self.status == Status.LOW_CONFIDENCE else text

    def answer(self) -> dict:
        """The JSON object of `digitd predict --json` (error and message null unless rejected)."""
        return {
            "file": self.file,
            "status": self.status,
            "digit": self.digit,
            "confidence": None if self.confidence is None else round(self.confidence, 6),
            "probabilities": self.probabilities,
            "error": self.error or None,
            "message": self.message or None,
            "digits": self.digits or None,
            "digit_count": self.digit_count,
            "parts": self.parts,
        }


@functools.lru_cache(maxsize=1024)
def iso_time(t: datetime) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-25T02:31:05.123Z (of a UTC time; the
    milliseconds cut, not rounded). isoformat, not strftime: 4x cheaper; and remembered,
    since each file's times are written twice (its CSV row and its batch JSON item) and a
    batch's processed_at once per file."""
    return t.isoformat(timespec="milliseconds")[:23] + "Z"


def parse_iso_time(text: str) -> datetime:
    """The inverse of iso_time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def printable_name(name: str) -> str:
    """A file name as valid UTF-8 text (bytes that are not UTF-8 become U+FFFD)."""
    return os.fsencode(name).decode("utf-8", "replace")


def spreadsheet_safe(value: str) -> str:
    """Prefix a value a spreadsheet would run as a formula with an apostrophe (OWASP)."""
    return "'" + value if value.startswith(_FORMULA_START) else value
