"""The daemon as a subprocess on temp folders: pickup, partial writes, claims by two daemons,
kill -9 and restart, SIGTERM drain, and the CSV contract."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from digitd.claims import work_root
from digitd.config import WatchConfig
from digitd.model import default_model_path
from digitd.result import CSV_COLUMNS
from digitd.watcher import InboxWatcher
from harness import (
    FAST,
    DaemonProcess,
    drop,
    png_bytes,
    read_rows,
    run_cli,
    sample_digits,
    work_leftovers,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons(tmp_path):
    started: list[DaemonProcess] = []

    def make(**config) -> DaemonProcess:
        d = DaemonProcess(tmp_path, **{**FAST, **config})
        started.append(d)
        return d

    yield make
    for d in started:
        d.close()


def assert_exactly_once(rows, names):
    counts = Counter(r["file"] for r in rows)
    duplicated = [n for n, c in counts.items() if c > 1]
    missing = set(names) - set(counts)
    assert not duplicated, f"counted twice: {duplicated[:5]}"
    assert not missing, f"missing: {sorted(missing)[:5]}"
    assert len({r["id"] for r in rows}) == len(rows)


def test_pickup_at_start_and_live_then_sigterm(daemons):
    d = daemons()
    digits, labels = sample_digits(20)
    for i in range(10):
        drop(d.inbox, f"early-{i}.png", png_bytes(digits[i]))
    d.start()
    d.wait_ready()
    for i in range(10, 20):
        drop(d.inbox, f"live-{i}.png", png_bytes(digits[i]))
    rows = d.wait_rows(20, timeout=120)
    d.wait_for("WATCHDOG=1", timeout=30)
    assert d.stop() == 0
    assert "STOPPING=1" in "\n".join(d.messages)
    assert any(m.startswith("STATUS=") for m in d.messages)

    assert_exactly_once(
        rows, [f"early-{i}.png" for i in range(10)] + [f"live-{i}.png" for i in range(10, 20)]
    )
    label = {f"{p}-{i}.png": int(labels[i]) for i in range(20) for p in ("early", "live")}
    correct = sum(int(r["digit"]) == label[r["file"]] for r in rows if r["digit"])
    assert correct >= 19
    for r in rows:
        assert r["status"] in ("ok", "low_confidence")
        assert r["received_at"].endswith("Z") and len(r["received_at"]) == 24
        assert (d.outbox / r["preview"]).is_file()
        assert (d.outbox / "processed" / r["file"]).is_file()
    batches = {r["batch"] for r in rows}
    documents = [json.loads((d.outbox / "results" / f"{b}.json").read_text()) for b in batches]
    items = [item for doc in documents for item in doc["items"]]
    assert sorted(i["id"] for i in items) == sorted(r["id"] for r in rows)
    assert all(abs(sum(i["probabilities"]) - 1) < 1e-3 for i in items)
    assert all(
        {"wait_ms", "decode_ms", "infer_ms", "write_ms"} <= set(doc["timings_ms"])
        for doc in documents
    )
    assert [p.name for p in d.inbox.iterdir()] == [".digitd"]
    assert work_leftovers(d.inbox) == []


def test_partial_writes_are_not_read(daemons):
    d = daemons().start()
    d.wait_ready()
    digits, _ = sample_digits(2)
    data = png_bytes(digits[0])
    # A slow writer: four chunks, 300 ms apart (longer than settle_ms), file kept open.
    with open(d.inbox / "slow.png", "wb") as f:
        for k in range(4):
            f.write(data[k * len(data) // 4 : (k + 1) * len(data) // 4])
            f.flush()
            time.sleep(0.3)
    # A copy written in place (like cp): open, write, close.
    other = png_bytes(digits[1])
    with open(d.inbox / "copied.png", "wb") as f:
        f.write(other[:50])
        f.flush()
        time.sleep(0.3)
        f.write(other[50:])
    rows = d.wait_rows(2, timeout=120)
    by_name = {r["file"]: r for r in rows}
    import hashlib

    assert by_name["slow.png"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert by_name["copied.png"]["sha256"] == hashlib.sha256(other).hexdigest()
    assert {r["status"] for r in rows} <= {"ok", "low_confidence"}
    assert d.stop() == 0


def test_two_daemons_claim_each_file_once(daemons):
    first, second = daemons(), daemons()
    first.start()
    second.start()
    first.wait_ready()
    second.wait_ready()
    digits, _ = sample_digits(300)
    names = [f"shared-{i}.png" for i in range(300)]
    for name, digit in zip(names, digits, strict=True):
        drop(first.inbox, name, png_bytes(digit))
    rows = first.wait_rows(300, timeout=180)
    assert first.stop() == 0 and second.stop() == 0
    assert_exactly_once(read_rows(first.outbox), names)
    assert len(rows) == 300
    assert work_leftovers(first.inbox) == []


def test_kill9_then_restart_loses_and_duplicates_nothing(daemons):
    d = daemons()
    digits, _ = sample_digits(600)
    names = [f"k-{i}.png" for i in range(600)]
    d.start()
    d.wait_ready()
    for name, digit in zip(names, digits, strict=True):
        drop(d.inbox, name, png_bytes(digit))
    d.wait_rows(1, timeout=120)
    d.kill()
    killed_at = len(read_rows(d.outbox))
    again = daemons(inbox=d.inbox, outbox=d.outbox).start()
    again.wait_ready()
    rows = again.wait_rows(600, timeout=180)
    time.sleep(0.5)
    assert again.stop() == 0
    rows = read_rows(d.outbox)
    assert killed_at < 600, "the kill came too late to test anything"
    assert_exactly_once(rows, names)
    assert len(rows) == 600
    assert sorted(p.name for p in (d.outbox / "processed").iterdir()) == sorted(names)
    assert work_leftovers(d.inbox) == []


def test_sigterm_while_the_workers_start_is_a_clean_stop(daemons):
    """systemd stops a service that is still starting: a worker that gets SIGTERM before it
    has set up its handler dies of it, which is a clean stop, not a failure (exit 0)."""
    d = daemons(processes=2).start()
    deadline = time.monotonic() + 120
    while d.log().count('"worker_started"') < 2:
        assert time.monotonic() < deadline, "workers not started in 120 s:\n" + d.log()
        assert d.proc.poll() is None, d.log()
        time.sleep(0.01)
    d.signal(signal.SIGTERM)
    assert d.proc.wait(timeout=120) == 0, d.log()


def test_sigterm_finishes_the_batch_in_hand_and_restart_takes_the_rest(daemons):
    d = daemons()
    d.start()
    d.wait_ready()
    digits, _ = sample_digits(600)
    names = [f"t-{i}.png" for i in range(600)]
    stager = threading.Thread(
        target=lambda: [drop(d.inbox, n, png_bytes(x)) for n, x in zip(names, digits, strict=True)]
    )
    stager.start()
    d.wait_rows(1, timeout=120)
    d.signal(signal.SIGTERM)
    code = d.proc.wait(timeout=120)  # generous for a loaded machine; bench/faults.py times it
    stager.join()
    assert code == 0
    rows = read_rows(d.outbox)
    processed = {p.name for p in (d.outbox / "processed").iterdir()}
    assert {r["file"] for r in rows} == processed  # every row's input was filed
    assert work_leftovers(d.inbox) == []
    again = daemons(inbox=d.inbox, outbox=d.outbox).start()
    again.wait_ready()
    again.wait_rows(600, timeout=180)
    assert again.stop() == 0
    assert_exactly_once(read_rows(d.outbox), names)


def test_csv_contract_quoting_and_rejections(daemons, tmp_path):
    d = daemons()
    digits, _ = sample_digits(8)
    good = {
        "a,b.png": digits[0],
        'say "hi".png': digits[1],
        "new\nline.png": digits[2],
        "=cmd|' -C calc'!A0.png": digits[3],
        "ünïcødé 数字.png": digits[4],
        "with space.PNG": digits[5],
        ("x" * 246) + ".png": digits[6],
        "-minus.png": digits[7],
    }
    for name, digit in good.items():
        drop(d.inbox, name, png_bytes(digit))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET-CONTENT")
    bad = {
        "empty.png": b"",
        "text.png": b"hello, I am not a PNG\n" * 10,
        "photo.png": b"\xff\xd8\xff\xe0" + b"\x00" * 200,
        "truncated.png": png_bytes(digits[0])[:60],
    }
    for name, data in bad.items():
        drop(d.inbox, name, data)
    os.symlink(secret, d.inbox / "link.png")
    os.mkfifo(d.inbox / "pipe.png")
    (d.inbox / "folder.png").mkdir()
    (d.inbox / "ignored.txt").write_text("not a png name")
    (d.inbox / ".hidden.png").write_bytes(png_bytes(digits[0]))
    (d.inbox / "partial.png.part").write_bytes(png_bytes(digits[0]))
    d.start()
    d.wait_ready()
    expected = len(good) + len(bad) + 3
    rows = d.wait_rows(expected, timeout=120)
    time.sleep(1.0)
    assert d.stop() == 0
    rows = read_rows(d.outbox)
    assert len(rows) == expected

    raw = (d.outbox / "results.csv").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    assert raw.startswith(",".join(CSV_COLUMNS).encode() + b"\r\n")
    with open(d.outbox / "results.csv", encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    assert all(len(row) == len(CSV_COLUMNS) for row in table)

    by_name = {r["file"]: r for r in rows}
    assert "'=cmd|' -C calc'!A0.png" in by_name  # neutralised for spreadsheets
    assert "'-minus.png" in by_name
    for name in good:
        shown = "'" + name if name[0] in "=-" else name
        assert by_name[shown]["status"] in ("ok", "low_confidence"), by_name[shown]
    reasons = {
        name: by_name[name]["error"] for name in [*bad, "link.png", "pipe.png", "folder.png"]
    }
    assert reasons == {
        "empty.png": "empty",
        "text.png": "not_png",
        "photo.png": "not_png",
        "truncated.png": "truncated",
        "link.png": "not_regular",
        "pipe.png": "not_regular",
        "folder.png": "not_regular",
    }
    for name in reasons:
        assert by_name[name]["status"] == "rejected" and by_name[name]["digit"] == ""
        error = json.loads((d.outbox / "failed" / f"{name}.error.json").read_text())
        assert error["error"] == reasons[name] and error["message"]
        assert os.path.lexists(d.outbox / "failed" / name)
    assert os.path.islink(d.outbox / "failed" / "link.png")
    assert (d.outbox / "processed" / (("x" * 246) + ".png")).is_file()  # 250 bytes, kept
    for path in d.outbox.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"TOP-SECRET-CONTENT" not in path.read_bytes(), path
    assert sorted(p.name for p in d.inbox.iterdir()) == sorted(
        [".digitd", "ignored.txt", ".hidden.png", "partial.png.part"]
    )


def test_bad_configuration_is_refused_with_file_key_and_reason(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("inbox: in\nbatch:\n  max_sise: 8\n")
    for command in ("check-config", "run"):
        result = run_cli(command, "--config", str(config), cwd=tmp_path)
        assert result.returncode == 2
        assert f"{config}: batch.max_sise: unknown key" in result.stderr
        assert "Traceback" not in result.stderr
    config.write_text("min_confidence: 1.5\n")
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert (
        result.returncode == 2 and "min_confidence: must be a number from 0 to 1" in result.stderr
    )
    config.write_text("inbox: /srv/in\noutbox: out\n")
    result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"outbox {tmp_path / 'out'}" in result.stdout
    # the models it names are loaded as the daemon would: missing, or of the other kind
    models = default_model_path().parent
    for text, said in ((f"number_model: {tmp_path / 'none.keras'}\n", "no such model file"),
                       (f"number_model: {default_model_path()}\n", "not a number model"),
                       (f"model: {models / 'digitd-numbers.keras'}\n", "not a digit model")):
        config.write_text(text)
        result = run_cli("check-config", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 2 and said in result.stderr, (text, result.stderr)
    config.write_text(f"number_model: {models / 'digitd-numbers.second.keras'}\n")
    assert run_cli("check-config", "--config", str(config), cwd=tmp_path).returncode == 0


def test_a_batch_whose_csv_write_a_kill_cut_short_is_finished_row_by_row(daemons):
    """kill -9 can cut a multi-page write(): some of a batch's rows are in the CSV, then a
    torn line. The restart must keep those rows, redo only the others, and count none twice."""
    d = daemons()
    batch_id = "20260101T000000000Z-aaaaaaaaaaaa"
    dead = work_root(d.inbox) / "deadhost-1-abcdef"
    folder = dead / batch_id
    folder.mkdir(parents=True)
    (dead / ".lock").touch()  # nobody holds it: the daemon is dead
    digits, _ = sample_digits(6)
    names = [f"cut-{i}.png" for i in range(6)]
    for name, digit in zip(names, digits, strict=True):
        (folder / name).write_bytes(png_bytes(digit))
    items = [
        {"id": f"id-{i}", "name": n, "received_at": "2026-01-01T00:00:00+00:00"}
        for i, n in enumerate(names)
    ]
    (folder / "manifest.json").write_text(json.dumps({"batch": batch_id, "items": items}))
    d.outbox.mkdir()
    (d.outbox / "results").mkdir()
    (d.outbox / "results" / f"{batch_id}.json").write_text(json.dumps({"items": items}))
    with open(d.outbox / "results.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for i in range(3):
            t = "2026-01-01T00:00:00.000Z"
            writer.writerow([f"id-{i}", names[i], "ok", "7", "0.9900", "ab", batch_id, t, t,
                             "m", "", ""])  # fmt: skip
        f.write("id-3,cut-3.png,ok,7,0.99")  # the torn line
    d.start()
    d.wait_ready()
    rows = d.wait_rows(6, timeout=120)
    assert d.stop() == 0
    rows = read_rows(d.outbox)
    assert_exactly_once(rows, names)
    assert [r["id"] for r in rows[:3]] == ["id-0", "id-1", "id-2"]  # kept as committed
    assert {r["id"] for r in rows[3:]} == {"id-3", "id-4", "id-5"}  # redone, same ids
    assert sorted(p.name for p in (d.outbox / "processed").iterdir()) == names
    kept = json.loads((d.outbox / "results" / f"{batch_id}.json").read_text())
    assert [i["id"] for i in kept["items"]] == ["id-0", "id-1", "id-2"]
    assert work_leftovers(d.inbox) == []


def test_the_idle_wait_returns_when_a_signal_handler_outlasts_its_timeout(tmp_path):
    """The main loop's wait must end on time even if the SIGTERM handler (which logs) runs
    past the wait's deadline: CPython 3.11's SimpleQueue.get(timeout) then blocked for ever
    and the daemon never stopped. Here the handler outlasts a 0.2 s wait by 0.3 s."""
    watcher = InboxWatcher(tmp_path, WatchConfig())
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: time.sleep(0.3))
    try:
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        t0 = time.monotonic()
        late = threading.Timer(5.0, watcher._hints.put, (("late.png", False),))
        late.start()
        watcher.wait(0.2)
        waited = time.monotonic() - t0
        late.cancel()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert waited < 2.0


def test_predict_tells_the_same_truth_as_the_daemon(daemons, tmp_path, capsys):
    """The same files, the same configuration: `digitd predict --config` gives each file the
    status, digit and reason code the daemon wrote into results.csv, low_confidence included
    (a threshold between the files' confidences makes both statuses occur)."""
    import numpy as np

    from digitd.cli import main

    def predict(*args: str) -> dict[str, dict]:
        main(["predict", "--json", *args])
        lines = capsys.readouterr().out.splitlines()
        return {Path(r["file"]).name: r for r in map(json.loads, lines)}

    digits, _ = sample_digits(12, 40)
    files = {"strip.png": png_bytes(np.hstack(list(digits[:4])))}  # four digits: unsure
    files.update({f"d{i}.png": png_bytes(digits[4 + i]) for i in range(8)})
    files.update({"text.png": b"not a PNG\n", "cut.png": png_bytes(digits[0])[:50]})
    kept = tmp_path / "files"
    kept.mkdir()
    for name, data in files.items():
        (kept / name).write_bytes(data)
    paths = [str(kept / name) for name in files]
    first = predict("--min-confidence", "0", *paths)
    confidences = sorted(r["confidence"] for r in first.values() if r["digit"] is not None)
    threshold = round((confidences[0] + confidences[-1]) / 2, 6)

    d = daemons(min_confidence=threshold, processes=1)
    for name, data in files.items():
        drop(d.inbox, name, data)
    d.start()
    d.wait_ready()
    rows = {r["file"]: r for r in d.wait_rows(len(files), timeout=120)}
    assert d.stop() == 0
    answers = predict("--config", str(d.config_path), *paths)
    assert set(rows) == set(answers) == set(files)
    for name, row in rows.items():
        answer = answers[name]
        assert answer["status"] == row["status"], (name, answer, row)
        assert (answer["error"] or "") == row["error"]
        if row["digit"]:
            assert answer["digit"] == int(row["digit"])
            assert abs(answer["confidence"] - float(row["confidence"])) <= 1e-4
    assert {r["status"] for r in rows.values()} == {"ok", "low_confidence", "rejected"}


def _number_pngs(n: int, seed: int = 21) -> dict[str, tuple[bytes, str]]:
    """Numbers on paper (bench/number_scans.py) made of the committed sample's test digits."""
    import numpy as np

    import number_scans
    from harness import SAMPLE

    data = np.load(SAMPLE)
    return {f"number-{i}.png": number_scans.render_number(data["x_test"], data["y_test"], i,
                                                          seed, flavour="paper_grey",
                                                          decorations=())[:2]
            for i in range(n)}


def test_numbers_through_the_daemon(daemons):
    """`recognise: auto`: a number's row has its string in `digits`, its length in
    `digit_count` and `digit` empty; a single digit's row has the digit in both; the batch
    JSON gives each digit's box, value and top-3; a preview is written for each."""
    numbers = _number_pngs(6)
    digits, labels = sample_digits(3)
    d = daemons(processes=1, recognise="auto")
    for name, (data, _) in numbers.items():
        drop(d.inbox, name, data)
    for i in range(3):
        drop(d.inbox, f"single-{i}.png", png_bytes(digits[i]))
    d.start()
    d.wait_ready()
    rows = {r["file"]: r for r in d.wait_rows(9, timeout=180)}
    assert d.stop() == 0
    with open(d.outbox / "results.csv", encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    assert header[-2:] == ["digits", "digit_count"] and tuple(header) == CSV_COLUMNS
    right = 0
    items = {}
    for row in rows.values():
        document = json.loads((d.outbox / "results" / f"{row['batch']}.json").read_text())
        items.update({item["file"]: item for item in document["items"]})
        assert (d.outbox / row["preview"]).is_file()
    for name, (_, truth) in numbers.items():
        row, item = rows[name], items[name]
        right += row["digits"] == truth
        assert row["digit"] == "" and row["digit_count"] == str(len(row["digits"]))
        assert item["digits"] == row["digits"] and item["digit"] is None
        assert len(item["parts"]) == len(row["digits"])
        for part, value in zip(item["parts"], row["digits"], strict=True):
            assert part["digit"] == int(value) and len(part["box"]) == 4
            assert [v for v, _ in part["top"]][0] == part["digit"] and len(part["top"]) == 3
        if row["status"] == "ok":
            assert not any(p["doubtful"] for p in item["parts"])
            assert float(row["confidence"]) >= 0.8
    assert right >= 5
    number_model = document["number_model"]  # the strings are the number model's
    assert len(number_model["id"]) == 64 and number_model["runtime"] == "litert"
    assert len(number_model["second_id"]) == 64 != number_model["id"]  # its second, served too
    for i in range(3):
        row = rows[f"single-{i}.png"]
        assert row["digits"] == row["digit"] == str(labels[i]) and row["digit_count"] == "1"
        assert items[f"single-{i}.png"]["parts"] is None


def test_recognise_digit_reads_all_ink_as_one_digit(daemons):
    """`recognise: digit` is digitd before numbers: a number's ink is one digit."""
    numbers = _number_pngs(2)
    d = daemons(processes=1, recognise="digit")
    for name, (data, _) in numbers.items():
        drop(d.inbox, name, data)
    d.start()
    d.wait_ready()
    rows = d.wait_rows(2, timeout=180)
    assert d.stop() == 0
    for row in rows:
        assert row["digit"] != "" and row["digits"] == row["digit"]
        assert row["digit_count"] == "1"
