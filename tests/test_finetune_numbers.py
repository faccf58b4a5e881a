"""`digitd train --arch numbers --corrections`: the real command on reviewed numbers written
by digitd.review's own writer, the committed MNIST sample as replay and held-out strings;
what it writes is served by `number_model:` (digitd predict --number-model)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitd import ctc
from digitd.cli import main
from digitd.finetune_numbers import MAX_LABEL, judged, read_number_corrections
from digitd.model import file_sha256
from digitd.review.index import Item
from digitd.review.verdicts import Corrections, VerdictRequest
from harness import SAMPLE, png_bytes

NUMBERS = 30


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> tuple[Path, list[str]]:
    """An outbox where a reviewer gave verdicts on NUMBERS numbers (MNIST test digits of the
    sample, rendered by the bench's generator): a third corrected (read with a wrong first
    digit), the rest confirmed; and rows the number models cannot learn from."""
    import number_scans

    outbox = tmp_path_factory.mktemp("outbox")
    (outbox / "processed").mkdir()
    writer = Corrections(outbox, "test", 40_000_000)
    writer.prepare()
    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"], npz["y_test"]
    truths = []

    def record(i: int, png: bytes, predicted: str, verdict: str, label: str | None) -> None:
        item_id = f"20261202T0100{i // 1000:02d}{i % 1000:03d}Z-{i:012x}"
        (outbox / "processed" / f"in{i}.png").write_bytes(png)
        item = Item(id=item_id, file=f"in{i}.png", status="low_confidence",
                    digit=int(predicted) if len(predicted) == 1 else None, confidence=0.5,
                    sha256=hashlib.sha256(png).hexdigest(), batch="b", received_at="",
                    processed_at="", model="m", preview="", digits=predicted)
        writer.record(VerdictRequest(item_id, verdict, label, None), item, f"in{i}.png")

    for i in range(NUMBERS):
        png, truth, _ = number_scans.render_number(x, y, i, seed=11, flavour="paper_grey",
                                                   decorations=())
        wrong = str((int(truth[0]) + 1) % 10) + truth[1:]
        record(i, png, wrong if i % 3 == 0 else truth,
               "corrected" if i % 3 == 0 else "confirmed", truth)
        truths.append(truth)
    one = png_bytes(x[0])
    record(100, one, str(y[0]), "confirmed", str(y[0]))  # a digit: the digit model's to learn
    record(101, png_bytes(x[2]), "1", "corrected", "12")  # one narrow part (a 1): one digit
    long_png, _, _ = number_scans.render_number(x, y, 200, seed=11, flavour="paper_grey")
    record(102, long_png, "12", "corrected", "1" * (MAX_LABEL + 1))  # longer than a strip
    record(103, long_png, "12", "not_a_digit", None)
    return outbox, truths


def test_reads_the_numbers_and_counts_what_it_skips(reviewed):
    outbox, truths = reviewed
    loaded = read_number_corrections([outbox])
    assert sorted(loaded.texts) == sorted(truths)
    assert loaded.strips.shape == (NUMBERS, *ctc.SHAPE) and loaded.strips.max() <= 1.0
    assert ["".join(str(c - 1) for c in row if c) for row in loaded.labels] == loaded.texts
    assert loaded.skipped == {"digit": 1, "one part, not a line": 1, "too long": 1,
                              "not_a_digit": 1}
    assert read_number_corrections([outbox]).digest == loaded.digest


def test_a_worse_model_is_refused():
    assert judged((0.9, 0.9), (0.95, 0.945)).refusal() is None
    assert "held-out corrections" in judged((0.9, 0.85), (0.95, 0.96)).refusal()
    assert "1.50 points on the held-out strings" in judged((0.9, 0.95), (0.95, 0.935)).refusal()


@pytest.mark.slow
def test_fine_tunes_both_number_models_and_they_are_served(reviewed, tmp_path, capsys):
    """A few steps on the shipped pair: both written, with .tflite and cards recording the
    corrections; the first's card names the second; `digitd predict --number-model` serves
    them. Without numbers to learn from, a usage error."""
    outbox, truths = reviewed
    out = tmp_path / "models"
    env = dict(os.environ, TF_DETERMINISTIC_OPS="1")
    done = subprocess.run([sys.executable, "-m", "digitd", "train", "--arch", "numbers",
                           "--corrections", str(outbox), "--data", str(SAMPLE), "--steps", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert f"{NUMBERS} usable" in done.stdout and "number_model:" in done.stdout
    shipped = json.loads((ctc.default_path().parent / "digitd-numbers.card.json").read_text())
    first = json.loads((out / "digitd-numbers.card.json").read_text())
    second = json.loads((out / "digitd-numbers.second.card.json").read_text())
    assert first["base"]["model_id"] == shipped["model_id"] != first["model_id"]
    assert second["base"]["model_id"] == shipped["second_reading"]["model_id"]
    for card, name in ((first, ctc.NAME), (second, ctc.SECOND_NAME)):
        assert card["model_id"] == file_sha256(out / name) and card["arch"] == "numbers"
        assert card["tflite"]["sha256"] == file_sha256((out / name).with_suffix(".tflite"))
        assert card["corrections"]["count"] == NUMBERS
        assert card["corrections"]["sha256"] == read_number_corrections([outbox]).digest
        assert card["fine_tuning"]["steps"] == 2
        assert set(card["exact"]) == {"held_out_corrections", "held_out_strings"}
        assert 0.05 <= card["calibration"]["temperature"] <= 5.0
    assert first["second_reading"]["model_id"] == second["model_id"]
    served = ctc.load(out / ctc.NAME, threads=1)
    assert served.runtime == "litert" and served.second_reading.model_id == second["model_id"]

    names = [str(outbox / "processed" / f"in{i}.png") for i in range(3)]
    assert main(["predict", "--number-model", str(out / ctc.NAME), *names]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[1] for line in printed.splitlines()] == truths[:3]

    empty = tmp_path / "empty"
    (empty / "corrections").mkdir(parents=True)
    (empty / "corrections.csv").write_text((outbox / "corrections.csv").read_text()
                                           .splitlines()[0] + "\n")
    assert main(["train", "--arch", "numbers", "--corrections", str(empty), "--data",
                 str(SAMPLE), "--out", str(tmp_path / "none")]) == 2
    assert "no usable corrections of numbers" in capsys.readouterr().err
    assert main(["train", "--arch", "numbers", "--corrections", str(outbox), "--data",
                 str(SAMPLE), "--base", str(out / ctc.NAME), "--out", str(out)]) == 2
    assert "holds the base models" in capsys.readouterr().err
