"""`digitd train` and `digitd evaluate` on the committed samples (never the full sets).

One short CNN run is shared by the tests: its second opinion (2 epochs on the 3,000 MNIST
digits, mildly varied), then the CNN from it (2 epochs on those digits, their continental
copies and the USPS sample's 300-digit train part, heavily augmented); about 45 s on 2 idle
cores.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from digitd import calibration
from digitd.cli import main
from digitd.dataset import load_usps
from digitd.export import parity_problem
from digitd.model import file_sha256, import_keras, load_classifier
from digitd.train import usps_inputs

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"
USPS_SAMPLE = Path(__file__).parent / "data" / "usps_sample.gz"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Train the CNN briefly on the samples through the real CLI; return the output directory."""
    out = tmp_path_factory.mktemp("models")
    assert main(["train", "--data", str(SAMPLE), "--usps", str(USPS_SAMPLE), "--epochs", "2",
                 "--second-epochs", "2", "--out", str(out)]) == 0
    return out


def test_short_cnn_run_beats_chance_by_far(trained):
    card = json.loads((trained / "digitd-cnn.card.json").read_text())
    assert card["test"]["n"] == 1000
    assert card["test"]["accuracy"] >= 0.70, card["test"]["accuracy"]  # chance is 0.10


def test_outputs_and_card(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["digitd-cnn.card.json", "digitd-cnn.keras", "digitd-cnn.report.png",
                     "digitd-cnn.second.card.json", "digitd-cnn.second.keras",
                     "digitd-cnn.second.tflite", "digitd-cnn.tflite"]
    card = json.loads((trained / "digitd-cnn.card.json").read_text())
    assert card["model_id"] == file_sha256(trained / "digitd-cnn.keras")
    assert card["tflite"]["sha256"] == file_sha256(trained / "digitd-cnn.tflite")
    entry = card["tflite"]  # int8 unless a short run's near ties flip answers: then float32
    assert entry["parity"]["n"] == 1000
    assert parity_problem(entry["parity"], entry["precision"]) == ""
    assert card["as_served"]["runtime"] == "litert" and card["as_served"]["second_opinion"]
    assert load_classifier(trained / "digitd-cnn.keras").runtime == "litert"
    assert card["parameters"] > 100_000 and card["architecture"][0] == "Reshape"
    assert card["training"]["epochs"] == 2 and card["training"]["seed"] == 1
    assert len(card["training"]["history"]["val_accuracy"]) == 2
    assert np.array(card["test"]["confusion_matrix"]).sum() == 1000
    assert set(card["test"]["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert {"tensorflow", "keras", "numpy", "python"} <= set(card["library_versions"])
    assert card["created_at"].endswith("+00:00")
    assert (trained / "digitd-cnn.report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_second_opinion_is_trained_first_and_served_with_the_cnn(trained):
    card = json.loads((trained / "digitd-cnn.card.json").read_text())
    second_card = json.loads((trained / "digitd-cnn.second.card.json").read_text())
    entry = card["second_opinion"]
    assert entry["model"] == second_card["name"] == "digitd-cnn.second.keras"
    assert entry["model_id"] == second_card["model_id"] == file_sha256(
        trained / "digitd-cnn.second.keras")
    assert second_card["tflite"]["sha256"] == file_sha256(trained / "digitd-cnn.second.tflite")
    assert second_card["dataset"]["trained_on"] == {"mnist_train": 3000}  # MNIST only
    assert second_card["training"]["epochs"] == 2 and "calibration" in second_card
    assert entry["mnist_test_together"] == card["test"]["accuracy"]
    classifier = load_classifier(trained / "digitd-cnn.keras")
    assert classifier.second is not None and classifier.second.runtime == "litert"
    assert classifier.below == entry["below"] == 0.99
    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"].astype(np.float32) / 255.0, npz["y_test"]
    served = classifier.predict(x)  # the card's figures are the pair's answers as served
    assert (served.argmax(1) == y).mean() == pytest.approx(card["test"]["accuracy"], abs=0.002)


def test_saved_model_is_plain_keras(trained):
    """Standard layers, string activations, no optimiser state: loads in any Keras 3."""
    with zipfile.ZipFile(trained / "digitd-cnn.keras") as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    layers = config["config"]["layers"]
    assert {layer["class_name"] for layer in layers} <= {
        "InputLayer", "Reshape", "Conv2D", "BatchNormalization", "Activation", "Dropout",
        "Flatten", "Dense", "Rescaling"}
    activations = [layer["config"].get("activation") for layer in layers]
    assert all(a is None or isinstance(a, str) for a in activations)
    assert "softmax" in activations
    assert b"optimizer" not in weights


def test_card_records_sources_split_and_calibration(trained):
    card = json.loads((trained / "digitd-cnn.card.json").read_text())
    usps = card["dataset"]["usps"]
    assert usps["sha256"] == file_sha256(USPS_SAMPLE)
    assert {k: v["n"] for k, v in usps["parts"].items()} == {"train": 300, "calibration": 120,
                                                             "test": 180}
    used = card["dataset"]["trained_on"]
    assert used["usps_train"]["digits"] == 300 and used["continental_forms"]["crossed_7"] > 0
    assert used["total"] == 3000 + sum(used["continental_forms"].values()) + 300 * 2
    cal = card["calibration"]
    assert cal["fitted_on"] == "USPS calibration part" and 0.05 < cal["temperature"] < 20
    assert cal["usps_calibration"]["nll_after"] <= cal["usps_calibration"]["nll_before"]
    op = cal["operating_point"]
    assert 0 <= op["min_confidence"] <= 1 and op["usps_test"]["n"] == 180
    assert op["usps_calibration"]["silent_errors"] <= 0.005


def test_the_operating_point_is_chosen_on_the_answers_as_served(trained):
    """The .tflite (int8) moves probabilities by a few hundredths: the card's operating point
    must be what the served pair gives, not what the .keras gave."""
    card = json.loads((trained / "digitd-cnn.card.json").read_text())
    op = card["calibration"]["operating_point"]
    assert op["answers"].startswith("as served")
    served = load_classifier(trained / "digitd-cnn.keras")
    for part in ("calibration", "test"):
        x16, y = load_usps(USPS_SAMPLE).part(part)
        probs = served.predict(usps_inputs(x16))
        assert card["as_served"][f"usps_{part}"] == round(float((probs.argmax(1) == y).mean()), 6)
    x16, y = load_usps(USPS_SAMPLE).part("calibration")
    point = calibration.choose_threshold(served.predict(usps_inputs(x16)), y)
    assert point.as_dict() == op["usps_calibration"]


def test_temperature_is_baked_into_the_saved_graph(trained):
    """The saved model's probabilities are softmax(logits / T) with the card's T, so every
    runtime that runs the graph gives the calibrated figures."""
    keras = import_keras()
    card = json.loads((trained / "digitd-cnn.card.json").read_text())
    model = keras.saving.load_model(trained / "digitd-cnn.keras", compile=False)
    assert [type(layer).__name__ for layer in model.layers[-3:]] == ["Dense", "Rescaling",
                                                                       "Activation"]
    with np.load(SAMPLE) as npz:
        x = npz["x_test"][:100].astype(np.float32) / 255.0
    logits = np.asarray(keras.Sequential(model.layers[:-2])(x, training=False), np.float64)
    t = card["calibration"]["temperature"]
    z = logits / t
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(np.asarray(model(x, training=False)), expected, atol=2e-4)  # T rounded


def test_save_load_round_trip_gives_identical_predictions(trained, tmp_path):
    keras = import_keras()
    with np.load(SAMPLE) as npz:
        x = npz["x_test"][:200].astype(np.float32) / 255.0
    original = keras.saving.load_model(trained / "digitd-cnn.keras", compile=False)
    before = np.asarray(original(x, training=False))
    original.save(tmp_path / "copy.keras")
    copy = keras.saving.load_model(tmp_path / "copy.keras", compile=False)
    assert np.array_equal(before, np.asarray(copy(x, training=False)))
    fast = load_classifier(tmp_path / "copy.keras").predict(x)
    assert np.allclose(fast, before, atol=1e-6)


def test_evaluate_json(trained, capsys):
    model = trained / "digitd-cnn.keras"
    assert main(["evaluate", "--model", str(model), "--data", str(SAMPLE), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["model_id"] == file_sha256(model) and result["n"] == 1000
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 1000
    assert result["accuracy"] == pytest.approx(np.trace(matrix) / 1000)
    card = json.loads((trained / "digitd-cnn.card.json").read_text())
    assert result["accuracy"] == pytest.approx(card["test"]["accuracy"], abs=0.002)


def test_evaluate_human_readable(trained, capsys):
    model = trained / "digitd-cnn.keras"
    assert main(["evaluate", "--model", str(model), "--data", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion" in out


def test_evaluate_missing_model_is_exit_2(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "none.keras"), "--data", str(SAMPLE)])
    assert code == 2
    assert "none.keras" in capsys.readouterr().err


def test_mlp_reproduces_the_classroom_network(tmp_path):
    assert main(["train", "--data", str(SAMPLE), "--arch", "mlp", "--out", str(tmp_path)]) == 0
    card = json.loads((tmp_path / "digitd-mlp.card.json").read_text())
    assert card["training"]["epochs"] == 3 and card["parameters"] == 784 * 128 + 128 + 128 * 128 \
        + 128 + 128 * 10 + 10
    assert card["test"]["accuracy"] >= 0.80


def test_limit_and_seed_make_runs_repeatable(tmp_path):
    args = ["train", "--data", str(SAMPLE), "--arch", "mlp", "--epochs", "1", "--limit", "500"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "digitd-mlp.card.json").read_text())
    b = json.loads((tmp_path / "b" / "digitd-mlp.card.json").read_text())
    assert a["dataset"]["train"] == 500
    # same seed, same data -> the same run (approx: multi-threaded float sums may reorder)
    assert a["training"]["history"]["loss"] == pytest.approx(b["training"]["history"]["loss"],
                                                             rel=1e-4)
