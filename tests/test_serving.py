"""Serving never loads TensorFlow: `digitd predict` and every process of `digitd run` serve the
shipped .tflite through LiteRT; a model without a .tflite falls back and says so once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from digitd.model import default_model_path, file_sha256, read_card
from harness import DaemonProcess, drop, png_bytes, read_rows, sample_digits

pytestmark = pytest.mark.slow

FAST = {"watch": {"settle_ms": 100, "incomplete_after_s": 1.0, "rescan_interval_s": 0.5}}


def test_predict_imports_no_tensorflow(tmp_path):
    digits, labels = sample_digits(3)
    files = []
    for i, digit in enumerate(digits):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png_bytes(digit))
    code = ("import sys\n"
            "from digitd.cli import main\n"
            "code = main(['predict', *sys.argv[1:]])\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow',\n"
            "                                                              'keras'))\n"
            "print('loaded:', loaded)\n"
            "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [int(line.split()[1]) for line in lines[:3]] == [int(y) for y in labels]
    assert lines[3] == "loaded: []"
    assert proc.stderr == ""  # nor LiteRT's "INFO: Created ... XNNPACK delegate" line


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                pids += process_tree(int(child))
    return pids


def mapped_libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {Path(line.split()[-1]).name for line in f if line.rstrip().endswith(".so")
                or ".so." in line}


def log_events(d: DaemonProcess) -> list[dict]:
    events = []
    for line in d.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_the_daemon_serves_the_tflite_with_no_tensorflow_mapped(tmp_path):
    d = DaemonProcess(tmp_path, processes=2, **FAST)
    try:
        d.start()
        d.wait_ready()
        pids = process_tree(d.proc.pid)
        assert len(pids) == 3  # the supervisor and two workers
        for pid in pids:
            libraries = mapped_libraries(pid)
            assert "libLiteRt.so" in libraries or pid == d.proc.pid
            assert not [name for name in libraries if "tensorflow" in name], pid
        digits, _ = sample_digits(4)
        for i, digit in enumerate(digits):
            drop(d.inbox, f"{i}.png", png_bytes(digit))
        rows = d.wait_rows(4, timeout=120)
        assert d.stop() == 0
    finally:
        d.close()
    assert {r["model"] for r in rows} == {file_sha256(default_model_path())}  # the .keras's hash
    second = read_card(default_model_path())["second_opinion"]["model_id"]  # served beside it
    for batch in {r["batch"] for r in rows}:
        document = json.loads((d.outbox / "results" / f"{batch}.json").read_text())
        assert document["model"]["second_opinion"] == second
        assert (document["model"]["served"], document["model"]["precision"]) == (
            "digitd-cnn.tflite", "int8")
    ready = [e for e in log_events(d) if e.get("event") == "ready" and "runtime" in e]
    assert [e["runtime"] for e in ready] == ["litert", "litert"]
    assert not [e for e in log_events(d) if e.get("event") == "model_fallback"]


def test_a_model_without_tflite_falls_back_and_says_so_once(tmp_path):
    model = tmp_path / "m" / "plain.keras"
    model.parent.mkdir()
    shutil.copy(default_model_path(), model)
    d = DaemonProcess(tmp_path, model=model, processes=1, **FAST)
    try:
        d.start()
        d.wait_ready(timeout=180)
        digits, _ = sample_digits(2)
        for i, digit in enumerate(digits):
            drop(d.inbox, f"{i}.png", png_bytes(digit))
        rows = d.wait_rows(2, timeout=120)
        assert d.stop() == 0
    finally:
        d.close()
    fallbacks = [e for e in log_events(d) if e.get("event") == "model_fallback"]
    assert len(fallbacks) == 1 and "no plain.tflite beside it" in fallbacks[0]["reason"]
    assert {r["model"] for r in rows} == {file_sha256(model)}
    assert read_rows(d.outbox)[0]["status"] in ("ok", "low_confidence")
