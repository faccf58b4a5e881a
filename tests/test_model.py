"""The model contract: lazy TensorFlow import, both runtimes, which file is served and why,
Classifier.predict's chunks and buckets, the shipped model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitd.export import export_tflite, parity_problem, record
from digitd.model import (
    BUCKETS,
    INPUT_SIZE,
    ModelError,
    card_path,
    default_model_path,
    file_sha256,
    import_keras,
    load_classifier,
    tflite_path,
    with_second_opinion,
)

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained two-layer model saved as .keras and exported beside it (.tflite + card)."""
    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    model.save(path)
    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"][:200].astype(np.float32) / 255.0, npz["y_test"][:200]
    record(path, export_tflite(path, x, y, "sample"))
    return path


@pytest.fixture(params=["litert", "tensorflow"])
def runtime(request) -> str:
    return request.param


def copy_model(source: Path, folder: Path, *suffixes: str) -> Path:
    """Copy the .keras and the named siblings (".tflite", ".card.json") into `folder`."""
    folder.mkdir(exist_ok=True)
    target = folder / source.name
    shutil.copy(source, target)
    for suffix in suffixes:
        sibling = source.with_name(source.stem + suffix)
        shutil.copy(sibling, folder / sibling.name)
    return target


def test_importing_model_does_not_import_tensorflow():
    code = "import sys, digitd.model; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_default_model_path_is_inside_the_package():
    path = default_model_path()
    assert path.name == "digitd-cnn.keras" and path.parent.name == "models"
    assert path.parent.parent == Path(__import__("digitd").__file__).parent
    assert card_path(path).name == "digitd-cnn.card.json"


def test_classifier_identity(tiny_model, runtime):
    classifier = load_classifier(tiny_model, runtime=runtime)
    assert classifier.model_id == file_sha256(tiny_model) and len(classifier.model_id) == 64
    assert classifier.runtime == runtime
    assert classifier.served == (tflite_path(tiny_model) if runtime == "litert" else tiny_model)
    assert classifier.card["model_id"] == classifier.model_id  # the card export started


def test_auto_serves_the_tflite_the_card_vouches_for(tiny_model):
    classifier = load_classifier(tiny_model)
    assert (classifier.runtime, classifier.fallback) == ("litert", "")
    assert classifier.card["tflite"]["sha256"] == file_sha256(tflite_path(tiny_model))


@pytest.mark.parametrize(("siblings", "tamper", "reason"), [
    ((), False, "no tiny.tflite beside it"),
    ((".tflite",), False, "its card does not vouch for tiny.tflite"),
    ((".tflite", ".card.json"), True, "tiny.tflite is not the file its card records"),
])
def test_falls_back_to_the_keras_and_says_why(tiny_model, tmp_path, siblings, tamper, reason):
    model = copy_model(tiny_model, tmp_path / "m", *siblings)
    if tamper:
        with open(tflite_path(model), "ab") as f:
            f.write(b"\0")
    classifier = load_classifier(model)
    assert classifier.runtime == "tensorflow" and classifier.served == model
    assert reason in classifier.fallback
    assert classifier.model_id == file_sha256(tiny_model)  # the same id either way
    with pytest.raises(ModelError, match=reason):
        load_classifier(model, runtime="litert")


