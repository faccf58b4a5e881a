"""The outbox: results.csv (the commit record), one JSON document per batch, previews, and
the filing of inputs into processed/ or failed/.

Each write here is safe on its own (atomic, or idempotent, or cut back on failure); the
order in which a batch's writes are made, which is what makes a crash lose nothing and count
nothing twice, is digitd.commit's. What goes into each file is digitd.result's.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
from pathlib import Path

import structlog

from digitd.codes import Status
from digitd.config import OutputConfig
from digitd.fsutil import (
    move_noreplace,
    rename_noreplace,
    write_all,
    write_atomic,
    write_in_place,
)
from digitd.result import CSV_COLUMNS, CSV_COLUMNS_V1, CSV_HEADER, CSV_HEADER_V1, Result
from digitd.review.index import audit_sampled

FOLDERS = ("results", "previews", "review", "processed", "failed")
REVIEW_INPUTS = "review/inputs"  # with inputs: delete, the inputs under review are kept here
log = structlog.get_logger("digitd")


class OutboxError(Exception):
    """The outbox cannot be used as it is (e.g. results.csv has another header)."""


class Outbox:
    """Writes one batch's outputs in the crash-safe order described above."""

    def __init__(self, root: Path, config: OutputConfig, aside: Path,
                 audit_share: float = 0.0) -> None:
        self.root = root
        self.config = config
        self.aside = aside  # where an entry that cannot be filed across filesystems is put
        self.audit_share = audit_share  # review.audit_share: `ok` results offered for audit
        self.csv_path = root / "results.csv"
        self.columns = len(CSV_COLUMNS)  # the columns of each row written

    def prepare(self) -> None:
        """Create the folders; repair a torn last line; refuse a CSV with another header.

        A results.csv with the header from before numbers were read (CSV_HEADER_V1, without
        `digits` and `digit_count`) is kept as it is and gets rows of those columns only, so
        that it stays one table (a number's string is then in the batch JSON only); move it
        away to get the new columns.
        """
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        if self.config.inputs == "delete" and self.config.review:
            (self.root / REVIEW_INPUTS).mkdir(exist_ok=True)
        if prepare_csv(self.csv_path, CSV_HEADER, older=(CSV_HEADER_V1,)) == CSV_HEADER_V1:
            self.columns = len(CSV_COLUMNS_V1)
            log.warning("results_csv_old_header", path=str(self.csv_path),
                        hint="rows keep its columns: no digits, digit_count; a number's "
                        "string is in the batch JSON; move it away for the new columns")

    def committed_rows(self) -> dict[str, dict[str, str]]:
        """Rows already in results.csv by id: their batches need filing, not recognising."""
        try:
            with open(self.csv_path, encoding="utf-8", newline="") as f:
                return {row["id"]: row for row in csv.DictReader(f)}
        except FileNotFoundError:
            return {}

    def write_preview(self, result: Result, png: bytes) -> None:
        """outbox/previews/<id>.png, and a copy in review/ for low-confidence results.

        Written in place (no temporary name and rename: a third of a preview's cost): the
        CSV row that names a preview is committed only after it is written.
        """
        root = os.fspath(self.root)  # str paths: pathlib's joins were a tenth of filing's CPU
        write_in_place(f"{root}/{result.preview}", png)
        if self.config.review and result.status == Status.LOW_CONFIDENCE:
            write_in_place(f"{root}/review/{result.id}.png", png)

    def write_batch_json(self, batch_id: str, document: dict) -> None:
        """outbox/results/<batch>.json, replaced whole if the batch is redone after a crash."""
        # One line: json's C encoder is only used without indent (3x faster for a batch).
        data = json.dumps(document, ensure_ascii=False).encode("utf-8")
        write_atomic(self.root / "results" / f"{batch_id}.json", data)

    def trim_batch_json(self, batch_id: str, keep: set[str]) -> None:
        """Keep only the items with these ids in results/<batch>.json (the others, cut off
        by a crash before their rows were written, are redone in another batch)."""
        path = self.root / "results" / f"{batch_id}.json"
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        document["items"] = [i for i in document["items"] if i["id"] in keep]
        self.write_batch_json(batch_id, document)

    def append_csv(self, results: list[Result]) -> None:
        """Append the batch's rows in one write and fsync: the batch's commit.

        Under an exclusive flock (several daemons may share the outbox); the header is written
        with the first rows. A write that fails part-way is cut back off, and free space is
        checked first, so a reader never sees a partial line. A kill -9 can still cut the
        write between pages: the restart then cuts the torn line off and treats each row
        on its own (rows present are committed, the rest are redone).
        """
        append_rows(self.csv_path, CSV_HEADER, [r.row()[: self.columns] for r in results])

    def file_input(self, result: Result) -> None:
        """Move the input to processed/ (or delete it), or to failed/ beside <name>.error.json.

        Never overwrites: a taken name gets the input's id as a suffix. Idempotent, so a
        restart can redo it after a crash.
        """
        if self._moved_as_named(result):
            return
        if not os.path.lexists(result.source):
            return  # filed before a crash
        if result.status == Status.REJECTED:
            name = self._free_name("failed", result)
            error = result.error_document()
            error_json = self.root / "failed" / f"{name}.error.json"
            data = json.dumps(error, ensure_ascii=False, indent=1).encode("utf-8")
            write_atomic(error_json, data)
            kept_at = _move_entry(result.source, self.root / "failed" / name, self.aside)
            if kept_at != str(self.root / "failed" / name):
                error["kept_at"] = kept_at  # set aside in the inbox, or nothing to keep
                data = json.dumps(error, ensure_ascii=False, indent=1).encode("utf-8")
                write_atomic(error_json, data)
        elif self.config.inputs == "delete" and self._under_review(result):
            # kept for the review station, which copies it to corrections/ with a verdict
            move_noreplace(result.source, self.root / REVIEW_INPUTS / f"{result.id}.png")
        elif self.config.inputs == "delete":
            os.unlink(result.source)
        else:
            name = self._free_name("processed", result)
            move_noreplace(result.source, self.root / "processed" / name)

    def _moved_as_named(self, result: Result) -> bool:
        """The common case in one system call: a recognised input moved to processed/ under
        its own name (the name free, one filesystem). False when file_input must look
        further: another outcome or setting, a name taken, another filesystem, or the input
        gone (filed before a crash)."""
        if result.status == Status.REJECTED or self.config.inputs == "delete":
            return False
        try:
            rename_noreplace(result.source, f"{os.fspath(self.root)}/processed/{result.file}")
        except OSError:
            return False
        return True

    def _under_review(self, result: Result) -> bool:
        """Offered on the review page: low confidence, or `ok` and in the audit sample. Not a
        number: the page judges single digits only (a number's correction would be a string,
        which it does not take yet), so a number's input is deleted as the others are."""
        if not self.config.review or result.digit is None:
            return False
        return result.status == Status.LOW_CONFIDENCE or (
            result.status == Status.OK and audit_sampled(result.id, self.audit_share))

    def _free_name(self, folder: str, result: Result) -> str:
        """The input's name if free in `folder`, else <stem>.<id><suffix>. In failed/, a
        name whose error.json already carries this id is this input's own (a redo)."""
        name = result.file
        for candidate in (name, _with_id(name, result.id)):
            if folder == "failed" and len(os.fsencode(candidate + ".error.json")) > 255:
                continue  # too long for its error.json beside it: shortened with the id
            path = self.root / folder / candidate
            if folder == "failed":
                error_json = path.with_name(candidate + ".error.json")
                if os.path.lexists(error_json):
                    if _error_json_id(error_json) == result.id and not os.path.lexists(path):
                        return candidate
                    continue
            if not os.path.lexists(path):
                return candidate
        return _with_id(name, result.id + "-" + os.urandom(3).hex())


