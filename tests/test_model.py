"""The model contract: lazy TensorFlow import, Classifier.predict's buckets, the shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitd.model import (
    BUCKETS,
    INPUT_SIZE,
    card_path,
    default_model_path,
    file_sha256,
    import_keras,
    load_classifier,
)

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained two-layer model saved as .keras, enough to exercise loading and predict."""
    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    model.save(path)
    return path


def test_importing_model_does_not_import_tensorflow():
    code = "import sys, digitd.model; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_default_model_path_is_inside_the_package():
    path = default_model_path()
    assert path.name == "digitd-cnn.keras" and path.parent.name == "models"
    assert path.parent.parent == Path(__import__("digitd").__file__).parent
    assert card_path(path).name == "digitd-cnn.card.json"


def test_classifier_identity(tiny_model):
    classifier = load_classifier(tiny_model)
    assert classifier.model_id == file_sha256(tiny_model) and len(classifier.model_id) == 64
    assert classifier.card == {}  # no card beside it


@pytest.mark.parametrize("n", [0, 1, 3, 64, 300])
def test_predict_shapes_and_probabilities(tiny_model, n):
    classifier = load_classifier(tiny_model)
    probs = classifier.predict(np.random.default_rng(n).random((n, 28, 28), dtype=np.float32))
    assert probs.shape == (n, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_results(tiny_model):
    classifier = load_classifier(tiny_model)
    x = np.random.default_rng(1).random((5, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    together = classifier.predict(x)
    one_by_one = np.concatenate([classifier.predict(x[i:i + 1]) for i in range(5)])
    assert np.allclose(together, one_by_one, atol=1e-6)


def test_buckets_never_retrace_after_warm_up(tiny_model):
    classifier = load_classifier(tiny_model)
    classifier.warm_up(max_batch=BUCKETS[-1])
    traced = classifier._fn.experimental_get_tracing_count()
    assert traced == len(BUCKETS)
    for n in (1, 3, 7, 33, 100, 256, 700):
        classifier.predict(np.zeros((n, 28, 28), np.float32))
    assert classifier._fn.experimental_get_tracing_count() == traced


def test_predict_rejects_wrong_shape(tiny_model):
    with pytest.raises(ValueError, match="expected"):
        load_classifier(tiny_model).predict(np.zeros((2, 32, 32), np.float32))


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        load_classifier(tmp_path / "nothing.keras")


@pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model yet")
def test_shipped_model_is_accurate_and_matches_its_card():
    classifier = load_classifier()
    assert classifier.card["model_id"] == classifier.model_id
    assert classifier.card["test"]["accuracy"] >= 0.995
    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"].astype(np.float32) / 255.0, npz["y_test"]
    accuracy = (classifier.predict(x).argmax(axis=1) == y).mean()
    assert accuracy >= 0.99  # the sample's 1,000 test digits
    assert json.loads(card_path(classifier.path).read_text())["arch"] == "cnn"
