"""A reviewer's verdict: checked, then written to outbox/corrections.csv.

corrections.csv has the guarantees of results.csv (it is appended by the same code in
digitd.outputs: header once, RFC 4180, UTF-8, a file lock, fsync, nothing a spreadsheet would
run). The input's bytes are copied to outbox/corrections/<id>.png before the row is written,
so a row never names a missing image and training never depends on processed/.

The last row for an id wins; `undone` withdraws the verdict before it (the `u` key).

A label is a string of digits: one digit for a single-digit result, the whole number (as
many digits as there really are) for a number; `predicted` is the string the model read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from digitd.codes import Rejected
from digitd.fsutil import write_atomic
from digitd.intake import read_input_file
from digitd.outputs import REVIEW_INPUTS, append_rows, prepare_csv
from digitd.result import iso_time, printable_name, spreadsheet_safe
from digitd.review.index import CORRECTIONS_CSV, ID_PATTERN, Item

VERDICTS = ("confirmed", "corrected", "not_a_digit")  # what POST /api/verdict accepts
UNDONE = "undone"  # written by POST /api/undo
COLUMNS = (
    "id", "file", "sha256", "model", "predicted", "confidence", "label", "verdict",
    "reviewed_at", "reviewer",
)  # fmt: skip
HEADER = ",".join(COLUMNS) + "\r\n"
IMAGES = "corrections"  # outbox/corrections/<id>.png
MAX_REVIEWER = 64
MAX_DIGITS = 64  # the longest number label taken


class BadVerdict(ValueError):
    """A request that cannot be a verdict (HTTP 400); nothing is written."""


@dataclass(frozen=True)
class VerdictRequest:
    id: str
    verdict: str  # one of VERDICTS, or UNDONE
    label: str | None  # the true digit or number, as digits; None for not_a_digit and undone
    reviewer: str | None  # None: the server's --reviewer


def parse_verdict(body: object, undo: bool = False) -> VerdictRequest:
    """{"id", "verdict", "label"} (optionally "reviewer") -> a VerdictRequest, or BadVerdict.

    confirmed: the label, if given, must be what was predicted (checked against the item by
    check_against); corrected: the label is required: a string of digits (one for a digit
    result, the whole number for a number result), or a digit 0-9 as a JSON number;
    not_a_digit: no label.
    """
    if not isinstance(body, dict):
        raise BadVerdict("the body must be a JSON object")
    item_id = body.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise BadVerdict('"id" must be a result id (a string)')
    verdict = UNDONE if undo else body.get("verdict")
    if verdict not in (*VERDICTS, UNDONE) or (verdict == UNDONE and not undo):
        raise BadVerdict(f'"verdict" must be one of {", ".join(VERDICTS)}')
    label = _label(body.get("label"))
    if verdict == "corrected" and label is None:
        raise BadVerdict('"corrected" needs a "label": the digit (or number) it really is')
    if verdict in ("not_a_digit", UNDONE) and label is not None:
        raise BadVerdict(f'"{verdict}" takes no "label"')
    reviewer = body.get("reviewer")
    if reviewer is not None:
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise BadVerdict('"reviewer" must be a non-empty name')
        reviewer = _clean_reviewer(reviewer)
    return VerdictRequest(item_id, verdict, label, reviewer)


def _label(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadVerdict('"label" must be a digit 0-9, or a number as a string of digits')
    if isinstance(value, int) and 0 <= value <= 9:
        return str(value)
    if (isinstance(value, str) and 0 < len(value) <= MAX_DIGITS and value.isascii()
            and value.isdigit()):
        return value
    raise BadVerdict('"label" must be a digit 0-9, or a number as a string of digits')


def _clean_reviewer(name: str) -> str:
    name = "".join(c for c in name.strip() if c.isprintable())[:MAX_REVIEWER]
    if not name:
        raise BadVerdict('"reviewer" must be a printable name')
    return name


def check_against(request: VerdictRequest, item: Item) -> VerdictRequest:
    """Settle the label against the prediction: `confirmed` takes the predicted string (a
    different label is a contradiction: 400), and `corrected` to the predicted string is a
    confirmation, recorded as one. A result read as one digit may be corrected to a string
    of several: the image holds a number the daemon took for one digit (the number models
    learn from it: digitd.finetune_numbers)."""
    label = None if request.label is None else str(request.label)
    if request.verdict == "confirmed":
        if label is not None and label != item.digits:
            raise BadVerdict(f'"confirmed" means it is {item.digits}; '
                             f'use "corrected" for {label}')
        return VerdictRequest(request.id, "confirmed", item.digits, request.reviewer)
    if request.verdict == "corrected" and label == item.digits:
        return VerdictRequest(request.id, "confirmed", item.digits, request.reviewer)
    return VerdictRequest(request.id, request.verdict, label, request.reviewer)


class Corrections:
    """outbox/corrections.csv and outbox/corrections/<id>.png."""

    def __init__(self, outbox: Path, reviewer: str, max_pixels: int) -> None:
        self.outbox = outbox
        self.max_pixels = max_pixels  # the daemon's limit: no input it recognised is larger
        self.path = outbox / CORRECTIONS_CSV
        self.images = outbox / IMAGES
        self.reviewer = _clean_reviewer(reviewer) if reviewer.strip() else "reviewer"

    def prepare(self) -> None:
        """Create corrections/; repair a torn last line; refuse a CSV with another header."""
        self.images.mkdir(parents=True, exist_ok=True)
        prepare_csv(self.path, HEADER)

    def record(self, request: VerdictRequest, item: Item, name: str) -> dict[str, str]:
        """Copy the input (first verdict only) and append the row; return the row as a dict
        with "image": the copy's path relative to the outbox, or "" if the input is gone.
        `name` is the input's printable name (from the batch JSON)."""
        image = ""
        if request.verdict != UNDONE:
            image = self.copy_input(item, name)
        row = [
            item.id,
            spreadsheet_safe(printable_name(name)),
            item.sha256,
            item.model,
            item.digits,
            f"{item.confidence:.4f}",
            "" if request.label is None else str(request.label),
            request.verdict,
            iso_time(datetime.now(timezone.utc)),
            spreadsheet_safe(request.reviewer or self.reviewer),
        ]
        append_rows(self.path, HEADER, [row])
        return {**dict(zip(COLUMNS, row, strict=True)), "image": image}

    def copy_input(self, item: Item, name: str) -> str:
        """outbox/corrections/<id>.png from the filed input (its SHA-256 checked)."""
        target = self.images / f"{item.id}.png"
        relative = f"{IMAGES}/{item.id}.png"
        if target.is_file():
            return relative
        data = self.find_input(item, name)
        if data is None:
            return ""
        write_atomic(target, data, durable=True)
        kept = self.outbox / REVIEW_INPUTS / f"{item.id}.png"
        if kept.is_file():  # delete mode: the daemon kept it for this; corrections/ has it now
            kept.unlink()
        return relative

    def find_input(self, item: Item, name: str) -> bytes | None:
        """The input's bytes, checked by SHA-256: kept in review/inputs/ (outputs.inputs:
        delete), or in processed/ under the names the daemon gives it (its own name, or
        <stem>.<id>.<ext> when that was taken)."""
        import hashlib

        if not ID_PATTERN.fullmatch(item.id):
            return None
        processed = self.outbox / "processed"
        candidates = [self.outbox / REVIEW_INPUTS / f"{item.id}.png"]
        if name and "/" not in name and name not in (".", ".."):
            candidates.append(processed / name)
        try:
            candidates += sorted(processed.glob(f"*.{item.id}*"))
        except OSError:
            pass
        for path in candidates:
            try:
                data = read_input_file(path, self.max_pixels)
            except Rejected:
                continue
            if hashlib.sha256(data).hexdigest() == item.sha256:
                return data
        return None
