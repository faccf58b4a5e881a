"""`digitd review`: its JSON API against a real outbox written by the real daemon, served by
the real command in a subprocess; and the pure parts (audit sample, verdict checks, CSV tail)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from digitd.review.index import CsvTail, audit_sampled
from digitd.review.leases import Leases
from digitd.review.verdicts import COLUMNS, BadVerdict, parse_verdict
from reviewproc import ReviewServer, copy_outbox, make_number_outbox, make_outbox, read_csv


@pytest.fixture(scope="module")
def written_outbox(tmp_path_factory) -> Path:
    return make_outbox(tmp_path_factory.mktemp("daemon"))


@pytest.fixture
def outbox(written_outbox, tmp_path) -> Path:
    return copy_outbox(written_outbox, tmp_path / "outbox")


@pytest.fixture
def server(outbox):
    server = ReviewServer(outbox).wait_ready()
    yield server
    server.close()


def low_rows(outbox: Path) -> list[dict[str, str]]:
    """The unsure single digits (numbers, `digit` empty, are tested on their own outbox)."""
    return [r for r in read_csv(outbox / "results.csv")
            if r["status"] == "low_confidence" and r["digit"]]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the queue --------------------------------------------------------------------------------


def test_queue_is_the_unsure_results_least_confident_first(server, outbox):
    low = low_rows(outbox)
    assert len(low) >= 6, "the sample should leave the model unsure of several digits"
    answer = server.queue(limit=500)
    items = answer["items"]
    assert {i["id"] for i in items} == {r["id"] for r in low}
    confidences = [i["confidence"] for i in items]
    assert confidences == sorted(confidences)
    assert answer["counts"]["queue"] == len(low)
    for item in items:
        assert set(item) >= {"id", "file", "digit", "confidence", "top", "preview"}
        assert len(item["top"]) == 3
        assert item["top"][0][0] == item["digit"]
        assert abs(item["top"][0][1] - item["confidence"]) < 1e-3
        assert [p for _, p in item["top"]] == sorted((p for _, p in item["top"]), reverse=True)
        status, png = server.request("GET", item["preview"])
        assert status == 200 and png == (outbox / "previews" / f"{item['id']}.png").read_bytes()


def test_view_by_predicted_digit(server, outbox):
    low = low_rows(outbox)
    digit = low[0]["digit"]
    items = server.queue(digit=digit)["items"]
    assert items and {i["id"] for i in items} == {r["id"] for r in low if r["digit"] == digit}
    assert server.request("GET", "/api/queue?digit=12")[0] == 400
    assert server.request("GET", "/api/queue?kind=everything")[0] == 400


def test_audit_sample_of_ok_results(written_outbox, tmp_path):
    outbox = copy_outbox(written_outbox, tmp_path / "outbox")
    config = tmp_path / "config.yaml"
    config.write_text("review:\n  audit_share: 1.0\n")
    server = ReviewServer(outbox, config=config).wait_ready()
    try:
        ok = [r for r in read_csv(outbox / "results.csv") if r["status"] == "ok"]
        items = server.queue(kind="audit", limit=500)["items"]
        assert {i["id"] for i in items} == {r["id"] for r in ok}
        assert all(i["kind"] == "audit" for i in items)
        status, answer = server.verdict(items[0]["id"], "corrected", (items[0]["digit"] + 1) % 10)
        assert status == 200
        status, answer = server.verdict(items[1]["id"], "confirmed")
        counts = answer["counts"]
        assert (counts["audited"], counts["audit_wrong"], counts["audit_error_rate"]) == (2, 1, 0.5)
    finally:
        server.close()


def test_audit_sample_is_the_share_asked_and_stable():
    ids = [f"20261130T120000{i:03d}Z-{i:012x}" for i in range(20000)]
    picked = [i for i in ids if audit_sampled(i, 0.01)]
    assert 140 < len(picked) < 260
    assert picked == [i for i in ids if audit_sampled(i, 0.01)]
    assert not any(audit_sampled(i, 0.0) for i in ids[:100])
    assert all(audit_sampled(i, 1.0) for i in ids[:100])


def test_sessions_are_given_different_items(server, outbox):
    first = server.queue(limit=3, session="a")["items"]
    second = server.queue(limit=3, session="b")["items"]
    assert len(first) == len(second) == 3
    assert not {i["id"] for i in first} & {i["id"] for i in second}
    again = server.queue(limit=3, session="a")["items"]
    assert [i["id"] for i in again] == [i["id"] for i in first]


# -- verdicts -----------------------------------------------------------------------------------


def test_verdicts_write_corrections_and_copy_the_input(server, outbox):
    results_before = sha(outbox / "results.csv")
    items = server.queue()["items"]
    a, b, c = items[:3]
    wrong = (a["digit"] + 1) % 10
    assert server.verdict(a["id"], "corrected", wrong)[0] == 200
    assert server.verdict(b["id"], "confirmed")[0] == 200
    assert server.verdict(c["id"], "not_a_digit")[0] == 200
    rows = read_csv(outbox / "corrections.csv")
    assert [(r["id"], r["verdict"], r["label"]) for r in rows] == [
        (a["id"], "corrected", str(wrong)), (b["id"], "confirmed", str(b["digit"])),
        (c["id"], "not_a_digit", "")]
    raw = (outbox / "corrections.csv").read_bytes()
    assert raw.startswith((",".join(COLUMNS) + "\r\n").encode()) and raw.endswith(b"\r\n")
    assert raw.count(b"id,file,sha256") == 1
    by_id = {r["id"]: r for r in read_csv(outbox / "results.csv")}
    for row in rows:
        result = by_id[row["id"]]
        assert (row["sha256"], row["model"], row["predicted"], row["confidence"]) == (
            result["sha256"], result["model"], result["digit"], result["confidence"])
        assert row["reviewed_at"].endswith("Z") and row["reviewer"]
        copy = outbox / "corrections" / f"{row['id']}.png"
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == result["sha256"]
    assert server.queue()["counts"]["queue"] == len(items) - 3
    assert a["id"] not in {i["id"] for i in server.queue(limit=500)["items"]}
    assert sha(outbox / "results.csv") == results_before


def test_a_second_verdict_appends_and_the_last_wins(server, outbox):
    item = server.queue()["items"][0]
    assert server.verdict(item["id"], "not_a_digit")[0] == 200
    status, answer = server.verdict(item["id"], "corrected", (item["digit"] + 2) % 10)
    assert status == 200 and answer["row"]["verdict"] == "corrected"
    rows = read_csv(outbox / "corrections.csv")
    assert [r["verdict"] for r in rows] == ["not_a_digit", "corrected"]
    status, answer = server.request("POST", "/api/undo", {"id": item["id"]})
    assert status == 200 and answer["row"]["verdict"] == "undone"
    assert item["id"] in {i["id"] for i in server.queue(limit=500)["items"]}
    assert server.request("POST", "/api/undo", {"id": item["id"]})[0] == 409  # nothing to undo
    assert len(read_csv(outbox / "corrections.csv")) == 3


def test_a_correction_to_the_predicted_digit_is_a_confirmation(server, outbox):
    item = server.queue()["items"][0]
    status, answer = server.verdict(item["id"], "corrected", str(item["digit"]))
    assert status == 200 and answer["row"]["verdict"] == "confirmed"


BAD_BODIES = [
    ({"verdict": "corrected", "label": 3}, "no id"),
    ({"id": 7, "verdict": "corrected", "label": 3}, "id not a string"),
    ({"id": "{id}", "verdict": "wrong", "label": 3}, "unknown verdict"),
    ({"id": "{id}", "verdict": "undone"}, "undone is not a verdict"),
    ({"id": "{id}", "verdict": "corrected"}, "correction without a label"),
    ({"id": "{id}", "verdict": "corrected", "label": 10}, "label 10"),
    ({"id": "{id}", "verdict": "corrected", "label": -1}, "label -1"),
    ({"id": "{id}", "verdict": "corrected", "label": "a"}, "label a"),
    ({"id": "{id}", "verdict": "confirmed", "label": "12"}, "confirmed as a number"),
    ({"id": "{id}", "verdict": "corrected", "label": 3.5}, "label 3.5"),
    ({"id": "{id}", "verdict": "corrected", "label": True}, "label true"),
    ({"id": "{id}", "verdict": "not_a_digit", "label": 3}, "not a digit with a label"),
    ({"id": "{id}", "verdict": "confirmed", "label": "{other}"}, "confirmed, another digit"),
    ({"id": "{id}", "verdict": "confirmed", "reviewer": ""}, "empty reviewer"),
]


def test_bad_requests_are_400_and_write_nothing(server, outbox):
    item = server.queue()["items"][0]
    for body, why in BAD_BODIES:
        body = {k: (v.format(id=item["id"], other=(item["digit"] + 1) % 10)
                    if isinstance(v, str) else v) for k, v in body.items()}
        if body.get("label") == str((item["digit"] + 1) % 10) and body["verdict"] == "confirmed":
            body["label"] = int(body["label"])
        status, answer = server.request("POST", "/api/verdict", body)
        assert status == 400, (why, answer)
        assert "error" in answer
    for raw in (b"not json", b"[1, 2]", b"", b'"text"'):
        assert server.request("POST", "/api/verdict", raw)[0] == 400
    assert server.request("POST", "/api/verdict", b"x" * 100_000)[0] in (400, 413)
    assert (outbox / "corrections.csv").stat().st_size == 0
    assert not any((outbox / "corrections").iterdir())


def test_unknown_ids_are_404_and_write_nothing(server, outbox):
    ok = next(r for r in read_csv(outbox / "results.csv")
              if r["status"] == "ok" and not audit_sampled(r["id"], 0.01))
    rejected_or_missing = ["20991231T000000000Z-000000000000", ok["id"], "../results",
                           "..", "results.csv", "x" * 200, "a/b"]
    for item_id in rejected_or_missing:
        status, answer = server.verdict(item_id, "corrected", 3)
        assert status == 404, (item_id, answer)
        assert server.request("POST", "/api/undo", {"id": item_id})[0] == 404
    assert (outbox / "corrections.csv").stat().st_size == 0


def test_writes_need_the_page_token_and_this_host(server, outbox):
    item = server.queue()["items"][0]
    body = {"id": item["id"], "verdict": "confirmed"}
    for token in ("", "wrong", server.token[:-1]):
        assert server.request("POST", "/api/verdict", body, token=token)[0] == 403
        assert server.request("POST", "/api/undo", {"id": item["id"]}, token=token)[0] == 403
    # DNS rebinding: another site's name resolving to 127.0.0.1 is refused, page and API.
    for path in ("/", "/api/queue"):
        assert server.request("GET", path, headers={"Host": "evil.example"})[0] == 400
    assert server.request("POST", "/api/verdict", body,
                          headers={"Host": f"evil.example:{server.port}"})[0] == 400
    assert (outbox / "corrections.csv").stat().st_size == 0
    assert server.request("GET", "/api/verdict")[0] == 405
    with urllib.request.urlopen(server.url + "/") as response:  # the page may not be framed
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"


def test_files_are_served_by_id_only(server, outbox):
    item = server.queue()["items"][0]
    ok = next(r for r in read_csv(outbox / "results.csv")
              if r["status"] == "ok" and not audit_sampled(r["id"], 0.01))
    (outbox / "previews" / "secret.png").write_bytes(b"\x89PNG secret")
    for path in ("/preview/..%2Fresults.csv", "/preview/%2E%2E%2Fresults.csv",
                 "/preview/../results.csv", "/preview/secret.png",
                 f"/preview/{ok['id']}.png", f"/preview/{item['id']}",
                 f"/preview/{item['id']}.png%2F..%2F..%2Fresults.csv",
                 "/static/../results.csv", "/static/..%2F..%2Fapp.py", "/static/%2e%2e/app.py",
                 "/results.csv", "/processed/", "/corrections.csv", "/input/..%2Fresults.csv",
                 "/input/secret.png"):
        status, answer = server.request("GET", path)
        assert status == 404, (path, status)
        assert "id,file" not in str(answer)
    status, png = server.request("GET", f"/input/{item['id']}.png")
    assert status == 200 and hashlib.sha256(png).hexdigest() == next(
        r["sha256"] for r in read_csv(outbox / "results.csv") if r["id"] == item["id"])
    assert server.request("GET", f"/input/{ok['id']}.png")[0] == 404
    # a preview replaced by a link to a file elsewhere is not followed
    target = outbox / "previews" / f"{item['id']}.png"
    target.unlink()
    os.symlink(outbox / "results.csv", target)
    assert server.request("GET", item["preview"])[0] == 404


def test_two_reviewers_at_once(written_outbox, tmp_path):
    """Two review processes on one outbox, each with several reviewers posting at once:
    every verdict is one whole row, the header is written once, the last row wins."""
    outbox = copy_outbox(written_outbox, tmp_path / "outbox")
    servers = [ReviewServer(outbox, "--reviewer", name).wait_ready() for name in ("ann", "bo")]
    try:
        items = servers[0].queue(limit=500)["items"]
        answers = []

        def judge(server: ReviewServer, part: list[dict]) -> None:
            for item in part:
                for verdict in ("not_a_digit", "confirmed"):
                    answers.append(server.verdict(item["id"], verdict)[0])

        threads = [threading.Thread(target=judge, args=(servers[i % 2], items[i::4]))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * (2 * len(items))
        rows = read_csv(outbox / "corrections.csv")
        assert len(rows) == 2 * len(items)
        assert (outbox / "corrections.csv").read_bytes().count(b"\r\n") == len(rows) + 1
        last = {}
        for row in rows:
            last[row["id"]] = row
        assert {r["verdict"] for r in last.values()} == {"confirmed"}
        assert {r["reviewer"] for r in rows} == {"ann", "bo"}
        for server in servers:  # each process sees the other's verdicts
            assert server.queue()["items"] == []
            assert server.queue()["counts"]["reviewed"] == len(items)
    finally:
        for server in servers:
            server.close()


def test_refuses_a_folder_that_is_not_an_outbox(tmp_path):
    server = ReviewServer(tmp_path)
    assert server.proc.wait(timeout=30) == 2
    assert "results.csv" in server.log()
    server.close()


# -- the pure parts ------------------------------------------------------------------------------


def test_parse_verdict():
    assert parse_verdict({"id": "a", "verdict": "corrected", "label": "7"}).label == "7"
    assert parse_verdict({"id": "a", "verdict": "corrected", "label": 7}).label == "7"
    assert parse_verdict({"id": "a", "verdict": "corrected", "label": "0071"}).label == "0071"
    for bad in (10, -1, "7 ", "٣", "1e3", "9" * 65):
        with pytest.raises(BadVerdict):
            parse_verdict({"id": "a", "verdict": "corrected", "label": bad})
    assert parse_verdict({"id": "a", "verdict": "not_a_digit", "label": None}).label is None
    assert parse_verdict({"id": "a", "verdict": "confirmed"}).label is None
    assert parse_verdict({"id": "a"}, undo=True).verdict == "undone"
    with pytest.raises(BadVerdict):
        parse_verdict({"id": "a", "verdict": "corrected", "label": 7.0})
    with pytest.raises(BadVerdict):
        parse_verdict({"id": "a", "verdict": "confirmed", "reviewer": "\x00\x01"})


def test_csv_tail_reads_whole_rows_only(tmp_path):
    path = tmp_path / "x.csv"
    tail = CsvTail(path)
    assert tail.read() == (False, [])
    path.write_bytes(b'id,file\r\na,"x\r\ny"\r\nb,tor')
    assert tail.read() == (False, [{"id": "a", "file": "x\r\ny"}])
    with open(path, "ab") as f:
        f.write(b"n\r\n")
    assert tail.read() == (False, [{"id": "b", "file": "torn"}])
    path.write_bytes(b"id,file\r\nc,z\r\n")  # replaced: read again from the top
    assert tail.read() == (True, [{"id": "c", "file": "z"}])


def test_with_inputs_deleted_the_inputs_under_review_are_kept_for_it(tmp_path):
    """outputs.inputs: delete empties processed/; the daemon keeps the inputs under review in
    review/inputs/ instead, and a verdict moves them on to corrections/."""
    outbox = make_outbox(tmp_path / "daemon", n=12, outputs={"inputs": "delete"},
                         review={"audit_share": 0.5})
    assert not any((outbox / "processed").iterdir())
    rows = read_csv(outbox / "results.csv")
    kept = {p.stem for p in (outbox / "review" / "inputs").iterdir()}
    wanted = {r["id"] for r in rows if r["status"] == "low_confidence"
              or (r["status"] == "ok" and audit_sampled(r["id"], 0.5))}
    assert kept == wanted and kept
    config = tmp_path / "review.yaml"  # the review station samples the audit as the daemon did
    config.write_text("review:\n  audit_share: 0.5\n")
    server = ReviewServer(outbox, config=config).wait_ready()
    try:
        item_id = sorted(kept)[0]
        kind = next(r for r in rows if r["id"] == item_id)["status"]
        item = next(i for i in server.queue(kind="audit" if kind == "ok" else kind,
                                            limit=500)["items"] if i["id"] == item_id)
        assert server.verdict(item_id, "corrected", (item["digit"] + 1) % 10)[0] == 200
    finally:
        server.close()
    copy = outbox / "corrections" / f"{item_id}.png"
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == next(
        r["sha256"] for r in rows if r["id"] == item_id)
    assert not (outbox / "review" / "inputs" / f"{item_id}.png").exists()


def test_two_review_processes_lease_different_items(written_outbox, tmp_path):
    """Two `digitd review` processes on one outbox: what one shows a reviewer is kept from
    the other's reviewers (the lease file), a verdict is still taken from anybody, and an
    undone verdict hands the item back."""
    outbox = copy_outbox(written_outbox, tmp_path / "outbox")
    servers = [ReviewServer(outbox).wait_ready() for _ in range(2)]
    try:
        first = [i["id"] for i in servers[0].queue(limit=3, session="ann")["items"]]
        second = [i["id"] for i in servers[1].queue(limit=3, session="bo")["items"]]
        assert len(first) == len(second) == 3
        assert not set(first) & set(second)
        # without a session (a script), everything pending is listed, leased or not
        everything = [i["id"] for i in servers[1].queue(limit=500)["items"]]
        assert set(first) | set(second) <= set(everything)
        # a reviewer may still judge a leased item; the last verdict wins
        assert servers[1].verdict(first[0], "not_a_digit")[0] == 200
        assert servers[0].verdict(first[0], "confirmed")[0] == 200
        assert [r["verdict"] for r in read_csv(outbox / "corrections.csv")
                if r["id"] == first[0]] == ["not_a_digit", "confirmed"]
        status, _ = servers[0].request("POST", "/api/undo", {"id": first[0]})
        assert status == 200
        again = [i["id"] for i in servers[1].queue(limit=500, session="bo")["items"]]
        assert first[0] in again and not set(first[1:]) & set(again)
    finally:
        for server in servers:
            server.close()


def test_leases_across_processes_expire_and_never_overlap(tmp_path):
    """The lease file under many concurrent claims from separate handles (as separate
    processes hold it): no item is ever held for two sessions; leases expire."""
    ids = [f"id{i:03d}" for i in range(200)]
    handles = [Leases(tmp_path, seconds=60) for _ in range(4)]
    got: dict[str, list[str]] = {}

    def claim(n: int) -> None:
        for round_ in range(5):
            session = f"s{n}-{round_}"
            got[session] = handles[n].claim(ids, session, limit=10)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [i for part in got.values() for i in part]
    assert len(taken) == 200 and len(set(taken)) == 200  # 20 sessions x 10, all different
    assert handles[0].claim(ids, "late", limit=10) == []
    assert handles[1].claim(ids, "late", limit=10, now=time.time() + 61) == ids[:10]
    (tmp_path / "review-leases.json").write_bytes(b'{"torn')  # a crash mid-write: no leases
    assert handles[2].claim(ids, "after", limit=3) == ids[:3]


# -- numbers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def number_outbox(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return make_number_outbox(tmp_path_factory.mktemp("numbers"))


def test_numbers_are_reviewed_as_strings(number_outbox, tmp_path):
    """A number result is in the queue with its string and its digits (the doubtful ones
    flagged, as the batch JSON has them); a correction is the whole string, of any length;
    a label that is not digits is a 400 and writes nothing."""
    written, truth = number_outbox
    outbox = copy_outbox(written, tmp_path / "outbox")
    server = ReviewServer(outbox).wait_ready()
    try:
        items = server.queue(limit=500)["items"]
        rows = {r["id"]: r for r in read_csv(outbox / "results.csv")}
        assert len(items) == sum(r["status"] == "low_confidence" for r in rows.values()) > 4
        for item in items:
            row = rows[item["id"]]
            assert item["digit"] is None and item["digits"] == row["digits"]
            assert len(item["parts"]) == len(item["digits"])
            assert "".join(str(p["digit"]) for p in item["parts"]) == item["digits"]
            assert item["top"] == [[item["digits"], item["confidence"]]]
        assert any(p["doubtful"] for i in items for p in i["parts"])
        wrong = next(i for i in items if truth[i["file"]] != i["digits"]) if any(
            truth[i["file"]] != i["digits"] for i in items) else items[0]
        right = next(i for i in items if i["id"] != wrong["id"])
        for label in ("12a", "", " 12", "１２", 12.5, ["1"]):
            status, _ = server.verdict(wrong["id"], "corrected", label)
            assert status == 400, label
        assert not read_csv(outbox / "corrections.csv")
        label = truth[wrong["file"]] if truth[wrong["file"]] != wrong["digits"] else "4071"
        status, answer = server.verdict(wrong["id"], "corrected", label)
        assert status == 200 and answer["row"]["verdict"] == "corrected", answer
        status, _ = server.verdict(right["id"], "corrected", right["digits"])  # = confirmed
        assert status == 200
        status, _ = server.verdict(right["id"], "confirmed", "9" + right["digits"])
        assert status == 400  # confirming while saying it is something else
        got = [(r["id"], r["predicted"], r["label"], r["verdict"])
               for r in read_csv(outbox / "corrections.csv")]
        assert got == [(wrong["id"], wrong["digits"], label, "corrected"),
                       (right["id"], right["digits"], right["digits"], "confirmed")]
        assert (outbox / "corrections" / f"{wrong['id']}.png").is_file()
    finally:
        server.close()


def test_a_digit_result_may_be_corrected_to_a_number(server, outbox):
    """The image held a number the daemon took for one digit: the label is its string (the
    number models learn it); confirming it as anything but the digit read is still a 400."""
    item = server.queue()["items"][0]
    status, answer = server.verdict(item["id"], "confirmed", "12")
    assert status == 400 and "corrected" in answer["error"]
    status, answer = server.verdict(item["id"], "corrected", "12")
    assert status == 200, answer
    row = read_csv(outbox / "corrections.csv")[-1]
    assert (row["id"], row["predicted"], row["label"], row["verdict"]) == (
        item["id"], str(item["digit"]), "12", "corrected")
