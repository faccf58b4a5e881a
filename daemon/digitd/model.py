"""The model contract and loading: what a digitd model takes, what it returns, and how it runs fast.

THE INPUT CONTRACT (the one place it is written down; preprocessing produces exactly this):

    a batch of shape (N, 28, 28), dtype float32, values in [0, 1],
    ink bright (1.0) on a dark background (0.0), MNIST-normalised:
    the digit scaled to fit a 20x20 box keeping its aspect ratio, then placed in the 28x28
    image so that its centre of mass is at the centre.

The output is (N, 10) float32 softmax probabilities for the digits 0..9.

A model is a `.keras` file (written by `digitd train`), a `.tflite` converted from it
(digitd.export: int8 weights, float32 if those fail the parity check) and a `.card.json`,
side by side. Serving (`digitd run`, `digitd predict`)
runs the `.tflite` through LiteRT (ai-edge-litert, XNNPACK kernels) and never imports
TensorFlow; it runs the `.keras` through TensorFlow only when the `.tflite` cannot be served
(missing, not vouched for by the card, or no LiteRT), and says why (`Classifier.fallback`).

THE MODEL ID (the CSV's `model` column) is the SHA-256 of the `.keras` file, whichever file
is served: the `.tflite` is served only if the card records that it was converted from
exactly that `.keras` (the card's `model_id`) and records the `.tflite`'s own SHA-256, so
both runtimes of one model give one id (an int8 `.tflite`'s probabilities differ from the
`.keras`'s by up to a few hundredths; its card records how much, and the figures as served).

A SECOND OPINION: a model's card may name another model beside it (`second_opinion`: its
file, its id, `below` and `weight`). `digitd train` trains one for the CNN: a network of the
same shape that saw MNIST's writers only, gently varied, while the served network is trained
for other writers too. The two err on different digits, so the served network's answer
stands when it is sure (top probability at least `below`), and below that the two networks'
probabilities are averaged (`weight` for the second's). The second model is loaded like the
first (its own `.tflite` and card); it must be the file the card records, or nothing is
served. The model id stays the first `.keras` file's hash: the card written with it names
the second by its hash.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_SIZE = 28  # see the input contract above
NUM_CLASSES = 10
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # TensorFlow: batch sizes the function is traced for
MAX_CHUNK = BUCKETS[-1]  # the most inputs run in one call, whatever the runtime
RUNTIMES = ("auto", "litert", "tensorflow")


class ModelError(Exception):
    """The model cannot be served (the message says why, in one line)."""


def default_model_path() -> Path:
    """The model shipped inside the package (trained by `digitd train --arch cnn`)."""
    return Path(__file__).resolve().parent / "models" / "digitd-cnn.keras"


def _sibling(model_path: Path, suffix: str) -> Path:
    return model_path.with_name(model_path.name.removesuffix(".keras") + suffix)


def card_path(model_path: Path) -> Path:
    """`digitd-cnn.keras` -> `digitd-cnn.card.json` beside it."""
    return _sibling(model_path, ".card.json")


def tflite_path(model_path: Path) -> Path:
    """`digitd-cnn.keras` -> `digitd-cnn.tflite` beside it (what serving runs)."""
    return _sibling(model_path, ".tflite")


def read_card(model_path: Path) -> dict[str, Any]:
    """The model card beside the model, {} if there is none."""
    path = card_path(model_path)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_card(model_path: Path, card: dict[str, Any]) -> None:
    """Write the model card beside the model, atomically (indented JSON, one final newline)."""
    from digitd.fsutil import write_atomic

    write_atomic(card_path(model_path), (json.dumps(card, indent=2) + "\n").encode())


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
    call to cuInit") before absl is initialised, ignoring TF_CPP_MIN_LOG_LEVEL, and LiteRT
    prints "INFO: Created TensorFlow Lite XNNPACK delegate"; the only way to hide them is to
    point fd 2 at /dev/null while they load.
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

    path: Path  # the .keras file: the model's identity
    model_id: str  # SHA-256 hex of the .keras file
    card: dict[str, Any]  # the model card JSON beside the model, {} if absent
    runtime: str  # "litert" (the .tflite) or "tensorflow" (the .keras)
    served: Path  # the file actually run
    fallback: str = ""  # why the .tflite is not served; "" when it is
    shape: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)  # one input's (digitd.strip: a line's)
    second: Classifier | None = None  # the second opinion (module docstring), if the card names one
    below: float = 0.0  # ... asked for the digits whose top probability is below this
    weight: float = 0.5  # ... and its share of the average
    second_reading: Classifier | None = None  # a number model's second (digitd.ctc.load)
    _run: Callable[[np.ndarray], np.ndarray] = field(repr=False, default=None)
    _lock: threading.Lock = field(repr=False, default_factory=threading.Lock)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 28, 28) float32 in [0, 1] -> (N, 10) float32 probabilities, MAX_CHUNK at a time."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != self.shape:
            raise ValueError(f"expected (N, {self.shape[0]}, {self.shape[1]}), got {x.shape}")
        parts = []
        for i in range(0, len(x), MAX_CHUNK):
            with self._lock:  # one call at a time: neither runtime is re-entrant
                parts.append(self._run(x[i:i + MAX_CHUNK]))
        if not parts:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        probs = np.concatenate(parts)
        if self.second is None:
            return probs
        return with_second_opinion(probs, x, self.second.predict, self.below, self.weight)

    def warm_up(self, max_batch: int = 64) -> None:
        """Run every bucket up to `max_batch` once, so the first real batch is fast."""
        last = next((b for b in BUCKETS if b >= max_batch), BUCKETS[-1])
        for size in BUCKETS[: BUCKETS.index(last) + 1]:
            self.predict(np.zeros((size, *self.shape), np.float32))
        for other in (self.second, self.second_reading):
            if other is not None:
                other.warm_up(max_batch)


def with_second_opinion(probs: np.ndarray, x: np.ndarray,
                        second: Callable[[np.ndarray], np.ndarray], below: float,
                        weight: float) -> np.ndarray:
    """`probs` (the first model's, for inputs `x`), where the top probability is below
    `below` averaged with `second`'s probabilities for those inputs (`weight` its share)."""
    unsure = probs.max(axis=1) < below
    if not unsure.any():
        return probs
    probs = probs.copy()
    probs[unsure] = (1 - weight) * probs[unsure] + weight * second(x[unsure])
    return probs


class LiteRTRunner:
    """The .tflite through LiteRT's interpreter (XNNPACK); resized to each batch's size.

    Resizing the input costs microseconds with XNNPACK (measured), so batches are not padded.
    `free_width`: the model takes inputs of any width (the number model's, digitd.ctc runs
    strips cut short); it is then resized to each batch's width too.
    """

    def __init__(self, path: Path, threads: int | None,
                 shape: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.shape = tuple(shape)
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or _cores())
        details = self.interpreter.get_input_details()[0]
        self._input = details["index"]
        self.free_width = len(details["shape_signature"]) == 3 and \
            details["shape_signature"][2] == -1
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._size: tuple[int, ...] = ()
        with _stderr_muted(True):  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self._resize((1, *self.shape))

    def _resize(self, size: tuple[int, ...]) -> None:
        self.interpreter.resize_tensor_input(self._input, list(size))
        self.interpreter.allocate_tensors()
        self._size = size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self._size:
            self._resize(x.shape)
        self.interpreter.set_tensor(self._input, np.ascontiguousarray(x))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output).copy()


