"""The outbox, a result's formats and the commit protocol on their own (real files in temp
folders): the torn-tail repair of results.csv, the CSV row and its inverse, filing, and a
delivery that an outbox error interrupts after its commit."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from digitd.claims import WorkFolder
from digitd.codes import Reason, Status
from digitd.commit import Delivery, deliver, plan_recovery
from digitd.config import OutputConfig
from digitd.outputs import Outbox, OutboxError
from digitd.result import CSV_COLUMNS, CSV_HEADER, Result, iso_time, parse_iso_time

T = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=timezone.utc)


@pytest.fixture
def folders(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    work = WorkFolder(inbox)
    work.open()
    outbox = Outbox(tmp_path / "outbox", OutputConfig(), work.aside)
    outbox.prepare()
    return inbox, work, outbox


def result(item, batch: str, status: Status = Status.OK) -> Result:
    if status == Status.REJECTED:
        return Result.rejected(Reason.NOT_PNG, "not a PNG file", id=item.id, file=item.name,
                               batch=batch, received_at=T, processed_at=T, model="m",
                               source=item.path)
    return Result(id=item.id, file=item.name, status=status, digit=7, confidence=0.93251,
                  sha256="ab" * 32, batch=batch, received_at=T, processed_at=T, model="m",
                  source=item.path)


def claim(inbox: Path, work: WorkFolder, *names: str):
    for name in names:
        (inbox / name).write_bytes(b"\x89PNG" + name.encode())
    return work.claim(list(names), dict.fromkeys(names, T))


# -- results.csv ------------------------------------------------------------------------------


@pytest.mark.parametrize("torn", ["id-3,x.png,ok,7,0.99", "x" * 200_000])
def test_a_torn_last_line_is_cut_back_to_the_last_whole_row(tmp_path, torn):
    """A kill -9 mid-write leaves a last line without its line end (here also one longer than
    the 64 KiB the repair reads at a time)."""
    outbox = Outbox(tmp_path, OutputConfig(), tmp_path / "aside")
    whole = CSV_HEADER + "id-1,a.png,ok,1,0.9900,ab,b,t,t,m,,\r\n"
    (tmp_path / "results.csv").write_bytes((whole + torn).encode())
    outbox.prepare()
    assert (tmp_path / "results.csv").read_bytes() == whole.encode()
    outbox.prepare()  # a whole file is left as it is
    assert (tmp_path / "results.csv").read_bytes() == whole.encode()


def test_a_torn_header_is_cut_off_and_another_header_refused(tmp_path):
    outbox = Outbox(tmp_path, OutputConfig(), tmp_path / "aside")
    (tmp_path / "results.csv").write_bytes(CSV_HEADER[:20].encode())
    outbox.prepare()
    assert (tmp_path / "results.csv").read_bytes() == b""
    (tmp_path / "results.csv").write_bytes(b"name,value\r\n")
    with pytest.raises(OutboxError, match="header"):
        outbox.prepare()


def test_a_row_reads_back_as_the_result_it_records(folders):
    inbox, work, outbox = folders
    batch = claim(inbox, work, "=cmd.png", "b.png")
    results = [result(batch.items[0], batch.id),
               result(batch.items[1], batch.id, Status.REJECTED)]
    outbox.append_csv(results)
    raw = (outbox.root / "results.csv").read_bytes().decode("utf-8")
    assert raw.startswith(CSV_HEADER)
    table = list(csv.reader(raw.splitlines()))
    assert all(len(row) == len(CSV_COLUMNS) for row in table)
    assert table[1][1] == "'=cmd.png"  # neutralised for spreadsheets
    rows = outbox.committed_rows()
    for item, original in zip(batch.items, results, strict=True):
        back = Result.from_row(rows[item.id], item, batch.id)
        assert back.row() == original.row()
        assert back.file == item.name and back.source == item.path
    assert Result.from_row(rows[batch.items[1].id], batch.items[1], batch.id).message == (
        Reason.NOT_PNG.message)


@pytest.mark.parametrize("t", [
    datetime(2026, 11, 25, 2, 31, 5, 123456, timezone.utc),
    datetime(2026, 1, 2, 3, 4, 5, 999999, timezone.utc),  # milliseconds cut, not rounded up
    datetime(2026, 12, 31, 23, 59, 59, 0, timezone.utc),
    datetime(1999, 7, 8, 0, 0, 0, 1000, timezone.utc),
])
def test_times_are_iso_8601_utc_with_milliseconds(t):
    text = iso_time(t)
    assert text == (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
                    f"{t.second:02d}.{t.microsecond // 1000:03d}Z")
    assert parse_iso_time(text) == t.replace(microsecond=t.microsecond // 1000 * 1000)


def test_the_status_rule_and_predicts_formats():
    probs = [0.0] * 10
    probs[3] = 0.7729
    probs[5] = 0.2271
    low = Result.recognised(probs, 0.8, file="strip.png")
    assert (low.status, low.digit, low.confidence) == (Status.LOW_CONFIDENCE, 3, 0.7729)
    assert Result.recognised(probs, 0.7729, file="x.png").status == Status.OK
    assert low.line() == "strip.png 3 0.7729 low_confidence"
    assert low.answer()["status"] == "low_confidence" and low.answer()["error"] is None
    bad = Result.rejected(Reason.EMPTY, "the file is empty", file="e.png")
    assert bad.line() == "e.png rejected empty: the file is empty"
    assert json.loads(json.dumps(bad.answer()))["error"] == "empty"


# -- filing and the commit protocol -----------------------------------------------------------


def test_filing_never_overwrites_and_can_be_redone(folders):
    inbox, work, outbox = folders
    (outbox.root / "processed" / "a.png").write_bytes(b"an earlier a.png")
    batch = claim(inbox, work, "a.png", "bad.png")
    ok = result(batch.items[0], batch.id)
    bad = result(batch.items[1], batch.id, Status.REJECTED)
    for _ in range(2):  # a restart redoes the filing: nothing changes the second time
        outbox.file_input(ok)
        outbox.file_input(bad)
    processed = sorted(p.name for p in (outbox.root / "processed").iterdir())
    assert processed == sorted(["a.png", f"a.{ok.id}.png"])
    error = json.loads((outbox.root / "failed" / "bad.png.error.json").read_bytes())
    assert error == {**bad.error_document(), "error": "not_png"}
    assert (outbox.root / "failed" / "bad.png").is_file()


def test_an_outbox_error_after_the_commit_resumes_without_committing_twice(folders):
    inbox, work, outbox = folders
    batch = claim(inbox, work, "a.png", "b.png")
    results = [result(item, batch.id) for item in batch.items]
    document = {"batch": batch.id, "items": [r.batch_item() for r in results]}
    delivery = Delivery(batch, results, document)
    processed = outbox.root / "processed"
    processed.rmdir()
    processed.write_bytes(b"")  # filing fails (not a folder) after the rows are written
    with pytest.raises(OSError):
        deliver(delivery, work, outbox)
    assert delivery.committed and len(outbox.committed_rows()) == 2
    assert batch.path.is_dir()  # still in hand
    processed.unlink()
    processed.mkdir()
    deliver(delivery, work, outbox)
    assert len(outbox.committed_rows()) == 2  # once
    assert sorted(p.name for p in processed.iterdir()) == ["a.png", "b.png"]
    assert not batch.path.exists()
    written = json.loads((outbox.root / "results" / f"{batch.id}.json").read_bytes())
    assert [i["id"] for i in written["items"]] == [r.id for r in results]


def test_recovery_redoes_uncommitted_rows_and_files_committed_ones(folders):
    inbox, work, outbox = folders
    uncommitted = claim(inbox, work, "u.png")
    partial = claim(inbox, work, "p1.png", "p2.png")
    done = claim(inbox, work, "d.png")
    outbox.append_csv([result(partial.items[0], partial.id), result(done.items[0], done.id)])
    outbox.write_batch_json(partial.id, {"items": [{"id": c.id} for c in partial.items]})
    work.close()  # the daemon dies with three batches in hand
    again = WorkFolder(inbox)
    again.open()
    redo, finish = plan_recovery(again, outbox)
    assert sorted(c.name for b in redo for c in b.items) == ["p2.png", "u.png"]
    assert {c.id for b in redo for c in b.items} == {uncommitted.items[0].id,
                                                      partial.items[1].id}
    assert all(d.committed for d in finish)
    assert sorted(r.file for d in finish for r in d.results) == ["d.png", "p1.png"]
    kept = json.loads((outbox.root / "results" / f"{partial.id}.json").read_bytes())
    assert [i["id"] for i in kept["items"]] == [partial.items[0].id]
    for delivery in finish:
        deliver(delivery, again, outbox)
    assert sorted(p.name for p in (outbox.root / "processed").iterdir()) == ["d.png", "p1.png"]
    assert len(outbox.committed_rows()) == 2  # filing committed rows writes none


def test_a_results_csv_with_the_old_header_keeps_its_columns(tmp_path):
    """An outbox from before numbers were read (no `digits`, `digit_count`): its header is
    accepted and its rows keep its twelve columns, so that the file stays one table."""
    from digitd.result import CSV_COLUMNS_V1, CSV_HEADER_V1

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    work = WorkFolder(inbox)
    work.open()
    old_row = "id-0,old.png,ok,3,0.9900,ab,b,t,t,m,,\r\n"
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "results.csv").write_bytes((CSV_HEADER_V1 + old_row).encode())
    outbox = Outbox(tmp_path / "outbox", OutputConfig(), work.aside)
    outbox.prepare()
    batch = claim(inbox, work, "a.png", "b.png")
    outbox.append_csv([result(batch.items[0], batch.id),
                       result(batch.items[1], batch.id, Status.REJECTED)])
    raw = (outbox.root / "results.csv").read_bytes().decode("utf-8")
    assert raw.startswith(CSV_HEADER_V1 + old_row)
    table = list(csv.reader(raw.splitlines()))
    assert len(table) == 4 and all(len(row) == len(CSV_COLUMNS_V1) for row in table)
    rows = outbox.committed_rows()
    back = Result.from_row(rows[batch.items[0].id], batch.items[0], batch.id)
    assert back.digit == 7 and back.digits == "7"


def test_rows_of_numbers_and_digits(folders):
    """`digits` and `digit_count` are appended: a number's string with `digit` empty; a
    digit's row repeats it; a rejected row leaves both empty."""
    inbox, work, outbox = folders
    batch = claim(inbox, work, "n.png", "d.png", "r.png")
    number = result(batch.items[0], batch.id)
    number.digit, number.digits = None, "04071"
    results = [number, result(batch.items[1], batch.id),
               result(batch.items[2], batch.id, Status.REJECTED)]
    outbox.append_csv(results)
    assert CSV_COLUMNS[-2:] == ("digits", "digit_count")
    rows = outbox.committed_rows()
    got = [(rows[i.id]["digit"], rows[i.id]["digits"], rows[i.id]["digit_count"])
           for i in batch.items]
    assert got == [("", "04071", "5"), ("7", "7", "1"), ("", "", "")]
    back = Result.from_row(rows[batch.items[0].id], batch.items[0], batch.id)
    assert back.row() == number.row()
