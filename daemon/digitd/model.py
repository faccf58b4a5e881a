"""The model contract and loading: what a digitd model takes, what it returns, and how it runs fast.

THE INPUT CONTRACT (the one place it is written down; preprocessing produces exactly this):

    a batch of shape (N, 28, 28), dtype float32, values in [0, 1],
    ink bright (1.0) on a dark background (0.0), MNIST-normalised:
    the digit scaled to fit a 20x20 box keeping its aspect ratio, then placed in the 28x28
    image so that its centre of mass is at the centre.

The output is (N, 10) float32 softmax probabilities for the digits 0..9.

TensorFlow is imported inside functions only, so importing this module (and `digitd --help`)
stays instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_SIZE = 28  # see the input contract above
NUM_CLASSES = 10
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # batch sizes the compiled function is traced for


def default_model_path() -> Path:
    """The model shipped inside the package (trained by `digitd train --arch cnn`)."""
    return Path(__file__).resolve().parent / "models" / "digitd-cnn.keras"


def card_path(model_path: Path) -> Path:
    """`digitd-cnn.keras` -> `digitd-cnn.card.json` beside it."""
    return model_path.with_name(model_path.name.removesuffix(".keras") + ".card.json")


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file: a model's id is the hash of its .keras file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quiet_tensorflow() -> bool:
    """Ask TensorFlow for errors only, unless the user chose a level; True if we chose it."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # C++: warnings and errors only
    return True


@contextlib.contextmanager
def _stderr_muted(enabled: bool):
    """Silence file descriptor 2 for the block (C++ code writes there directly).

    TensorFlow's absl logging prints INFO lines ("oneDNN custom operations are on", "failed
    call to cuInit") before absl is initialised, ignoring TF_CPP_MIN_LOG_LEVEL; the only way
    to hide them is to point fd 2 at /dev/null while TensorFlow loads.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras():
    """Import Keras (and TensorFlow) quietly; returns the keras module."""
    chose_level = quiet_tensorflow()
    with _stderr_muted(chose_level and "tensorflow" not in sys.modules):
        import tensorflow as tf

        tf.config.list_physical_devices()  # device probing logs the cuInit failure: do it here
        import keras
    tf.get_logger().setLevel("ERROR")
    return keras


@dataclass
class Classifier:
    """A loaded model plus its identity; `predict` is the fast path the daemon uses."""

    path: Path
    model_id: str  # SHA-256 hex of the .keras file
    card: dict[str, Any]  # the model card JSON beside the model, {} if absent
    model: Any = field(repr=False, default=None)
    _fn: Any = field(repr=False, default=None)
    _lock: threading.Lock = field(repr=False, default_factory=threading.Lock)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 28, 28) float32 in [0, 1] -> (N, 10) float32 probabilities.

        Not `model.predict` (about 50 ms of overhead per call): the model runs inside one
        tf.function, and N is padded up to a fixed bucket size so the function never retraces.
        """
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}), got {x.shape}")
        top = BUCKETS[-1]
        parts = [self._predict_bucket(x[i:i + top]) for i in range(0, len(x), top)]
        if not parts:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        return np.concatenate(parts)

    def _predict_bucket(self, x: np.ndarray) -> np.ndarray:
        """Pad x (at most the largest bucket) up to its bucket, run the function, trim."""
        n = len(x)
        size = next(b for b in BUCKETS if b >= n)
        if size != n:
            x = np.concatenate([x, np.zeros((size - n, INPUT_SIZE, INPUT_SIZE), np.float32)])
        with self._lock:  # one call at a time: Keras layers are not re-entrant across threads
            out = self._fn(x)
        return np.asarray(out, dtype=np.float32)[:n]

    def warm_up(self, max_batch: int = 64) -> None:
        """Trace and run every bucket up to `max_batch` once, so the first real batch is fast."""
        last = next((b for b in BUCKETS if b >= max_batch), BUCKETS[-1])
        for size in BUCKETS[: BUCKETS.index(last) + 1]:
            self.predict(np.zeros((size, INPUT_SIZE, INPUT_SIZE), np.float32))


def load_classifier(path: str | Path | None = None, threads: int | None = None) -> Classifier:
    """Load a .keras model (default: the shipped one) without its training configuration.

    `threads` caps TensorFlow's thread pools (a worker process that shares the machine with
    others gets its share of the cores); None lets TensorFlow use every core.
    """
    model_path = Path(path) if path is not None else default_model_path()
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    keras = import_keras()
    import tensorflow as tf

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already running in this process: keep its pools
            pass

    model = keras.saving.load_model(model_path, compile=False)
    # One trace per bucket size (shapes are fixed by the padding); no XLA: jit_compile=True
    # needs writable+executable memory, which systemd's MemoryDenyWriteExecute forbids.
    fn = tf.function(lambda x: model(x, training=False), jit_compile=False)
    card_file = card_path(model_path)
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return Classifier(path=model_path, model_id=file_sha256(model_path), card=card,
                      model=model, _fn=fn)
