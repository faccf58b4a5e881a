"""Convert a `.keras` model to the `.tflite` that serving runs, and prove that they agree.

`export_tflite` converts (TensorFlow's TFLite converter, float32: no quantisation), runs both
models on a test set (the `.tflite` through the very runner serving uses, digitd.model), and
refuses to write the `.tflite` unless every digit gets the same answer and no probability
differs by more than PARITY_TOLERANCE. It returns the card's `tflite` entry: the file's
SHA-256, the `.keras` it came from and the parity measured. Serving trusts a `.tflite` only
when the card beside it holds that entry (digitd.model.tflite_problem).

Used by `digitd train` (on the test set it trained against), by `digitd export MODEL.keras`
for an existing model, and by anything else that writes a `.keras` (fine-tuning, retraining).
Needs TensorFlow (the `train` extra).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from digitd.codes import ExitCode
from digitd.fsutil import write_atomic
from digitd.model import (
    LiteRTRunner,
    card_path,
    file_sha256,
    import_keras,
    read_card,
    tflite_path,
)

PARITY_TOLERANCE = 1e-4  # largest probability difference accepted (float32 gives ~1e-6)


class ExportError(Exception):
    """The conversion failed or the two models disagree; the message says how."""


def convert(model) -> bytes:
    """A loaded Keras model -> .tflite bytes (float32, input (N, 28, 28) with N free)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # The converter exports a SavedModel first and prints its signature on stdout; Keras'
    # tensors warn of numpy 2's copy keyword meanwhile.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return converter.convert()


def parity(keras_probs: np.ndarray, tflite_probs: np.ndarray, labels: np.ndarray | None,
           data: str) -> dict[str, Any]:
    """How closely the .tflite's probabilities follow the .keras's on one test set. An answer
    is the most probable class of each row (of each output step, for the number model's
    (N, steps, classes)); `labels` None: no accuracy (the number model's are strings)."""
    keras_answer, tflite_answer = keras_probs.argmax(axis=-1), tflite_probs.argmax(axis=-1)
    differs = (keras_answer != tflite_answer).reshape(len(keras_answer), -1).any(axis=1)
    differing = np.flatnonzero(differs)
    n = len(keras_answer)
    return {
        "data": data,
        "n": int(n),
        "same_answers": int(n - len(differing)),
        "differing": differing[:20].tolist(),  # indices of the first few, if any
        "max_abs_diff": float(np.abs(keras_probs - tflite_probs).max(initial=0.0)),
        "keras_accuracy": None if labels is None
        else round(float((keras_answer == labels).mean()), 6),
        "tflite_accuracy": None if labels is None
        else round(float((tflite_answer == labels).mean()), 6),
    }