def test_a_stale_card_is_not_trusted(tiny_model, tmp_path):
    """A .keras replaced after the export (retrained, fine-tuned): its old .tflite is not
    served for it."""
    model = copy_model(tiny_model, tmp_path / "m", ".tflite", ".card.json")
    keras = import_keras()
    other = keras.Sequential([keras.Input(shape=(28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    other.save(model)
    classifier = load_classifier(model)
    assert classifier.runtime == "tensorflow" and "does not vouch" in classifier.fallback


@pytest.mark.parametrize("n", [0, 1, 3, 64, 300])
def test_predict_shapes_and_probabilities(tiny_model, runtime, n):
    classifier = load_classifier(tiny_model, runtime=runtime)
    probs = classifier.predict(np.random.default_rng(n).random((n, 28, 28), dtype=np.float32))
    assert probs.shape == (n, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_runtimes_agree(tiny_model):
    x = np.random.default_rng(2).random((300, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    litert = load_classifier(tiny_model, runtime="litert").predict(x)
    tensorflow = load_classifier(tiny_model, runtime="tensorflow").predict(x)
    assert np.abs(litert - tensorflow).max() < 1e-5


def test_batch_size_does_not_change_results(tiny_model, runtime):
    classifier = load_classifier(tiny_model, runtime=runtime)
    x = np.random.default_rng(1).random((5, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    together = classifier.predict(x)
    one_by_one = np.concatenate([classifier.predict(x[i:i + 1]) for i in range(5)])
    assert np.allclose(together, one_by_one, atol=1e-6)


def test_buckets_never_retrace_after_warm_up(tiny_model):
    classifier = load_classifier(tiny_model, runtime="tensorflow")
    classifier.warm_up(max_batch=BUCKETS[-1])
    traced = classifier._run.fn.experimental_get_tracing_count()
    assert traced == len(BUCKETS)
    for n in (1, 3, 7, 33, 100, 256, 700):
        classifier.predict(np.zeros((n, 28, 28), np.float32))
    assert classifier._run.fn.experimental_get_tracing_count() == traced


def test_predict_rejects_wrong_shape(tiny_model, runtime):
    with pytest.raises(ValueError, match="expected"):
        load_classifier(tiny_model, runtime=runtime).predict(np.zeros((2, 32, 32), np.float32))


def test_a_tflite_path_names_the_model_beside_it(tiny_model):
    classifier = load_classifier(tflite_path(tiny_model))
    assert (classifier.path, classifier.runtime) == (tiny_model, "litert")
    assert classifier.model_id == file_sha256(tiny_model)


@pytest.fixture
def with_second(tiny_model, tmp_path) -> Path:
    """tiny.keras in a folder of its own, whose card names other.keras (another untrained
    model, exported) as its second opinion (below 0.5, at weight 0.25)."""
    model = copy_model(tiny_model, tmp_path / "pair", ".tflite", ".card.json")
    keras = import_keras()
    keras.utils.set_random_seed(1)
    other = keras.Sequential([keras.Input(shape=(28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    second = model.with_name("other.keras")
    other.save(second)
    with np.load(SAMPLE) as npz:
        x = npz["x_test"][:50].astype(np.float32) / 255.0
    record(second, export_tflite(second, x, None, "sample"))
    card = json.loads(card_path(model).read_text())
    card["second_opinion"] = {"model": "other.keras", "model_id": file_sha256(second),
                              "below": 0.5, "weight": 0.25}
    card_path(model).write_text(json.dumps(card))
    return model


def test_with_second_opinion_averages_only_the_unsure_rows():
    first = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], np.float32)
    x = np.arange(3)
    asked = []

    def second(rows):
        asked.append(rows.tolist())
        return np.tile(np.array([[0.0, 1.0]], np.float32), (len(rows), 1))

    out = with_second_opinion(first, x, second, below=0.7, weight=0.25)
    assert asked == [[1, 2]]  # only the rows below 0.7 are asked
    assert np.allclose(out, [[0.9, 0.1], [0.45, 0.55], [0.375, 0.625]])
    assert np.array_equal(first[1], np.float32([0.6, 0.4]))  # the input is left alone


def test_a_card_named_second_opinion_is_served(tiny_model, with_second, runtime):
    x = np.random.default_rng(3).random((40, 28, 28), dtype=np.float32)
    own = load_classifier(tiny_model, runtime=runtime).predict(x)  # the same file, no second
    below = float(np.median(own.max(axis=1)))  # half the digits ask the second opinion
    card = json.loads(card_path(with_second).read_text())
    card["second_opinion"]["below"] = below
    card_path(with_second).write_text(json.dumps(card))
    pair = load_classifier(with_second, runtime=runtime)
    assert pair.second is not None and (pair.below, pair.weight) == (below, 0.25)
    assert pair.second.path.name == "other.keras" and pair.model_id == file_sha256(tiny_model)
    served, second = pair.predict(x), pair.second.predict(x)
    unsure = own.max(axis=1) < below
    assert 0 < unsure.sum() < len(x)
    assert np.allclose(served[~unsure], own[~unsure], atol=1e-6)
    assert np.allclose(served[unsure], 0.75 * own[unsure] + 0.25 * second[unsure], atol=1e-6)


@pytest.mark.parametrize(("change", "reason"), [
    ("remove", "no such file beside it"),
    ("replace", "is not the second opinion its card records"),
])
def test_a_missing_or_other_second_opinion_is_refused(with_second, change, reason):
    second = with_second.with_name("other.keras")
    if change == "remove":
        second.unlink()
    else:
        keras = import_keras()
        keras.Sequential([keras.Input(shape=(28, 28)), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax")]).save(second)
    with pytest.raises(ModelError, match=reason):
        load_classifier(with_second)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        load_classifier(tmp_path / "nothing.keras")


@pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model yet")
def test_shipped_model_is_accurate_and_matches_its_card():
    classifier = load_classifier()
    assert (classifier.runtime, classifier.fallback) == ("litert", "")
    assert classifier.card["model_id"] == classifier.model_id
    assert classifier.card["test"]["accuracy"] >= 0.995
    entry = classifier.card["tflite"]
    assert entry["precision"] == "int8" and parity_problem(entry["parity"], "int8") == ""
    assert entry["parity"]["n"] == 10_000  # the MNIST test set
    assert classifier.card["as_served"]["mnist_test"] >= 0.996  # with its second opinion
    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"].astype(np.float32) / 255.0, npz["y_test"]
    accuracy = (classifier.predict(x).argmax(axis=1) == y).mean()
    assert accuracy >= 0.99  # the sample's 1,000 test digits
    assert json.loads(card_path(classifier.path).read_text())["arch"] == "cnn"