def prepare_csv(path: Path, header: str, older: tuple[str, ...] = ()) -> str:
    """Create an append-only CSV if missing; cut a torn last line (a crash mid-write) off;
    refuse one whose header is neither `header` nor one of the `older` ones (OutboxError).
    Returns the header the file has (`header` for a new file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            _truncate_torn_tail(fd, size)
        head = os.pread(fd, len(header), 0).decode("utf-8", "replace")
        for old in older:
            if head.startswith(old):
                return old
        if head and head != header:
            raise OutboxError(
                f"{path}: its header is not digitd's ({header.strip()}); "
                "move it away or choose another outbox"
            )
    finally:
        os.close(fd)
    return header


def append_rows(path: Path, header: str, rows: list[list[str]]) -> None:
    """Append `rows` to an append-only CSV in one write and fsync (results.csv's commit).

    RFC 4180 with CRLF line ends, UTF-8. Under an exclusive flock (several processes may
    append); the header is written with the first rows. A write that fails part-way is cut
    back off, and free space is checked first, so a reader never sees a partial line. A
    kill -9 can still cut the write between pages: prepare_csv cuts the torn line off at
    the next start.
    """
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size == 0:
            data = header.encode() + data
        room = os.statvfs(path)
        if room.f_bavail * room.f_frsize < len(data) + 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        try:
            write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _with_id(name: str, suffix: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    # Keep the result within NAME_MAX (255 bytes) by shortening the stem.
    room = 255 - len(os.fsencode(f".{suffix}.{ext}.error.json"))
    stem = os.fsencode(stem)[: max(room, 1)].decode("utf-8", "ignore") or "input"
    return f"{stem}.{suffix}.{ext}" if ext else f"{stem}.{suffix}"


def _error_json_id(path: Path) -> str | None:
    try:
        return json.loads(path.read_bytes()).get("id")
    except (OSError, ValueError, AttributeError):
        return None


def _move_entry(source: Path, target: Path, aside: Path) -> str:
    """File a rejected entry, whatever it is, and say where it went.

    On one filesystem everything is renamed, never opened. Across filesystems a regular file
    is copied; a link is recreated (never followed); a FIFO or socket, which holds no data,
    is removed; what cannot be copied (a folder, a file the service may not read) is set
    aside in `aside` (the work folder's rejected/, on the inbox's filesystem) rather than
    retried forever.
    """
    try:
        rename_noreplace(source, target)
        return str(target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        os.unlink(source)
        return str(target)
    if os.path.isfile(source):
        try:
            move_noreplace(source, target)
            return str(target)
        except PermissionError as exc:
            if os.fspath(exc.filename or "") != os.fspath(source):
                raise  # the outbox refused: an outbox error, retried
    elif not os.path.isdir(source):
        os.unlink(source)
        return ""
    aside.mkdir(exist_ok=True)
    rename_noreplace(source, aside / target.name)
    return str(aside / target.name)


def _truncate_torn_tail(fd: int, size: int) -> None:
    """Cut a last line without its line end (a crash mid-write) back to the previous one."""
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)