def export_tflite(keras_file: Path, x: np.ndarray, y: np.ndarray | None, data: str,
                  model=None) -> dict[str, Any]:
    """Write `<name>.tflite` beside `keras_file` and return the card's `tflite` entry.

    x: (N, 28, 28) float32 test inputs (the model's input contract; the number model's
    strips), y: their labels (None for the number model), data: what they are (for the
    card). `model`: the loaded Keras model if the caller has it.
    Raises ExportError (writing nothing) if the two models disagree.
    """
    keras = import_keras()
    keras_file = Path(keras_file)
    if model is None:
        model = keras.saving.load_model(keras_file, compile=False)
    started = time.monotonic()
    try:
        content = convert(model)
    except Exception as exc:  # the converter raises many kinds; one line for the user
        raise ExportError(f"{keras_file.name}: conversion failed: {exc}") from exc
    seconds = time.monotonic() - started
    keras_probs = np.asarray(model.predict(x, batch_size=500, verbose=0), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:  # run it exactly as serving will
        candidate = Path(tmp) / "candidate.tflite"
        candidate.write_bytes(content)
        runner = LiteRTRunner(candidate, threads=None, shape=x.shape[1:])
        tflite_probs = np.concatenate(
            [runner(x[i:i + 256]) for i in range(0, len(x), 256)] or [keras_probs[:0]])
    result = parity(keras_probs, tflite_probs, y, data)
    if result["same_answers"] != result["n"] or result["max_abs_diff"] > PARITY_TOLERANCE:
        raise ExportError(
            f"{keras_file.name}: the .tflite disagrees with the .keras on {data}: "
            f"{result['n'] - result['same_answers']} different answers, largest probability "
            f"difference {result['max_abs_diff']:.2g} (tolerance {PARITY_TOLERANCE:g})")
    target = tflite_path(keras_file)
    write_atomic(target, content)
    from importlib.metadata import version

    import tensorflow as tf

    return {
        "name": target.name,
        "sha256": file_sha256(target),
        "bytes": len(content),
        "converted_from": file_sha256(keras_file),  # the .keras, i.e. the model id
        "precision": "float32",
        "converter": f"tensorflow {tf.__version__}",
        "runtime": f"ai-edge-litert {version('ai-edge-litert')}",
        "conversion_seconds": round(seconds, 2),
        "parity": result,
    }


def tflite_card_entry(keras_file: Path, x: np.ndarray, y: np.ndarray | None,
                      data: str) -> dict:
    """`export_tflite` for a card being written: its entry, or {"error": why} (logged) if
    the two models disagree (serving then falls back to the .keras, and says why)."""
    try:
        return export_tflite(keras_file, x, y, data)
    except ExportError as exc:
        import structlog

        structlog.get_logger("digitd.export").error("tflite_export_failed", error=str(exc))
        return {"error": str(exc)}


def record(keras_file: Path, entry: dict[str, Any]) -> Path:
    """Put `entry` into the card beside `keras_file` as its `tflite` (a minimal card is
    started if there is none: the model id and the entry)."""
    card = read_card(keras_file) or {"name": keras_file.name}
    card["model_id"] = entry["converted_from"]
    card["tflite"] = entry
    target = card_path(keras_file)
    write_atomic(target, (json.dumps(card, indent=2) + "\n").encode())
    return target


def export_command(args) -> int:
    """`digitd export MODEL.keras [--data DIR]`: convert, check parity, update the card."""
    from digitd.dataset import DatasetError, load_mnist

    keras_file = Path(args.model)
    if not keras_file.is_file() or keras_file.suffix != ".keras":
        print(f"digitd export: {keras_file}: not a .keras file", file=sys.stderr)
        return ExitCode.USAGE
    card = read_card(keras_file)
    if card.get("model_id") not in (None, file_sha256(keras_file)):
        print(f"digitd export: {card_path(keras_file).name} describes another model "
              f"(model_id {card['model_id'][:12]}); not touching it", file=sys.stderr)
        return ExitCode.USAGE
    try:
        data = load_mnist(args.data, verify=not getattr(args, "no_verify", False))
    except DatasetError as exc:
        print(f"digitd export: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    from digitd.train import to_input

    if card.get("arch") == "numbers":  # parity on its held-out strings, made again
        from digitd.train_numbers import held_out_strings

        seed = card.get("training", {}).get("seed", 1)
        count = card.get("dataset", {}).get("held_out_strings", 4000)
        x, y, what = held_out_strings(data.x_train, data.y_train, seed, count)
        y = None
    else:
        x, y, what = to_input(data.x_test), data.y_test, f"MNIST test set ({data.source})"
    try:
        entry = export_tflite(keras_file, x, y, what)
    except ExportError as exc:
        print(f"digitd export: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    record(keras_file, entry)
    p = entry["parity"]
    what = "held-out strings" if y is None else "test digits"
    accuracy = "" if y is None else f", accuracy {p['tflite_accuracy']:.4%}"
    print(f"wrote {tflite_path(keras_file)} ({entry['bytes']:,} bytes): same answer on "
          f"{p['same_answers']:,} of {p['n']:,} {what}, largest probability difference "
          f"{p['max_abs_diff']:.2g}{accuracy}; card updated")
    return ExitCode.OK
