"""`digitd train --arch numbers`: the segmentation-free number reader (convolutions + CTC).

The model reads a whole line of digits at once: a strip (digitd.strip's contract, HEIGHT x
WIDTH) in, per output step (STRIDE strip columns each) the probabilities of the CTC blank
and the ten digits out; digitd.ctc decodes it greedily in NumPy. No segmentation: touching,
overlapping and broken digits, separators and decoration are learnt from examples.

Training strings are composed by digitd.synth (the same synthesis bench/number_scans.py uses
for its test numbers) from MNIST *training* digits, seeded per string (so generation is
reproducible whatever the number of worker processes): 1-8 digits, gaps from overlapping to
wide, baseline jitter, sizes, a slant of the whole line, unlabelled decoration (thousands dots
and commas, a trailing dash or equals sign, an underline, a currency sign before the number,
a stray stroke), then stroke width, blur, contrast and noise varied as preprocess's ink maps
vary. The last HOLD_OUT training digits are kept out of the training strings: strings made of
them (CALIBRATION_STRINGS) fit the temperature (the string confidence, calibrated: logits / T
before the softmax, baked into the saved graph) and measure the model. MNIST's test digits
are never used here (bench/number_accuracy.py measures on them). With `--usps`, USPS_SHARE of
the strings are written with the USPS train part's digits instead (digitd.dataset's shared
split): real writers MNIST never saw, as the digit model trains on them too.

Writes digitd-numbers.keras, .tflite (digitd.export, parity on the held-out strings) and
.card.json into --out. With `--second`, the same training writes digitd-numbers.second.keras
(.tflite, .card.json) beside the digitd-numbers.keras already in --out, and names it in that
model's card (pair): the second number model, consulted where the first is unsure
(digitd.ctc.reconsider). The shipped pair is two runs, each within the 20-minute budget:

    digitd train --arch numbers --data DIR --out OUT
    digitd train --arch numbers --data DIR --usps USPS --limit 125000 --seed 2 --second --out OUT
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from digitd import ctc, strip
from digitd.codes import ExitCode
from digitd.dataset import DatasetError, Usps, load_mnist, load_usps, split_sha256, usps_ink
from digitd.fsutil import make_folder
from digitd.model import read_card, write_card
from digitd.synth import DecorationRates, number_ink, pick_decorations

MAX_DIGITS = 8
HOLD_OUT = 5000  # the last MNIST training digits: calibration strings only
# 100,000 strings seen 4 times read the bench better than 120,000 seen 3 times, in the same
# ~17 minutes (docs/BENCHMARKS.md, Numbers: "Trained longer, a form's bars ...")
STRINGS = 100_000  # training strings (each seen EPOCHS times)
EPOCHS = 4
CALIBRATION_STRINGS = 4000
BATCH = 64
PEAK_LR = 2e-3
HEIGHTS = (22, 64)  # digit heights drawn for training (the strip rescales them anyway)
SEED_SALT = 17  # default_rng([seed, SEED_SALT, index]) draws string `index`
# With --usps: this share of the training strings is written with USPS train digits (one
# writer's population per string); the rest with MNIST's.
USPS_SHARE = 0.2


def _log():
    import structlog

    return structlog.get_logger("digitd.train")


# --- the training strings -----------------------------------------------------------------


# More decoration than in real use (synth's defaults), so that each kind is seen often.
TRAINING_DECORATIONS = DecorationRates(thousands=0.4, dash=0.12, equals=0.10, underline=0.2,
                                       currency=0.15, stray=0.15)


def _vary(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slant, stroke width, blur, contrast and noise: how writers and preprocess's ink maps
    differ."""
    h, w = ink.shape
    if rng.random() < 0.6:  # slant: shear the whole line (x' = x + k (h - y))
        k = rng.uniform(-0.3, 0.3)
        m = np.float32([[1, -k, k * h if k > 0 else 0], [0, 1, 0]])
        ink = cv2.warpAffine(ink, m, (w + int(abs(k) * h) + 1, h), flags=cv2.INTER_LINEAR)
    r = rng.random()
    if r < 0.2:
        ink = cv2.dilate(ink, np.ones((2, 2), np.uint8))
    elif r < 0.3 and h >= 40:
        ink = cv2.erode(ink, np.ones((2, 2), np.uint8))
    if rng.random() < 0.3:
        ink = cv2.GaussianBlur(ink, (0, 0), rng.uniform(0.5, 1.3))
    ink = np.clip(ink, 0, 1) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.3:
        near = cv2.dilate((ink > 0.05).astype(np.uint8), np.ones((3, 3), np.uint8))
        ink = ink + near * rng.normal(0, rng.uniform(0.03, 0.12), ink.shape).astype(np.float32)
    ink = np.clip(ink, 0, 1)
    ink[ink < 0.08] = 0  # preprocess's ink maps are zero off the ink's parts
    return ink


