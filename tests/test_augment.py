"""digitd.augment: varied digits still meet the model's input contract, repeatably."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitd.augment import augment_batch, continental_forms

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"


@pytest.fixture(scope="module")
def digits():
    with np.load(SAMPLE) as npz:
        return npz["x_train"][:256], npz["y_train"][:256]


def _augment(x, step, seed=1):
    from digitd.model import import_keras

    import_keras()
    import tensorflow as tf

    return augment_batch(tf.constant(x.astype(np.float32) / 255), tf.constant(step), seed).numpy()


def test_output_meets_the_input_contract(digits):
    x, _ = digits
    out = _augment(x, 0)
    assert out.shape == (256, 28, 28) and out.dtype == np.float32
    assert out.min() >= 0 and np.allclose(out.max(axis=(1, 2)), 1.0)
    sides, offsets = [], []
    for img in out:
        ink = img > 0.1
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        sides.append(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)
        total = img.sum()
        cy = (img.sum(1) @ np.arange(28)) / total
        cx = (img.sum(0) @ np.arange(28)) / total
        offsets.append(max(abs(cy - 14), abs(cx - 14)))
    # fitted to 20x20 (a low-resolution round trip or a blur widens the edge by a pixel or two)
    assert 18 <= np.median(sides) <= 22 and max(sides) <= 25
    assert np.median(offsets) < 0.8 and max(offsets) < 2.5


def test_varied_but_repeatable(digits):
    x, _ = digits
    a, b, c = _augment(x[:64], 3), _augment(x[:64], 3), _augment(x[:64], 4)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    changed = np.abs(a - x[:64] / 255).mean(axis=(1, 2))
    assert (changed > 0.02).mean() > 0.5  # most digits visibly moved


def test_continental_forms(digits):
    x, y = digits
    cx, cy = continental_forms(x, y, np.random.default_rng(0), share=0.5)
    sevens, ones = (y == 7).sum(), (y == 1).sum()
    assert (cy == 7).sum() == sevens // 2 and (cy == 1).sum() == ones // 2
    assert cx.shape[1:] == (28, 28) and cx.dtype == np.uint8
    again_x, _ = continental_forms(x, y, np.random.default_rng(0), share=0.5)
    assert np.array_equal(cx, again_x)
    rng = np.random.default_rng(0)
    idx7 = rng.choice(np.flatnonzero(y == 7), size=sevens // 2, replace=False)
    added = (cx[cy == 7] > 127).sum(axis=(1, 2)) - (x[idx7] > 127).sum(axis=(1, 2))
    assert (added > 3).all()  # a bar was drawn on each
