"""`digitd export` and digitd.export: .keras -> .tflite, the parity check, the card entry; and
the commands' plain message when TensorFlow (the `train` extra) is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from digitd.cli import main
from digitd.export import (
    INT8_TOLERANCE,
    ExportError,
    answers,
    export_tflite,
    parity,
    parity_problem,
    tflite_card_entry,
)
from digitd.model import (
    card_path,
    default_model_path,
    file_sha256,
    import_keras,
    load_classifier,
    tflite_path,
)

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"


def small_cnn(folder: Path) -> Path:
    """An untrained conv net (conv, batch norm, dense: the ops the shipped model uses)."""
    keras = import_keras()
    keras.utils.set_random_seed(3)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=(28, 28)), layers.Reshape((28, 28, 1)),
        layers.Conv2D(4, 3, strides=2, use_bias=False), layers.BatchNormalization(),
        layers.Activation("relu"), layers.Flatten(), layers.Dense(10, activation="softmax")])
    path = folder / "small.keras"
    model.save(path)
    return path


def sample() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLE) as npz:
        return npz["x_test"].astype(np.float32) / 255.0, npz["y_test"]


def test_export_command_writes_the_tflite_and_records_parity(tmp_path, capsys):
    model = small_cnn(tmp_path)
    assert main(["export", str(model), "--data", str(SAMPLE), "--precision", "float32"]) == 0
    assert "same answer on 1,000 of 1,000 test digits" in capsys.readouterr().out
    card = json.loads(card_path(model).read_text())
    entry = card["tflite"]
    assert card["model_id"] == entry["converted_from"] == file_sha256(model)
    assert entry["sha256"] == file_sha256(tflite_path(model))
    assert entry["precision"] == "float32"
    assert entry["parity"]["n"] == entry["parity"]["same_answers"] == 1000
    assert entry["parity"]["max_abs_diff"] < 1e-4
    assert entry["parity"]["keras_accuracy"] == entry["parity"]["tflite_accuracy"]
    classifier = load_classifier(model)
    assert (classifier.runtime, classifier.fallback) == ("litert", "")
    assert card["as_served"]["mnist_test"] == entry["parity"]["tflite_accuracy"]


@pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model")
def test_a_trained_digit_model_is_exported_in_int8_by_default(tmp_path, capsys):
    model = tmp_path / "trained.keras"  # the shipped network, alone (no card, no second)
    model.write_bytes(default_model_path().read_bytes())
    assert main(["export", str(model), "--data", str(SAMPLE)]) == 0
    assert "(int8, " in capsys.readouterr().out
    entry = json.loads(card_path(model).read_text())["tflite"]
    assert entry["precision"] == "int8" and parity_problem(entry["parity"], "int8") == ""
    assert entry["bytes"] < default_model_path().stat().st_size / 3  # 8-bit weights
    assert 0 < entry["parity"]["max_abs_diff"] <= INT8_TOLERANCE  # not the float32 file
    x, y = sample()
    served = load_classifier(model)
    assert served.runtime == "litert" and (served.predict(x).argmax(1) == y).mean() >= 0.99


def test_an_int8_export_that_disagrees_is_refused_and_float32_served_instead(tmp_path):
    model = small_cnn(tmp_path)  # untrained: near ties, which 8-bit weights flip
    x, y = sample()
    with pytest.raises(ExportError, match="int8 .tflite disagrees"):
        export_tflite(model, x, y, "sample", precision="int8")
    assert not tflite_path(model).exists()
    entry = tflite_card_entry(model, x, y, "sample", precision="int8")
    assert entry["precision"] == "float32" and "answers differ" in entry["int8_refused"]
    assert entry["sha256"] == file_sha256(tflite_path(model))


def test_the_number_models_answers_are_its_greedy_strings():
    probs = np.full((2, 6, 11), 0.01, np.float32)  # class 0 the CTC blank, 1 + d the digit d
    for row, path in enumerate([(2, 0, 3, 0, 0, 0), (0, 8, 8, 0, 0, 0)]):
        probs[row, np.arange(6), path] = 0.9
    assert answers(probs).tolist() == ["12", "7"]
    other = probs.copy()
    other[1, 1, 8], other[1, 1, 0] = 0.01, 0.9  # "7" from one step instead of two: same string
    other[0, 2, 3], other[0, 2, 4] = 0.01, 0.9  # "13" instead of "12"
    result = parity(probs, other, np.array(["12", "7"], dtype=object), "two strings")
    assert (result["same_answers"], result["differing"]) == (1, [0])
    assert (result["keras_accuracy"], result["tflite_accuracy"]) == (1.0, 0.5)


def test_parity_problem_float32_wants_every_answer_int8_within_its_tolerances():
    good = {"n": 10_000, "same_answers": 10_000, "max_abs_diff": 5e-7,
            "keras_accuracy": 0.996, "tflite_accuracy": 0.996}
    assert parity_problem(good, "float32") == parity_problem(good, "int8") == ""
    one_differs = {**good, "same_answers": 9_999, "tflite_accuracy": 0.9961, "max_abs_diff": 0.02}
    assert "1 different answers" in parity_problem(one_differs, "float32")
    assert parity_problem(one_differs, "int8") == ""
    assert parity_problem({**one_differs, "same_answers": 9_989}, "int8")  # 11 > 0.1%
    assert parity_problem({**one_differs, "tflite_accuracy": 0.9954}, "int8")  # 0.06 points
    assert parity_problem({**one_differs, "max_abs_diff": 0.06}, "int8")
    assert "labelled" in parity_problem({**good, "keras_accuracy": None}, "int8")


def test_a_number_models_int8_is_judged_by_its_strings_and_how_often_a_sure_one_is_wrong():
    """A number model's int8: its strings' accuracy, at most 0.5% of them different, and no
    more of them wrong at min_confidence's default (a step's probability at a digit's edge may
    move by 0.2 with the string unchanged); float32 still wants every answer the same."""
    sure = np.full((2, 6, 11), 1e-5, np.float32)
    sure[:, np.arange(6), (0, 6, 0, 0, 0, 0)] = 1 - 1e-4  # "5", surely
    result = parity(sure, sure, np.array(["6", "5"], dtype=object), "two sure strings")
    assert (result["sure"], result["keras_silent"], result["tflite_silent"]) == (0.99, 0.5, 0.5)
    good = {"n": 4000, "same_answers": 3988, "max_abs_diff": 0.2, "keras_accuracy": 0.958,
            "tflite_accuracy": 0.95825, "sure": 0.99, "keras_silent": 0.002,
            "tflite_silent": 0.00175}  # the shipped number model's
    assert parity_problem(good, "int8") == ""
    assert "different answers" in parity_problem(good, "float32")
    assert "21 of 4000 strings differ" in parity_problem({**good, "same_answers": 3979}, "int8")
    assert parity_problem({**good, "tflite_accuracy": 0.9574}, "int8")  # 0.06 points below
    assert "silent errors at 0.99 +0.08 points" in parity_problem(
        {**good, "tflite_silent": 0.0028}, "int8")


def test_export_keeps_the_card_of_a_trained_model(tmp_path):
    model = small_cnn(tmp_path)
    card_path(model).write_text(json.dumps({"model_id": file_sha256(model), "arch": "x"}))
    assert main(["export", str(model), "--data", str(SAMPLE), "--precision", "float32"]) == 0
    card = json.loads(card_path(model).read_text())
    assert card["arch"] == "x" and "tflite" in card


def test_export_refuses_a_card_that_describes_another_model(tmp_path, capsys):
    model = small_cnn(tmp_path)
    card_path(model).write_text(json.dumps({"model_id": "0" * 64}))
    assert main(["export", str(model), "--data", str(SAMPLE)]) == 2
    assert "describes another model" in capsys.readouterr().err
    assert not tflite_path(model).exists()


def test_export_refuses_what_is_not_a_keras_file(tmp_path, capsys):
    (tmp_path / "x.h5").write_bytes(b"nope")
    assert main(["export", str(tmp_path / "x.h5"), "--data", str(SAMPLE)]) == 2
    assert "not a .keras file" in capsys.readouterr().err


def test_parity_counts_every_different_answer():
    keras = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], np.float32)
    tflite = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], np.float32)
    result = parity(keras, tflite, np.array([0, 1, 1]), "three")
    assert (result["n"], result["same_answers"], result["differing"]) == (3, 2, [1])
    assert result["max_abs_diff"] == pytest.approx(0.2)
    assert result["keras_accuracy"] == 1.0 and result["tflite_accuracy"] == pytest.approx(2 / 3)


def without_tensorflow(*argv: str) -> subprocess.CompletedProcess:
    """Run the CLI in a Python where `import tensorflow` fails, as after `pip install .`."""
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "from digitd.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", ["train", "export"])
def test_training_commands_say_plainly_that_tensorflow_is_missing(tmp_path, command):
    argv = [command, "--data", str(SAMPLE)] + ([str(tmp_path / "m.keras")] * (command == "export"))
    proc = without_tensorflow(*argv)
    assert proc.returncode == 2
    assert "pip install 'digitd[train]'" in proc.stderr and "Traceback" not in proc.stderr


def test_without_tensorflow_a_model_with_no_tflite_cannot_be_served(tmp_path):
    model = small_cnn(tmp_path)
    png = tmp_path / "one.png"
    with np.load(SAMPLE) as npz:
        cv2.imwrite(str(png), 255 - npz["x_test"][0])
    proc = without_tensorflow("predict", str(png), "--model", str(model))
    assert proc.returncode == 2
    assert "no small.tflite beside it" in proc.stderr
    assert "TensorFlow is not installed" in proc.stderr and "Traceback" not in proc.stderr
