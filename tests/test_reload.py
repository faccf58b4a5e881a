"""Hot reload: SIGHUP to the real daemon (a subprocess with a real notify socket) while files
keep arriving. Nothing is lost or answered twice, no batch is answered by two models, systemd
hears RELOADING=1 then READY=1, and a broken model is refused while the old one serves on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from digitd import ctc
from digitd.codes import ExitCode
from digitd.model import default_model_path, file_sha256
from harness import SAMPLE, DaemonProcess, drop, png_bytes, read_rows, sample_digits

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A second real model: the classroom MLP, one epoch on the committed sample."""
    out = tmp_path_factory.mktemp("models")
    done = subprocess.run([sys.executable, "-m", "digitd", "train", "--arch", "mlp", "--epochs",
                           "1", "--data", str(SAMPLE), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out / "digitd-mlp.keras"


def set_model(daemon: DaemonProcess, model: Path | None) -> None:
    """Point the daemon's configuration file at another model (replaced atomically)."""
    settings = yaml.safe_load(daemon.config_path.read_text())
    settings["model"] = None if model is None else str(model)
    tmp = daemon.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(settings))
    os.replace(tmp, daemon.config_path)


def reload_messages(daemon: DaemonProcess, timeout: float = 120.0) -> tuple[str, str]:
    """The RELOADING=1 message and the READY=1 that ends it (waits for both)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.collect(timeout=0.2)
        messages = [m.split("\n") for m in daemon.messages]
        start = next((i for i, m in enumerate(messages) if "RELOADING=1" in m), None)
        if start is not None:
            end = next((i for i in range(start + 1, len(messages))
                        if "READY=1" in messages[i]), None)
            if end is not None:
                return daemon.messages[start], daemon.messages[end]
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.proc.returncode}:\n{daemon.log()}")
    raise AssertionError(f"no RELOADING=1 then READY=1 within {timeout}s:\n{daemon.log()}")


def by_batch(rows: list[dict[str, str]]) -> dict[str, set[str]]:
    models = defaultdict(set)
    for row in rows:
        models[row["batch"]].add(row["model"])
    return models


@pytest.mark.parametrize("processes", [2])
def test_reload_under_a_burst(tmp_path, other_model, processes):
    daemon = DaemonProcess(tmp_path, processes=processes,
                           batch={"max_size": 16, "max_wait_ms": 5})
    old_id, new_id = file_sha256(default_model_path()), file_sha256(other_model)
    x, _ = sample_digits(400)
    names = [f"burst-{i:04d}.png" for i in range(len(x))]
    try:
        daemon.start()
        daemon.wait_ready(120)
        daemon.messages.clear()

        def dropping() -> None:
            for name, digit in zip(names, x, strict=True):
                drop(daemon.inbox, name, png_bytes(digit))
                time.sleep(0.02)

        dropper = threading.Thread(target=dropping)
        dropper.start()
        time.sleep(1.0)
        set_model(daemon, other_model)
        daemon.signal(signal.SIGHUP)
        reloading, ready = reload_messages(daemon)
        dropper.join()
        after = [f"after-{i}.png" for i in range(20)]
        for name, digit in zip(after, x, strict=False):
            drop(daemon.inbox, name, png_bytes(digit))
        rows = daemon.wait_rows(len(names) + len(after), timeout=120)
        assert daemon.stop() == 0
    finally:
        daemon.close()

    assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M), reloading
    assert other_model.name in ready and new_id[:12] in ready, ready
    # every input exactly once
    assert sorted(r["file"] for r in rows) == sorted(names + after)
    assert len({r["id"] for r in rows}) == len(rows)
    # each batch by one model, in its rows and in its batch JSON alike
    models = by_batch(rows)
    assert all(len(m) == 1 for m in models.values()), models
    for batch, (model,) in models.items():
        document = json.loads((daemon.outbox / "results" / f"{batch}.json").read_bytes())
        assert document["model"]["id"] == model
    served = {r["model"] for r in rows}
    assert served == {old_id, new_id}
    # once READY=1 came, new inputs are answered by the new model
    assert {r["model"] for r in rows if r["file"].startswith("after-")} == {new_id}
    assert not list(daemon.inbox.glob("*.png"))


def test_a_broken_model_is_refused_and_the_old_one_serves_on(tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really a model")
    daemon = DaemonProcess(tmp_path, processes=1)
    old_id = file_sha256(default_model_path())
    x, _ = sample_digits(10)
    try:
        daemon.start()
        daemon.wait_ready(120)
        daemon.messages.clear()
        for model in (broken, tmp_path / "missing.keras"):
            set_model(daemon, model)
            daemon.signal(signal.SIGHUP)
            reloading, ready = reload_messages(daemon)
            assert "Reload failed" in ready and old_id[:12] in ready, ready
            daemon.messages.clear()
        for i, digit in enumerate(x):
            drop(daemon.inbox, f"d{i}.png", png_bytes(digit))
        rows = daemon.wait_rows(len(x))
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert {r["model"] for r in rows} == {old_id}
    events = [json.loads(line) for line in daemon.log_path.read_text().splitlines()
              if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "reload_failed"]
    assert len(failed) == 2 and all(e["level"] == "error" for e in failed), failed
    assert any("missing.keras" in e["error"] for e in failed)
    assert read_rows(daemon.outbox) == rows


def set_settings(daemon: DaemonProcess, **changes) -> None:
    """Change top-level keys of the daemon's configuration file (replaced atomically)."""
    settings = yaml.safe_load(daemon.config_path.read_text())
    settings.update(changes)
    tmp = daemon.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(settings))
    os.replace(tmp, daemon.config_path)