def example(images: np.ndarray, labels: np.ndarray, index: int, seed: int,
            other: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training string `index`: its strip as uint8 (HEIGHT, WIDTH) and its label (the CTC
    classes 1 + digit, padded with 0 to MAX_DIGITS). `other`: where a second population's
    digits (USPS) begin in `images`; a string is written with them at USPS_SHARE."""
    rng = np.random.default_rng([seed, SEED_SALT, index])
    n = 1 if rng.random() < 0.04 else int(rng.integers(2, MAX_DIGITS + 1))
    if other is None:
        picks = rng.integers(0, len(images), n)
    elif rng.random() < USPS_SHARE:
        picks = rng.integers(other, len(images), n)
    else:
        picks = rng.integers(0, other, n)
    decorations = pick_decorations(rng, n, TRAINING_DECORATIONS)
    ink = number_ink([images[i] for i in picks], rng, decorations, heights=HEIGHTS)
    pixels = strip.strip(_vary(ink, rng)).pixels
    label = np.zeros(MAX_DIGITS, np.int32)
    label[:n] = labels[picks].astype(np.int32) + 1
    return np.round(pixels * 255).astype(np.uint8), label


_POOL: tuple[np.ndarray, np.ndarray, int, int | None] | None = None


def _init(images: np.ndarray, labels: np.ndarray, seed: int, other: int | None) -> None:
    global _POOL
    _POOL = (images, labels, seed, other)
    cv2.setNumThreads(1)


def _examples(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    images, labels, seed, other = _POOL
    out = [example(images, labels, i, seed, other) for i in range(*span)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def strings(images: np.ndarray, labels: np.ndarray, first: int, count: int, seed: int,
            workers: int, other: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Strings first..first+count-1 (uint8 strips, labels), made on `workers` processes.
    `other`: see example()."""
    spans = [(a, min(a + 1000, first + count)) for a in range(first, first + count, 1000)]
    if workers <= 1:
        _init(images, labels, seed, other)
        parts = [_examples(s) for s in spans]
    else:
        context = multiprocessing.get_context("spawn")  # a fork hangs once TF is loaded
        with context.Pool(workers, _init, (images, labels, seed, other)) as pool:
            parts = pool.map(_examples, spans)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def held_out_from(n: int) -> int:
    """The first held-out digit of n training digits (a small sample, the tests', keeps a
    fifth)."""
    return n - min(HOLD_OUT, n // 5)


def held_out_strings(x: np.ndarray, y: np.ndarray, seed: int, count: int = CALIBRATION_STRINGS,
                     workers: int = 1) -> tuple[np.ndarray, np.ndarray, str]:
    """The held-out strings (float strips, labels) and what they are: calibration and
    parity data (`digitd export` of a number model makes them again from its card)."""
    first = held_out_from(len(x))
    cx, cy = strings(x[first:], y[first:], 0, count, seed + 1, workers)
    what = (f"{len(cx)} held-out strings (MNIST training digits {first}-{len(x) - 1}, "
            f"seed {seed + 1})")
    return cx.astype(np.float32) / 255.0, cy, what


# --- the model ------------------------------------------------------------------------------


def build(keras) -> Any:
    """Convolutions down to one row of STEPS columns, then 1-D convolutions along the line
    (each step sees about two digits' width), a blank-or-digit logit per step."""
    layers = keras.layers

    def conv(filters: int, size, strides=1) -> list:
        return [layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False),
                layers.BatchNormalization(momentum=0.9), layers.Activation("relu")]

    steps = strip.WIDTH // strip.STRIDE
    return keras.Sequential([
        keras.Input(shape=(strip.HEIGHT, strip.WIDTH), name="strip"),
        layers.Reshape((strip.HEIGHT, strip.WIDTH, 1)),
        *conv(16, 3, 2),  # 16 x 128
        *conv(24, 3), layers.MaxPooling2D(2),  # 8 x 64
        *conv(48, 3), layers.MaxPooling2D((2, 1)),  # 4 x 64
        *conv(64, 3),
        layers.Conv2D(96, (strip.HEIGHT // 8, 1), use_bias=False),  # 1 x 64: a step per column
        layers.BatchNormalization(momentum=0.9), layers.Activation("relu"),
        layers.Reshape((steps, 96)), layers.Dropout(0.1),
        layers.Conv1D(96, 5, padding="same", activation="relu"), layers.Dropout(0.1),
        layers.Conv1D(96, 5, padding="same", activation="relu"),
        layers.Dense(ctc.CLASSES),  # logits; the softmax (with T) is added when saving
    ], name="digitd_numbers")


def width_free(keras, model) -> Any:
    """The saved number model (build() + with_softmax()) with its width left free: the same
    layers and weights, its two reshapes' width axes -1. digitd.export converts this one, so
    that serving can run strips cut short after their ink (digitd.ctc.CutStrips); at the
    strip's whole width it computes what the model does."""
    layers = []
    for layer in model.layers:
        config = layer.get_config()
        if isinstance(layer, keras.layers.Reshape):
            shape = list(config["target_shape"])
            shape[1 if len(shape) == 3 else 0] = -1  # (HEIGHT, WIDTH, 1) or (STEPS, 96)
            config["target_shape"] = tuple(shape)
        layers.append(type(layer).from_config(config))
    free = keras.Sequential([keras.Input(shape=(strip.HEIGHT, None), name="strip"), *layers],
                            name=model.name)
    for source, target in zip(model.layers, free.layers, strict=True):
        target.set_weights(source.get_weights())
    return free


def ctc_loss(keras):
    def loss(y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, "int32")
        lengths = ops.sum(ops.cast(y_true > 0, "int32"), axis=1)
        steps = ops.full((ops.shape(y_pred)[0],), ops.shape(y_pred)[1], dtype="int32")
        return ops.ctc_loss(y_true, y_pred, lengths, steps, mask_index=ctc.BLANK)

    return loss


def with_softmax(keras, model, temperature: float):
    """The network with logits / T and the softmax, as plain layers (the saved model)."""
    layers = keras.layers
    return keras.Sequential(
        [keras.Input(shape=(strip.HEIGHT, strip.WIDTH), name="strip"), *model.layers,
         layers.Rescaling(1.0 / temperature, name="temperature"),
         layers.Activation("softmax", name="probabilities")], name=model.name)


# --- calibration and measuring --------------------------------------------------------------


def texts(label: np.ndarray) -> list[str]:
    """Strings' padded labels (1 + digit, 0 after the end) -> the strings."""
    return ["".join(str(c - 1) for c in row if c > 0) for row in label]


def string_probs(logits: np.ndarray, labels: list[list[int]], temperature: float) -> np.ndarray:
    """P(string) for logits (N, STEPS, CLASSES) / T (digitd.ctc.string_log_probs)."""
    return np.exp(ctc.string_log_probs(ctc.softmax(logits / temperature), labels))


def fit_temperature(logits: np.ndarray, labels: list[list[int]], right: np.ndarray) -> float:
    """The T in [0.05, 5] minimising the log loss of `right` (strings read exactly) under the
    probability of the string read (`labels`): golden-section search on log T."""
    def cost(log_t: float) -> float:
        p = np.clip(string_probs(logits, labels, math.exp(log_t)), 1e-9, 1 - 1e-9)
        return float(-np.mean(np.where(right, np.log(p), np.log1p(-p))))

    lo, hi = math.log(0.05), math.log(5.0)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if cost(a) < cost(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def reliability(confidence: np.ndarray, right: np.ndarray) -> list[dict[str, Any]]:
    """Accuracy per confidence band: does the confidence keep its meaning?"""
    out = []
    for lo, hi in ((0, 0.5), (0.5, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 0.99), (0.99, 1.01)):
        sel = (confidence >= lo) & (confidence < hi)
        if sel.any():
            out.append({"from": lo, "to": min(hi, 1.0), "strings": int(sel.sum()),
                        "right": round(float(right[sel].mean()), 4),
                        "mean_confidence": round(float(confidence[sel].mean()), 4)})
    return out


def measure(probs: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Strings read exactly, and at a few confidence thresholds the share kept and wrong."""
    read = ctc.read(probs)
    right = np.array([r.text == t for r, t in zip(read, texts, strict=True)])
    conf = np.array([r.confidence for r in read])
    points = {}
    for t in (0.9, 0.95, 0.99):
        ok = conf >= t
        points[f"{t:.2f}"] = {"ok": round(float(ok.mean()), 4),
                              "silent": round(float((ok & ~right).mean()), 4)}
    return {"n": len(texts), "exact": round(float(right.mean()), 4), "at": points,
            "reliability": reliability(conf, right)}


# --- the command ----------------------------------------------------------------------------


def train_numbers_command(args) -> int:
    """`digitd train --arch numbers`: make the strings, train, calibrate, export, write."""
    verify = not getattr(args, "no_verify", False)
    try:
        data = load_mnist(args.data, verify=verify)
        usps = load_usps(args.usps, verify=verify) if args.usps else None
    except DatasetError as exc:
        print(f"digitd train: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    out = Path(args.out)
    if problem := make_folder(out):
        print(f"digitd train: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    first = out / ctc.NAME
    second = getattr(args, "second", False)
    if second and not first.is_file():
        print(f"digitd train: --second trains the second number model for {first}, and there "
              "is no such file (train the first into the same --out)", file=sys.stderr)
        return ExitCode.USAGE
    count = args.limit or STRINGS
    card = train(data.x_train, data.y_train, count=count, epochs=args.epochs or EPOCHS,
                 seed=args.seed, out=out, source={"source": data.source, "sha256": data.sha256},
                 usps=usps, name=ctc.SECOND_NAME if second else ctc.NAME)
    check, t = card["calibration"]["held_out"], card["calibration"]["temperature"]
    print(f"held-out strings read exactly {check['exact']:.2%} (T={t}) in "
          f"{card['training_seconds']:.0f} s ({card['training_cpu_seconds']:.0f} CPU-seconds);"
          f" wrote {out / card['name']} (model id {card['model_id'][:12]})")
    if second:
        pair(first, card)
        print(f"{first.name}'s card names it as its second number model")
    return ExitCode.OK


def pair(first: Path, second_card: dict[str, Any]) -> None:
    """Name the second number model (its card `second_card`, beside `first`) in the first's
    card, which digitd.ctc.load reads; the first's .keras, so its id, is unchanged."""
    card = read_card(first)
    card["second_reading"] = {
        "model": second_card["name"], "model_id": second_card["model_id"],
        "rule": "where this model reads a number (two digits or more) below "
                "min_confidence, the second reads the strip too and the string more probable "
                "under both is kept; its confidence stays this model's probability of it "
                "(digitd.ctc.reconsider)",
        "seed": second_card["training"]["seed"],
        "usps": "usps" in second_card["dataset"]}
    write_card(first, card)


def train(x: np.ndarray, y: np.ndarray, count: int, epochs: int, seed: int, out: Path,
          source: dict[str, Any], workers: int | None = None,
          usps: Usps | None = None, name: str = ctc.NAME) -> dict[str, Any]:
    """Train the number model on `count` strings of x (its last digits held out), and with
    `usps` of its train part's digits too; write the model (`name`), its .tflite and card
    into `out`; return the card."""
    import os

    started = time.monotonic()
    cpu0 = _cpu_seconds()
    workers = workers or len(os.sched_getaffinity(0))
    first_held = held_out_from(len(x))
    digits, digit_labels, other, usps_digits = x[:first_held], y[:first_held], None, 0
    if usps is not None:
        ux, uy = usps.part("train")
        digits = np.concatenate([digits, usps_ink(ux)])
        digit_labels = np.concatenate([digit_labels, uy])
        other, usps_digits = first_held, len(uy)
    sx, sy = strings(digits, digit_labels, 0, count, seed, workers, other)
    # as many as CALIBRATION_STRINGS, fewer for a short run (the tests')
    held, cy, held_what = held_out_strings(x, y, seed, min(CALIBRATION_STRINGS,
                                                             max(400, count // 4)), workers)
    made = time.monotonic() - started
    _log().info("strings", train=len(sx), held_out=len(held), seconds=round(made, 1))

    from digitd.model import file_sha256, import_keras

    keras = import_keras()
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = build(keras)
    steps = math.ceil(len(sx) / BATCH) * epochs
    warm = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=PEAK_LR / 10, decay_steps=max(1, steps - warm), alpha=0.01,
        warmup_target=PEAK_LR, warmup_steps=warm)
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0),
                  loss=ctc_loss(keras))
    ds = tf.data.Dataset.from_tensor_slices((sx, sy))
    ds = ds.shuffle(len(sx), seed=seed).repeat().batch(BATCH)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b)).prefetch(2)
    val = (held[:1000], cy[:1000])
    fit_started = time.monotonic()
    history = model.fit(ds, epochs=epochs, steps_per_epoch=math.ceil(len(sx) / BATCH),
                        validation_data=val, validation_batch_size=256,
                        verbose=1 if sys.stdout.isatty() else 2)
    fit_seconds = time.monotonic() - fit_started

    truth = texts(cy)
    logits = np.asarray(model.predict(held, batch_size=256, verbose=0), np.float64)
    greedy = [ctc.greedy(lg) for lg in logits]  # the argmax: the same for any T
    right = np.array([r.text == t for r, t in zip(greedy, truth, strict=True)])
    labels = [[e.value + 1 for e in r.emissions] for r in greedy]
    temperature = fit_temperature(logits, labels, right)
    final = with_softmax(keras, model, temperature)
    keras_file = out / name
    from digitd.train import library_versions, save_model

    model_id = save_model(keras, final, keras_file)
    probs = np.asarray(final.predict(held, batch_size=256, verbose=0), np.float32)
    held_out = measure(probs, truth)

    from digitd.export import tflite_card_entry

    tflite = tflite_card_entry(keras_file, held, np.array(truth, dtype=object), held_what,
                                precision="int8")
    seconds = time.monotonic() - started
    card = {
        "name": keras_file.name,
        "model_id": model_id,
        "arch": "numbers",
        "parameters": int(final.count_params()),
        "input": f"(N, {strip.HEIGHT}, {strip.WIDTH}) float32 in [0, 1]: a line of ink as "
                 "digitd.strip makes it",
        "output": f"(N, {strip.WIDTH // strip.STRIDE}, {ctc.CLASSES}) float32 softmax per "
                  f"step ({strip.STRIDE} strip columns): class 0 the CTC blank, 1 + d the "
                  "digit d; calibrated (logits / T)",
        "dataset": {
            "mnist": source,
            "train_digits": f"MNIST training digits 0-{first_held - 1}",
            "held_out_digits": f"MNIST training digits {first_held}-{len(x) - 1} "
                               "(calibration and the figures below only)",
            "test_digits": "not used (bench/number_accuracy.py measures on them)",
            **({"usps": {"source": usps.source, "sha256": usps.sha256,
                         "train_digits": f"the USPS train part ({usps_digits} digits, "
                                         f"split {split_sha256(usps.split()['train'])[:12]})",
                         "share": f"{USPS_SHARE:.0%} of the training strings"}}
               if usps is not None else {}),
            "synthesis": "digitd.synth.number_ink + digitd.train_numbers._vary, seeded per "
                         f"string: numpy default_rng([seed, {SEED_SALT}, index])",
            "train_strings": len(sx),
            "train_strings_sha256": _digest(sx, sy),
            "held_out_strings": len(held),
            "held_out_strings_sha256": _digest(held, cy),
        },
        "training": {"seed": seed, "epochs": epochs, "batch_size": BATCH,
                     "optimizer": "adam, clipnorm 5", "peak_learning_rate": PEAK_LR,
                     "loss": "CTC", "string_seconds": round(made, 1),
                     "fit_seconds": round(fit_seconds, 1),
                     "history": {k: [round(float(v), 4) for v in vs]
                                 for k, vs in history.history.items()}},
        "calibration": {"method": "temperature scaling of the per-step logits, fitted so that "
                                  "the probability of the string read (CTC forward: all its "
                                  "alignments) predicts whether it is read exactly (log "
                                  "loss), on the held-out strings",
                        "temperature": round(temperature, 4),
                        "exact_before": round(float(right.mean()), 4),
                        "held_out": held_out},
        "training_seconds": round(seconds, 1),
        "training_cpu_seconds": round(_cpu_seconds() - cpu0, 1),  # string makers included
        "library_versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tflite": tflite,
    }
    card["model_id"] = file_sha256(keras_file)
    write_card(keras_file, card)
    _log().info("trained", arch="numbers", exact=held_out["exact"], seconds=round(seconds, 1),
                model_id=model_id, temperature=round(temperature, 4))
    return card


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the string makers)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _digest(sx: np.ndarray, sy: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(sx).tobytes())
    h.update(np.ascontiguousarray(sy).tobytes())
    return h.hexdigest()
