"""`digitd train --arch numbers` on the committed sample (never the full set): a short run
through the real CLI writes the model, its .tflite (parity checked) and a card that records
the data; the strings are reproducible from the seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from digitd import ctc, strip, train_numbers
from digitd.cli import main
from digitd.codes import ExitCode
from digitd.dataset import load_usps, usps_ink
from digitd.model import LiteRTRunner, file_sha256

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"
USPS_SAMPLE = Path(__file__).parent / "data" / "usps_sample.gz"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("numbers")
    assert main(["train", "--arch", "numbers", "--data", str(SAMPLE), "--usps",
                 str(USPS_SAMPLE), "--limit", "640", "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_outputs_card_and_serving(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["digitd-numbers.card.json", "digitd-numbers.keras",
                     "digitd-numbers.tflite"]
    card = json.loads((trained / "digitd-numbers.card.json").read_text())
    assert card["arch"] == "numbers"
    assert card["model_id"] == file_sha256(trained / "digitd-numbers.keras")
    assert card["tflite"]["sha256"] == file_sha256(trained / "digitd-numbers.tflite")
    parity = card["tflite"]["parity"]
    assert parity["same_answers"] == parity["n"] == 400  # a short run's held-out strings
    data = card["dataset"]
    assert data["mnist"]["sha256"] and data["train_strings"] == 640
    assert len(data["train_strings_sha256"]) == 64 and data["held_out_strings_sha256"]
    assert "not used" in data["test_digits"]
    assert data["usps"]["sha256"] == file_sha256(USPS_SAMPLE)
    assert "300 digits" in data["usps"]["train_digits"]  # the sample's train part
    assert 0.05 <= card["calibration"]["temperature"] <= 5.0
    model = ctc.load(trained / "digitd-numbers.keras", threads=1)
    assert model.runtime == "litert"
    runner = LiteRTRunner(trained / "digitd-numbers.tflite", threads=1, shape=ctc.SHAPE)
    assert runner.free_width  # converted width-free: serving runs strips cut short
    out = model.predict(np.zeros((3, strip.HEIGHT, strip.WIDTH), np.float32))
    assert out.shape == (3, ctc.STEPS, ctc.CLASSES)
    assert np.allclose(out.sum(axis=2), 1.0, atol=1e-4)  # a softmax per step


def test_a_second_number_model_is_trained_beside_the_first(trained, tmp_path, capsys):
    """`--second`: written beside the first as digitd-numbers.second.keras and named in the
    first's card (its .keras, so its id, unchanged); ctc.load serves the pair. Without a
    first in --out it refuses."""
    assert main(["train", "--arch", "numbers", "--data", str(SAMPLE), "--second",
                 "--out", str(tmp_path)]) == ExitCode.USAGE
    assert "no such file" in capsys.readouterr().err
    for name in ("digitd-numbers.keras", "digitd-numbers.tflite", "digitd-numbers.card.json"):
        (tmp_path / name).write_bytes((trained / name).read_bytes())
    first_id = file_sha256(tmp_path / ctc.NAME)
    assert main(["train", "--arch", "numbers", "--data", str(SAMPLE), "--limit", "640",
                 "--epochs", "1", "--seed", "2", "--second", "--out", str(tmp_path)]) == 0
    second = tmp_path / ctc.SECOND_NAME
    card = json.loads((tmp_path / "digitd-numbers.card.json").read_text())
    assert card["model_id"] == first_id == file_sha256(tmp_path / ctc.NAME)
    entry = card["second_reading"]
    assert entry["model"] == second.name and entry["model_id"] == file_sha256(second)
    assert entry["seed"] == 2 and entry["usps"] is False
    second_card = json.loads((tmp_path / "digitd-numbers.second.card.json").read_text())
    assert second_card["name"] == second.name and second_card["training"]["seed"] == 2
    assert second_card["tflite"]["sha256"] == file_sha256(
        tmp_path / "digitd-numbers.second.tflite")
    model = ctc.load(tmp_path / ctc.NAME, threads=1)
    assert model.second_reading.model_id == entry["model_id"]
    assert model.second_reading.runtime == "litert"


def test_strings_are_reproducible_and_labelled():
    """The same seed gives the same strips whatever the number of processes; a label is the
    string's digits as CTC classes (1 + digit), padded with the blank."""
    sample = np.load(SAMPLE)
    x, y = sample["x_train"], sample["y_train"]
    one = train_numbers.strings(x, y, 0, 40, seed=3, workers=1)
    two = train_numbers.strings(x, y, 0, 40, seed=3, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    other = train_numbers.strings(x, y, 0, 40, seed=4, workers=1)
    assert not np.array_equal(one[0], other[0])
    strips, labels = one
    assert strips.shape == (40, strip.HEIGHT, strip.WIDTH) and strips.dtype == np.uint8
    lengths = (labels > 0).sum(axis=1)
    assert lengths.min() >= 1 and lengths.max() <= train_numbers.MAX_DIGITS
    for row, n in zip(labels, lengths, strict=True):
        assert (row[:n] > 0).all() and (row[n:] == 0).all()


def test_usps_strings_are_written_by_one_population_each():
    """With a second population (USPS), about USPS_SHARE of the strings are written with its
    digits and the rest with the first's, never mixed within a string (one writer)."""
    sample = np.load(SAMPLE)
    x = sample["x_train"][:500]
    ux = usps_ink(load_usps(USPS_SAMPLE).part("train")[0])
    assert ux.shape == (300, 28, 28) and ux.dtype == np.uint8
    assert ux[:, :6].max() == 0 and ux.max() > 200  # ink bright, paper 0, in the middle
    # Labels that tell the populations apart: every first-population digit a 0, every USPS one a 9.
    images = np.concatenate([x, ux])
    labels = np.concatenate([np.zeros(len(x), np.uint8), np.full(len(ux), 9, np.uint8)])
    _, rows = train_numbers.strings(images, labels, 0, 400, seed=5, workers=1, other=len(x))
    digits = [set(row[row > 0].tolist()) for row in rows]
    assert all(d in ({1}, {10}) for d in digits)  # 1 + digit: all 0s or all 9s
    share = sum(d == {10} for d in digits) / len(digits)
    assert abs(share - train_numbers.USPS_SHARE) < 0.06


def test_export_remakes_the_tflite_from_the_held_out_strings(trained, capsys):
    """`digitd export` on a number model checks parity on its held-out strings (made again
    from the card's seed), not on single digits."""
    (trained / "digitd-numbers.tflite").unlink()
    assert main(["export", str(trained / "digitd-numbers.keras"), "--data", str(SAMPLE)]) == 0
    card = json.loads((trained / "digitd-numbers.card.json").read_text())
    assert card["tflite"]["parity"]["n"] == 400
    assert "held-out strings" in card["tflite"]["parity"]["data"]
    assert card["tflite"]["sha256"] == file_sha256(trained / "digitd-numbers.tflite")
    assert "held-out strings" in capsys.readouterr().out
