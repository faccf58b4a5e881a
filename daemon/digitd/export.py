"""Convert a `.keras` model to the `.tflite` that serving runs, and prove that they agree.

`export_tflite` converts (TensorFlow's TFLite converter) at one of two PRECISIONS, runs both
models on a test set (the `.tflite` through the very runner serving uses, digitd.model), and
refuses to write the `.tflite` unless the two agree (`parity_problem`):

- "float32": no quantisation; every answer the same, no probability more than 1e-4 apart.
- "int8": the weights stored as 8-bit integers (dynamic-range quantisation: the converter's
  Optimize.DEFAULT with no representative data; XNNPACK then computes convolutions in 8-bit
  on activations quantised per input at run time). A quarter of float32's CPU per digit, and
  a quarter of its size; probabilities move by up to a few hundredths, so it is accepted only
  if its accuracy is within INT8_MAX_DROP of the .keras's, at most INT8_MAX_DIFFERING of the
  answers differ and no probability moves more than INT8_TOLERANCE. The digit models are
  served in int8 (`tflite_card_entry` falls back to float32, and says why, if it fails);
  their operating point is measured on the answers as served (digitd.train).
- "int8" for a number model (its answers its greedy strings, `answers`): the same accuracy
  bound; instead of each step's probability (a step at a digit's edge moves by up to 0.2
  with the string unchanged), what a reader of its strings sees: at most
  INT8_MAX_DIFFERING_STRINGS of them differ, and as many sure ones are wrong (silent
  errors at min_confidence's default, SURE, at most INT8_MAX_DROP more). The shipped pair
  is served in int8: a third of float32's CPU (docs/BENCHMARKS.md, Numbers).

The number model is converted with its width left free (digitd.train_numbers.width_free):
serving runs each strip cut short after its ink (digitd.ctc.CutStrips); parity is measured at
the strip's whole width (int8 on a cut strip: within ~1e-5 of that, see digitd.ctc).

It returns the card's `tflite` entry: the file's SHA-256, the `.keras` it came from, the
precision and the parity measured. Serving trusts a `.tflite` only when the card beside it
holds that entry (digitd.model.tflite_problem).

Used by `digitd train` (on the test set it trained against), by `digitd export MODEL.keras`
for an existing model, and by anything else that writes a `.keras` (fine-tuning, retraining).
Needs TensorFlow (the `train` extra).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from digitd.codes import ExitCode
from digitd.config import Config
from digitd.fsutil import write_atomic
from digitd.model import (
    LiteRTRunner,
    card_path,
    file_sha256,
    import_keras,
    read_card,
    tflite_path,
    write_card,
)

PRECISIONS = ("float32", "int8")
PARITY_TOLERANCE = 1e-4  # float32: largest probability difference accepted (it gives ~1e-6)
INT8_TOLERANCE = 0.05  # int8: largest probability difference accepted (the shipped: ~0.02)
INT8_MAX_DROP = 0.0005  # int8: accuracy at most 0.05 points below the .keras's (issue 12)
INT8_MAX_DIFFERING = 0.001  # int8: at most this share of the answers differ
# A number model's int8: at most this share of its strings differ (a string of up to 8 digits
# has that many places to move; the shipped pair: 0.3% and 0.125% of 4,000 held-out strings)
INT8_MAX_DIFFERING_STRINGS = 0.005
SURE = Config().min_confidence  # a number model's silent errors: wrong at this or above


class ExportError(Exception):
    """The conversion failed or the two models disagree; the message says how."""


def convert(model, precision: str = "float32") -> bytes:
    """A loaded Keras model -> .tflite bytes (input (N, 28, 28) with N free); `precision`
    "int8": weights quantised to 8 bits (dynamic range, see the module's docstring)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter exports a SavedModel first and prints its signature on stdout; Keras'
    # tensors warn of numpy 2's copy keyword meanwhile.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return converter.convert()


def parity(keras_probs: np.ndarray, tflite_probs: np.ndarray, labels: np.ndarray | None,
           data: str) -> dict[str, Any]:
    """How closely the .tflite's probabilities follow the .keras's on one test set (`answers`;
    `labels` the right ones, None: no accuracy)."""
    keras_answer, tflite_answer = answers(keras_probs), answers(tflite_probs)
    differing = np.flatnonzero(keras_answer != tflite_answer)
    n = len(keras_answer)
    result = {
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
    if keras_probs.ndim == 3 and labels is not None:  # a number model: its strings' promise
        result["sure"] = SURE
        result["keras_silent"] = _silent(keras_probs, keras_answer, labels)
        result["tflite_silent"] = _silent(tflite_probs, tflite_answer, labels)
    return result


def _silent(probs: np.ndarray, answer: np.ndarray, labels: np.ndarray) -> float:
    """A number model's share of strings read wrong (`answer`: its greedy strings, from
    `answers`) at confidence SURE or above: the string's probability, as digitd.ctc.read
    gives it."""
    if not len(answer):
        return 0.0
    from digitd import ctc

    confidence = np.exp(ctc.string_log_probs(probs, [[int(c) + 1 for c in a] for a in answer]))
    return round(float(((answer != labels) & (confidence >= SURE)).mean()), 6)


def answers(probs: np.ndarray) -> np.ndarray:
    """A model's answers: a digit model's (N, 10) the most probable digit of each row, the
    number model's (N, steps, classes) the greedy string of each (digitd.ctc)."""
    if probs.ndim == 2:
        return probs.argmax(axis=1)
    from digitd import ctc

    return np.array([ctc.greedy(p).text for p in probs], dtype=object)


def parity_problem(result: dict[str, Any], precision: str) -> str:
    """Why a .tflite of `precision` with this parity must not be served; "" if it may."""
    n, differing = result["n"], result["n"] - result["same_answers"]
    diff = result["max_abs_diff"]
    if precision == "float32":
        if differing or diff > PARITY_TOLERANCE:
            return (f"{differing} different answers, largest probability difference {diff:.2g} "
                    f"(float32 tolerance: none, {PARITY_TOLERANCE:g})")
        return ""
    if result["keras_accuracy"] is None:
        return "int8 needs labelled test digits to measure its accuracy"
    drop = result["keras_accuracy"] - result["tflite_accuracy"]
    if "keras_silent" in result:  # a number model's strings
        more = result["tflite_silent"] - result["keras_silent"]
        if drop > INT8_MAX_DROP or differing > INT8_MAX_DIFFERING_STRINGS * n \
                or more > INT8_MAX_DROP:
            return (f"accuracy {drop * 100:+.2f} points below the .keras's, {differing} of {n} "
                    f"strings differ, silent errors at {result['sure']:g} {more * 100:+.2f} "
                    f"points (int8 tolerance: {INT8_MAX_DROP * 100:.2f} points, "
                    f"{INT8_MAX_DIFFERING_STRINGS:.1%} of the strings, "
                    f"{INT8_MAX_DROP * 100:.2f} points)")
        return ""
    if drop > INT8_MAX_DROP or differing > INT8_MAX_DIFFERING * n or diff > INT8_TOLERANCE:
        side = "below" if drop >= 0 else "above"
        return (f"accuracy {abs(drop) * 100:.2f} points {side} the .keras's, {differing} of {n} "
                f"answers differ, largest probability difference {diff:.2g} (int8 tolerance: "
                f"{INT8_MAX_DROP * 100:.2f} points, {INT8_MAX_DIFFERING:.1%} of the answers, "
                f"{INT8_TOLERANCE:g})")
    return ""


def export_tflite(keras_file: Path, x: np.ndarray, y: np.ndarray | None, data: str,
                  model=None, precision: str = "float32") -> dict[str, Any]:
    """Write `<name>.tflite` beside `keras_file` and return the card's `tflite` entry.

    x: (N, 28, 28) float32 test inputs (the model's input contract; the number model's
    strips), y: their labels (None for the number model), data: what they are (for the
    card). `model`: the loaded Keras model if the caller has it. `precision`: PRECISIONS.
    Raises ExportError (writing nothing) if the two models disagree (parity_problem).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    keras = import_keras()
    keras_file = Path(keras_file)
    if model is None:
        model = keras.saving.load_model(keras_file, compile=False)
    started = time.monotonic()
    try:
        content = convert(_servable(keras, model), precision)
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
    if problem := parity_problem(result, precision):
        raise ExportError(f"{keras_file.name}: the {precision} .tflite disagrees with the "
                          f".keras on {data}: {problem}")
    target = tflite_path(keras_file)
    write_atomic(target, content)
    from importlib.metadata import version

    import tensorflow as tf

    return {
        "name": target.name,
        "sha256": file_sha256(target),
        "bytes": len(content),
        "converted_from": file_sha256(keras_file),  # the .keras, i.e. the model id
        "precision": precision,
        "converter": f"tensorflow {tf.__version__}",
        "runtime": f"ai-edge-litert {version('ai-edge-litert')}",
        "conversion_seconds": round(seconds, 2),
        "parity": result,
    }


def _servable(keras, model):
    """What is converted: the model, or for the number model (its input a strip) the same
    network with its width left free (digitd.train_numbers.width_free)."""
    from digitd import strip

    if tuple(model.input_shape[1:]) != (strip.HEIGHT, strip.WIDTH):
        return model
    from digitd.train_numbers import width_free

    return width_free(keras, model)


def tflite_card_entry(keras_file: Path, x: np.ndarray, y: np.ndarray | None,
                      data: str, precision: str = "float32") -> dict:
    """`export_tflite` for a card being written: its entry, or {"error": why} (logged) if
    the two models disagree (serving then falls back to the .keras, and says why). An int8
    export that fails its parity is replaced by a float32 one; the entry's `int8_refused`
    says why."""
    import structlog

    log = structlog.get_logger("digitd.export")
    refused = ""
    if precision == "int8":
        try:
            return export_tflite(keras_file, x, y, data, precision="int8")
        except ExportError as exc:
            refused = str(exc)
            log.warning("int8_export_refused", error=refused, instead="float32")
    try:
        entry = export_tflite(keras_file, x, y, data)
    except ExportError as exc:
        log.error("tflite_export_failed", error=str(exc))
        return {"error": str(exc), **({"int8_refused": refused} if refused else {})}
    return {**entry, "int8_refused": refused} if refused else entry


def record(keras_file: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Put `entry` into the card beside `keras_file` as its `tflite` (a minimal card is
    started if there is none: the model id and the entry); return the card written."""
    card = read_card(keras_file) or {"name": keras_file.name}
    card["model_id"] = entry["converted_from"]
    card["tflite"] = entry
    write_card(keras_file, card)
    return card


def export_command(args) -> int:
    """`digitd export MODEL.keras [--data DIR] [--precision P]`: convert, check parity,
    update the card. The default precision is what `digitd train` ships: int8."""
    from digitd.dataset import DatasetError, load_mnist, load_usps

    keras_file = Path(args.model)
    if not keras_file.is_file() or keras_file.suffix != ".keras":
        print(f"digitd export: {keras_file}: not a .keras file", file=sys.stderr)
        return ExitCode.USAGE
    card = read_card(keras_file)
    if card.get("model_id") not in (None, file_sha256(keras_file)):
        print(f"digitd export: {card_path(keras_file).name} describes another model "
              f"(model_id {card['model_id'][:12]}); not touching it", file=sys.stderr)
        return ExitCode.USAGE
    verify = not getattr(args, "no_verify", False)
    try:
        data = load_mnist(args.data, verify=verify)
        usps = load_usps(args.usps, verify=verify) if getattr(args, "usps", None) else None
    except DatasetError as exc:
        print(f"digitd export: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    from digitd.train import to_input

    numbers = card.get("arch") == "numbers"
    chosen = getattr(args, "precision", None)
    if numbers:  # parity on its held-out strings, made again
        from digitd.train_numbers import held_out_strings, texts

        seed = card.get("training", {}).get("seed", 1)
        count = card.get("dataset", {}).get("held_out_strings", 4000)
        x, y, what = held_out_strings(data.x_train, data.y_train, seed, count)
        y = np.array(texts(y), dtype=object)
    else:
        x, y, what = to_input(data.x_test), data.y_test, f"MNIST test set ({data.source})"
    if chosen:
        try:
            entry = export_tflite(keras_file, x, y, what, precision=chosen)
        except ExportError as exc:
            print(f"digitd export: {exc}", file=sys.stderr)
            return ExitCode.FAILURE
    else:  # int8, or float32 if int8 fails its parity
        entry = tflite_card_entry(keras_file, x, y, what, precision="int8")
        if "error" in entry:
            print(f"digitd export: {entry['error']}", file=sys.stderr)
            return ExitCode.FAILURE
        if entry.get("int8_refused"):
            print(f"digitd export: {entry['int8_refused']}: float32 instead", file=sys.stderr)
    card = record(keras_file, entry)
    if not numbers:  # measured as the daemon serves it (the operating point again, with --usps)
        from digitd.train import as_served

        as_served(keras_file, card, x, y, usps)
        write_card(keras_file, card)
    p = entry["parity"]
    what = "held-out strings" if numbers else "test digits"
    accuracy = f", accuracy {p['tflite_accuracy']:.4%}"
    if "tflite_silent" in p:
        accuracy += (f", wrong at {p['sure']:g} or above {p['tflite_silent']:.3%} (.keras "
                     f"{p['keras_silent']:.3%})")
    print(f"wrote {tflite_path(keras_file)} ({entry['precision']}, {entry['bytes']:,} bytes): same "
          f"answer on {p['same_answers']:,} of {p['n']:,} {what}, largest probability "
          f"difference {p['max_abs_diff']:.2g}{accuracy}; card updated")
    if usps is not None and not numbers and "operating_point" in card.get("calibration", {}):
        op = card["calibration"]["operating_point"]
        check = op["usps_test"]
        print(f"as served: min_confidence {op['min_confidence']:.2f}; USPS test silent errors "
              f"{check['silent_errors']:.2%}, review {check['review_share']:.2%}")
    return ExitCode.OK