def test_a_reload_applies_min_confidence_and_names_what_needs_a_restart(tmp_path):
    """min_confidence is re-read with the model: results after READY=1 get their status by
    the new threshold. A changed setting a reload does not apply is named in a warning."""
    daemon = DaemonProcess(tmp_path, processes=1, min_confidence=0.0)
    x, _ = sample_digits(12)
    damaged = []
    for i, digit in enumerate(x):  # half of them damaged: the model is unsure of those
        digit = digit.copy()
        if i % 2:
            digit[:, 14:] = 0
        damaged.append(digit)
    try:
        daemon.start()
        daemon.wait_ready(120)
        for i, digit in enumerate(damaged):
            drop(daemon.inbox, f"before-{i}.png", png_bytes(digit))
        daemon.wait_rows(len(damaged))
        daemon.messages.clear()
        settings = yaml.safe_load(daemon.config_path.read_text())
        batch = {**settings.get("batch", {}), "max_size": 7}
        set_settings(daemon, min_confidence=1.0, batch=batch)
        daemon.signal(signal.SIGHUP)
        _, ready = reload_messages(daemon)
        assert "Reloaded" in ready, ready
        for i, digit in enumerate(damaged):
            drop(daemon.inbox, f"after-{i}.png", png_bytes(digit))
        rows = daemon.wait_rows(2 * len(damaged))
        assert daemon.stop() == 0
    finally:
        daemon.close()
    before = [r for r in rows if r["file"].startswith("before-")]
    after = [r for r in rows if r["file"].startswith("after-")]
    assert {r["status"] for r in before} == {"ok"}  # min_confidence 0: everything is ok
    for row in after:  # min_confidence 1: ok only at a probability of exactly 1
        document = json.loads((daemon.outbox / "results" / f"{row['batch']}.json").read_bytes())
        confidence = next(i["confidence"] for i in document["items"] if i["id"] == row["id"])
        assert row["status"] == ("ok" if confidence >= 1.0 else "low_confidence"), row
    assert sum(r["status"] == "low_confidence" for r in after) >= len(after) // 2
    events = [json.loads(line) for line in daemon.log_path.read_text().splitlines()
              if line.startswith("{")]
    reloaded = [e for e in events if e.get("event") == "reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["min_confidence"] == 1.0
    assert reloaded[0]["previous_min_confidence"] == 0.0
    restart = [e for e in events if e.get("event") == "reload_needs_restart"]
    assert len(restart) == 1 and restart[0]["settings"] == ["batch"], restart


def test_a_reload_switches_the_number_model_and_refuses_one_it_cannot_load(tmp_path):
    """number_model is re-read with the model: numbers after READY=1 are read by the number
    model the configuration names now (the batch JSON's number_model says which, and its
    second); one that cannot be loaded is refused and the one before reads on."""
    models = ctc.default_path().parent
    shipped = json.loads((models / "digitd-numbers.card.json").read_text())
    other = models / ctc.SECOND_NAME  # a real number model of its own, with no second
    number = (DATA / "fine_one_94251871.png").read_bytes()
    daemon = DaemonProcess(tmp_path, processes=1)
    try:
        daemon.start()
        daemon.wait_ready(120)
        drop(daemon.inbox, "before.png", number)
        daemon.wait_rows(1)
        for step, target in (("after", other), ("refused", tmp_path / "missing.keras")):
            daemon.messages.clear()
            set_settings(daemon, number_model=str(target))
            daemon.signal(signal.SIGHUP)
            _, ready = reload_messages(daemon)
            assert ("Reloaded" if step == "after" else "Reload failed") in ready, ready
            drop(daemon.inbox, f"{step}.png", number)
            rows = daemon.wait_rows(2 if step == "after" else 3)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    read_by = {}
    for row in rows:
        assert int(row["digit_count"]) >= 2, row  # read as a number, by a number model
        document = json.loads((daemon.outbox / "results" / f"{row['batch']}.json").read_bytes())
        read_by[row["file"]] = document["number_model"]
    assert read_by["before.png"]["id"] == shipped["model_id"]
    assert read_by["before.png"]["second_id"] == shipped["second_reading"]["model_id"]
    for name in ("after.png", "refused.png"):
        assert read_by[name]["id"] == file_sha256(other) != shipped["model_id"]
        assert "second_id" not in read_by[name]
    events = [json.loads(line) for line in daemon.log_path.read_text().splitlines()
              if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "reload_failed"]
    assert len(failed) == 1 and "missing.keras" in failed[0]["error"], failed


def test_a_number_model_that_cannot_be_loaded_stops_the_start(tmp_path):
    """A number model the configuration names is never silently replaced by segmentation
    alone (as the shipped one missing would be): the daemon does not start."""
    daemon = DaemonProcess(tmp_path, processes=1, number_model=str(tmp_path / "none.keras"))
    try:
        daemon.start()
        assert daemon.proc.wait(timeout=120) == ExitCode.FAILURE
    finally:
        daemon.close()
    events = [json.loads(line) for line in daemon.log_path.read_text().splitlines()
              if line.startswith("{")]
    assert any(e.get("event") == "start_failed" and "none.keras" in e["error"]
               for e in events), daemon.log()