class KerasRunner:
    """The .keras through TensorFlow: one tf.function, N padded up to a bucket so it never
    retraces (not `model.predict`, which costs ~50 ms a call)."""

    def __init__(self, path: Path, threads: int | None,
                 shape: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> None:
        self.shape = tuple(shape)
        if "TF_ENABLE_ONEDNN_OPTS" not in os.environ and not write_execute_allowed():
            # oneDNN's JIT aborts the process under MemoryDenyWriteExecute=yes
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        keras = import_keras()
        import tensorflow as tf

        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # TensorFlow already running in this process: keep its pools
                pass
        self.model = keras.saving.load_model(path, compile=False)
        # No XLA: jit_compile=True needs writable+executable memory (MemoryDenyWriteExecute).
        self.fn = tf.function(lambda x: self.model(x, training=False), jit_compile=False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = next(b for b in BUCKETS if b >= n)
        if size != n:
            x = np.concatenate([x, np.zeros((size - n, *self.shape), np.float32)])
        return np.asarray(self.fn(x), dtype=np.float32)[:n]


def write_execute_allowed() -> bool:
    """False under systemd's MemoryDenyWriteExecute=yes (no writable+executable mapping)."""
    import mmap

    try:
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
    except OSError:
        return False
    return True


def _cores() -> int:
    return len(os.sched_getaffinity(0)) or 1


def tflite_problem(model_path: Path, model_id: str, card: dict[str, Any]) -> str:
    """Why the .tflite beside `model_path` must not be served for it; "" if it may."""
    tflite = tflite_path(model_path)
    if not tflite.is_file():
        return f"no {tflite.name} beside it (digitd export converts it)"
    entry = card.get("tflite") or {}
    if card.get("model_id") != model_id or not entry.get("sha256"):
        return (f"its card does not vouch for {tflite.name} (re-export: "
                f"digitd export {model_path.name})")
    if entry["sha256"] != file_sha256(tflite):
        return f"{tflite.name} is not the file its card records (re-export it)"
    return ""


def load_classifier(path: str | Path | None = None, threads: int | None = None,
                    runtime: str = "auto",
                    shape: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE),
                    wrap: Callable[[Callable], Callable] | None = None) -> Classifier:
    """Load a model (default: the shipped one) for serving; see the module's docstring.

    `path` names the .keras file (a .tflite path is taken as the .keras beside it).

    `runtime`: "auto" serves the .tflite if it can and falls back to the .keras (the reason is
    in `Classifier.fallback`); "litert" or "tensorflow" insist on one. `threads` caps the
    runtime's threads (a worker process gets its share of the cores); None uses every core.
    `shape`: one input's shape (the number model takes digitd.strip's); `wrap`: applied to
    the runner (LiteRTRunner or KerasRunner) each call goes through (the number model's:
    digitd.ctc.CutStrips, which runs strips in small chunks that stay in the caches).
    Raises FileNotFoundError for a missing .keras file and ModelError if nothing can serve it
    or its card's arch says it is the other kind (a digit model asked for numbers, or the
    other way round).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    model_path = Path(path) if path is not None else default_model_path()
    if model_path.suffix == ".tflite":  # the model is named by its .keras (its identity)
        model_path = model_path.with_suffix(".keras")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    classifier = _load_one(model_path, threads, runtime, tuple(shape), wrap)
    arch, numbers = classifier.card.get("arch"), tuple(shape) != (INPUT_SIZE, INPUT_SIZE)
    if arch is not None and (arch == "numbers") != numbers:  # one given for the other
        raise ModelError(f"{model_path.name}: its card says arch {arch!r}: "
                         + ("not a number model (give a digitd-numbers.keras)" if numbers else
                            "a number model, not a digit model (give it as number_model)"))
    entry = classifier.card.get("second_opinion")
    if entry:
        second = companion(classifier, entry, "second opinion",
                           lambda p: _load_one(p, threads, runtime, tuple(shape), wrap))
        classifier.second, classifier.below, classifier.weight = (
            second, float(entry["below"]), float(entry["weight"]))
    return classifier


def companion(first: Classifier, entry: dict[str, Any], what: str,
              load: Callable[[Path], Classifier]) -> Classifier:
    """The model `first`'s card names beside it (`entry`: its file and model id), loaded by
    `load`: the digit model's second opinion, the number model's second (digitd.ctc.load).
    Raises ModelError when the file is missing or is not the one the card records; a
    fallback it is served through is said in `first.fallback` too."""
    path = first.path.with_name(entry["model"])
    if not path.is_file():
        raise ModelError(f"{first.path.name}: its card names {entry['model']} as its {what}, "
                         f"and there is no such file beside it")
    other = load(path)
    if other.model_id != entry["model_id"]:
        raise ModelError(f"{first.path.name}: {entry['model']} is not the {what} its card "
                         f"records")
    if other.fallback and not first.fallback:
        first.fallback = f"{what} {entry['model']}: {other.fallback}"
    return other


def _load_one(model_path: Path, threads: int | None, runtime: str,
              shape: tuple[int, int], wrap: Callable | None = None) -> Classifier:
    """One model file, through the .tflite if it can (see load_classifier)."""
    model_id = file_sha256(model_path)
    card = read_card(model_path)
    common = {"path": model_path, "model_id": model_id, "card": card, "shape": shape}
    fallback = ""
    if runtime != "tensorflow":
        fallback = tflite_problem(model_path, model_id, card)
        if not fallback:
            try:
                run = LiteRTRunner(tflite_path(model_path), threads, shape)
                return Classifier(**common, runtime="litert", served=tflite_path(model_path),
                                  _run=wrap(run) if wrap else run)
            except ImportError:
                fallback = "LiteRT is not installed (pip install ai-edge-litert)"
            except (ValueError, RuntimeError) as exc:
                fallback = f"LiteRT cannot load {tflite_path(model_path).name}: {exc}"
        if runtime == "litert":
            raise ModelError(f"{model_path.name}: cannot serve through LiteRT: {fallback}")
    try:
        run = KerasRunner(model_path, threads, shape)
    except ImportError as exc:
        why = f"{fallback}, and " if fallback else ""
        raise ModelError(f"{model_path.name}: {why}TensorFlow is not installed for the .keras "
                         f"(pip install 'digitd[train]'): {exc}") from exc
    return Classifier(**common, runtime="tensorflow", served=model_path, fallback=fallback,
                      _run=wrap(run) if wrap else run)
