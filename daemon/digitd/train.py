"""`digitd train`: build, train, calibrate, measure and ship a digit model.

The saved .keras holds standard layers only (string activations, no augmentation layers), so
any Keras 3 can reload it; augmentation runs in the tf.data pipeline during training instead
(digitd.augment). Models take the input contract written in `digitd.model` (28x28 float32 in
[0, 1], ink bright). With `--usps`, the USPS train part (digitd.dataset's shared split) is
trained on, the temperature is fitted on its calibration part and baked into the saved graph
(logits / T before the softmax: digitd.calibration), and the operating point for the daemon's
`min_confidence` is measured on the calibration part and checked on the test part. The CNN
comes with a second opinion trained first (train_second; how it is served: digitd.model).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from digitd import __version__, calibration
from digitd.augment import augment_batch, continental_forms, mnist_batch
from digitd.codes import ExitCode
from digitd.dataset import DatasetError, Mnist, Usps, load_mnist, load_usps, split_sha256, usps_page
from digitd.export import tflite_card_entry
from digitd.fsutil import make_folder, write_atomic
from digitd.model import file_sha256, import_keras, with_second_opinion, write_card

DEFAULT_EPOCHS = {"cnn": 12, "mlp": 3}
SECOND_EPOCHS = 14  # cnn: the second opinion (MNIST only) trains first, then the CNN from it
SECOND_NAME = "digitd-cnn.second.keras"
SECOND_BELOW, SECOND_WEIGHT = 0.99, 0.5  # served: asked below this top probability; its share
USPS_REPEAT = 2  # the USPS train part is seen this many times an epoch (real, other writers)
CONTINENTAL_SEED = 7  # which MNIST 7s and 1s get a bar or a flag
BATCH_SIZE = {"cnn": 128, "mlp": 32}  # mlp: Keras' default batch, as the classroom network had
PEAK_LR = 3e-3  # cnn: one-cycle-like warm-up then cosine decay


def _log():
    import structlog

    return structlog.get_logger("digitd.train")


# --- models -------------------------------------------------------------------------------


def build_cnn(keras) -> Any:
    """Conv-BN-ReLU blocks with strided 5x5 convs instead of pooling; ~99.6% on MNIST.

    16/48/128 channels: 2.6x fewer multiply-adds (5.3 M a digit) than the 32/64/128 network
    first shipped, for the same accuracy given 26 epochs instead of 14 (the daemon's
    throughput is bound by the CPU; see docs/BENCHMARKS.md).
    """
    layers = keras.layers

    def conv(filters: int, size: int, strides: int = 1, padding: str = "valid") -> list:
        return [layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False),
                layers.BatchNormalization(momentum=0.9), layers.Activation("relu")]

    return keras.Sequential([
        keras.Input(shape=(28, 28), name="digits"),
        layers.Reshape((28, 28, 1)),
        *conv(16, 3), *conv(16, 3), *conv(16, 5, 2, "same"), layers.Dropout(0.4),
        *conv(48, 3), *conv(48, 3), *conv(48, 5, 2, "same"), layers.Dropout(0.4),
        *conv(128, 4), layers.Flatten(), layers.Dropout(0.4),
        layers.Dense(10), layers.Activation("softmax"),  # logits apart: see calibrated()
    ], name="digitd_cnn")


def build_mlp(keras) -> Any:
    """The original classroom network: two Dense-128 layers, for comparison."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input(shape=(28, 28), name="digits"),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(128, activation="relu"),
        layers.Dense(10), layers.Activation("softmax"),
    ], name="digitd_mlp")


def compile_model(keras, model, arch: str, steps: int) -> None:
    """Adam; the CNN warms up for one epoch's worth of steps then decays (cosine) to ~0."""
    if arch == "mlp":
        optimizer = keras.optimizers.Adam()
    else:
        warm = max(1, steps // 15)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=PEAK_LR / 10, decay_steps=max(1, steps - warm), alpha=0.005,
            warmup_target=PEAK_LR, warmup_steps=warm)
        optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


# --- data pipeline and augmentation -------------------------------------------------------


def make_train_dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int, vary=None):
    """Shuffled, endlessly repeated, batched training batches, each varied by `vary` (the
    CNN's: digitd.augment; None: as they are)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat().batch(batch)

    def prepare(step, xy):
        images = tf.cast(xy[0], tf.float32) / 255.0
        if vary is not None:
            images = vary(images, tf.cast(step, tf.int32), seed)
        return images, xy[1]

    return ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def to_input(x: np.ndarray) -> np.ndarray:
    """uint8 MNIST images -> the model's input contract (float32 in [0, 1])."""
    return (x.astype(np.float32) / 255.0).reshape(-1, 28, 28)


# --- progress -------------------------------------------------------------------------------


def epoch_logger(keras, epochs: int):
    """A callback that logs one structured line per epoch (used when stdout is not a terminal)."""

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: round(float(v), 5) for k, v in (logs or {}).items()}
            _log().info("epoch", epoch=epoch + 1, epochs=epochs,
                        seconds=round(time.monotonic() - self.started, 1), **logs)

    return EpochLog()


# --- measuring ----------------------------------------------------------------------------


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """10x10 counts; rows are the true digit, columns the prediction."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return matrix


def metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix, JSON-ready."""
    pred = probs.argmax(axis=1)
    matrix = confusion(y_true, pred)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return {
        "n": int(len(y_true)),
        "accuracy": round(float((pred == y_true).mean()), 6),
        "errors": int((pred != y_true).sum()),
        "per_class_accuracy": {str(d): round(float(a), 6) for d, a in enumerate(per_class)},
        "confusion_matrix": matrix.tolist(),
    }


def library_versions() -> dict[str, str]:
    """Versions that affect training results, for the model card."""
    import keras
    import tensorflow as tf

    return {"digitd": __version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}


def describe_layers(model) -> list[str]:
    """One short line per layer, e.g. 'Conv2D 32 5x5 /2 same' — the card's architecture."""
    lines = []
    for layer in model.layers:
        cfg = layer.get_config()
        parts = [type(layer).__name__]
        if "filters" in cfg:
            parts += [str(cfg["filters"]), "x".join(map(str, cfg["kernel_size"]))]
            if tuple(cfg["strides"]) != (1, 1):
                parts.append(f"/{cfg['strides'][0]}")
            parts.append(cfg["padding"])
        if "units" in cfg:
            parts.append(str(cfg["units"]))
        if cfg.get("activation") not in (None, "linear"):
            parts.append(str(cfg["activation"]))
        if "rate" in cfg:
            parts.append(str(cfg["rate"]))
        lines.append(" ".join(parts))
    return lines


def save_model(keras, model, target: Path) -> str:
    """Save without optimiser state (a third of the size); return the file's SHA-256.

    Keras 3 ignores include_optimizer=False for .keras files, so an uncompiled copy is saved
    (rebuilt from the config: keras.models.clone_model would copy the compiled optimiser too).
    """
    export = type(model).from_config(model.get_config())
    export.set_weights(model.get_weights())
    write_atomic(target, lambda tmp: export.save(tmp))
    return file_sha256(target)


def save_report(target: Path, history: dict, matrix: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, probs: np.ndarray, curves: dict[str, np.ndarray],
                title: str) -> None:
    """A PNG: training curves, the risk-coverage curves, the confusion matrix, and the 25 most
    confidently wrong digits."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(18, 10), layout="constrained")
    fig.suptitle(title)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.4])
    ax_loss, ax_acc, ax_risk = top.subplots(1, 3)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(epochs, history.get(key, []), "o-", label="train (augmented)")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "o-", label="MNIST test")
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    _plot_risk_coverage(ax_risk, curves)
    left, right = bottom.subfigures(1, 2, width_ratios=[1, 1.1])
    _plot_confusion(left.subplots(), matrix)
    _plot_wrong(right, x_test, y_test, probs)
    write_atomic(target, lambda tmp: fig.savefig(tmp, format="png", dpi=80))


def _plot_risk_coverage(ax, curves: dict[str, np.ndarray]) -> None:
    """Error among the accepted digits against the share accepted (most confident first)."""
    labels = {"usps_test": "held-out USPS (test part)", "mnist_test": "MNIST test"}
    for name, label in labels.items():
        if name in curves:
            coverage, risk = calibration.risk_coverage(curves[name], curves[f"{name}_y"])
            ax.plot(coverage * 100, risk * 100, label=label)
    ax.axvline(100 * (1 - calibration.MAX_REVIEW), color="grey", ls=":", label="5% to review")
    ax.axhline(100 * calibration.MAX_SILENT, color="red", ls=":", label="0.5% error")
    ax.set(xlabel="share accepted as ok (%)", ylabel="error among accepted (%)",
           title="risk-coverage (calibrated)", xlim=(50, 100), ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()


def _plot_confusion(ax, matrix: np.ndarray) -> None:
    """Confusion matrix on a log colour scale so the few errors are visible."""
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if i == j else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title="confusion matrix (test set)")


def _plot_wrong(subfig, x_test: np.ndarray, y_test: np.ndarray, probs: np.ndarray) -> None:
    """The 25 wrong test predictions the model was most sure of."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_test)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:25]
    subfig.suptitle(f"most confidently wrong ({len(np.flatnonzero(pred != y_test))} errors)")
    for ax, i in zip(subfig.subplots(5, 5).flat, list(wrong) + [None] * 25, strict=False):
        ax.axis("off")
        if i is not None:
            ax.imshow(x_test[i], cmap="gray")
            ax.set_title(f"true {y_test[i]} → {pred[i]} ({probs[i, pred[i]]:.2f})", fontsize=8)


# --- training data ------------------------------------------------------------------------


def usps_inputs(x16: np.ndarray) -> np.ndarray:
    """USPS digits -> the model's input contract exactly as the daemon would make it: each one
    as a page (digitd.dataset.usps_page, the same image bench/evalsets.py writes as a PNG)
    through digitd.preprocess.normalise."""
    from digitd.preprocess import normalise

    return np.stack([normalise(usps_page(d)) for d in x16]).astype(np.float32)


def training_set(data: Mnist, usps: Usps | None, seed: int,
                 arch: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """MNIST's training digits, plus (CNN) the continental 7s and 1s drawn on copies of some of
    them and the USPS train part (each USPS_REPEAT times); uint8 (N, 28, 28), labels, and what
    went in (for the card)."""
    parts_x, parts_y = [data.x_train], [data.y_train]
    what: dict[str, Any] = {"mnist_train": len(data.x_train)}
    if arch == "cnn":
        cx, cy = continental_forms(data.x_train, data.y_train,
                                   np.random.default_rng([seed, CONTINENTAL_SEED]))
        parts_x.append(cx)
        parts_y.append(cy)
        what["continental_forms"] = {"crossed_7": int((cy == 7).sum()),
                                     "flagged_1": int((cy == 1).sum())}
    if usps is not None:
        ux, uy = usps.part("train")
        u28 = np.clip(usps_inputs(ux) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        parts_x += [u28] * USPS_REPEAT
        parts_y += [uy] * USPS_REPEAT
        what["usps_train"] = {"digits": len(uy), "repeat": USPS_REPEAT}
    x, y = np.concatenate(parts_x), np.concatenate(parts_y).astype(np.uint8)
    what["total"] = len(x)
    return x, y, what


# --- calibration ----------------------------------------------------------------------------


def logits_of(keras, model, x: np.ndarray) -> np.ndarray:
    """The model's logits (the input of its final softmax) for float inputs."""
    head = keras.Sequential(model.layers[:-1])
    return np.asarray(head.predict(x, batch_size=500, verbose=0), np.float64)


def calibrated(keras, model, temperature: float):
    """The same network with logits / temperature before the softmax, as plain layers
    (Rescaling is a multiplication: the .keras and a .tflite export both keep it)."""
    layers = keras.layers
    return keras.Sequential(
        [keras.Input(shape=(28, 28), name="digits"), *model.layers[:-1],
         layers.Rescaling(1.0 / temperature, name="temperature"),
         layers.Activation("softmax", name="probabilities")], name=model.name)


def calibrate(keras, model, usps: Usps, consult=None
              ) -> tuple[float, dict[str, Any], dict[str, np.ndarray]]:
    """Fit T on the USPS calibration part; ECE before/after and the operating point measured
    on the calibration part and checked on the test part. Returns T, the card's section and
    the calibrated test-part probabilities (for the report).

    `consult(probs, x)`: the answers as served (the second opinion, see train); accuracy, ECE
    and the operating point are then of those (the NLL stays the network's own).
    """
    parts, inputs = {}, {}
    for name in ("calibration", "test"):
        x16, y = usps.part(name)
        inputs[name] = usps_inputs(x16)
        parts[name] = (logits_of(keras, model, inputs[name]), y.astype(np.int64))
    logits, y = parts["calibration"]
    t = calibration.fit_temperature(logits, y)
    section: dict[str, Any] = {"method": "temperature scaling (logits / T before the softmax)",
                               "fitted_on": "USPS calibration part", "temperature": round(t, 4)}
    probs = {}
    if consult is not None:
        section["second_opinion"] = "accuracy, ECE after and the operating point: both networks"
    for name, (lg, yy) in parts.items():
        before, after = calibration.softmax(lg), calibration.softmax(lg, t)
        if consult is not None:
            after = consult(after.astype(np.float32), inputs[name])
        probs[name] = after
        section[f"usps_{name}"] = {
            "n": len(yy), "accuracy": round(float((after.argmax(1) == yy).mean()), 6),
            "ece_before": round(calibration.ece(before, yy), 5),
            "ece_after": round(calibration.ece(after, yy), 5),
            "nll_before": round(calibration.nll(lg, yy), 5),
            "nll_after": round(calibration.nll(lg, yy, t), 5)}
    section["operating_point"] = operating_point(
        probs["calibration"], parts["calibration"][1], probs["test"], parts["test"][1])
    return t, section, {"usps_test": probs["test"], "usps_test_y": parts["test"][1]}


def operating_point(calib_probs: np.ndarray, calib_y: np.ndarray, test_probs: np.ndarray,
                    test_y: np.ndarray) -> dict[str, Any]:
    """The card's operating point: chosen on the USPS calibration part, checked on its test
    part (calibration.choose_threshold's rule)."""
    point = calibration.choose_threshold(calib_probs, calib_y)
    check = calibration.at_threshold(test_probs, test_y, point.threshold)
    return {
        "rule": f"highest threshold (0.01 steps) with review share <= "
                f"{calibration.MAX_REVIEW:.0%} and silent errors <= "
                f"{calibration.MAX_SILENT:.1%} on the USPS calibration part",
        "min_confidence": point.threshold, "usps_calibration": point.as_dict(),
        "usps_test": check.as_dict(),
        "review_within_target": check.review_share <= calibration.MAX_REVIEW,
        "silent_within_target": check.silent_errors <= calibration.MAX_SILENT}


# --- commands -----------------------------------------------------------------------------


def train_command(args) -> int:
    """`digitd train`: train --arch on MNIST (and USPS) and write model, card and report."""
    for name in ("epochs", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"digitd train: --{name} must be at least 1", file=sys.stderr)
            return ExitCode.USAGE
    second_epochs = getattr(args, "second_epochs", None)
    if second_epochs is not None and second_epochs < 0:
        print("digitd train: --second-epochs must be at least 0", file=sys.stderr)
        return ExitCode.USAGE
    verify = not getattr(args, "no_verify", False)
    try:
        data = load_mnist(args.data, verify=verify)
        usps = load_usps(args.usps, verify=verify) if getattr(args, "usps", None) else None
    except DatasetError as exc:
        print(f"digitd train: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.limit:
        data.x_train, data.y_train = data.x_train[: args.limit], data.y_train[: args.limit]
    out = Path(args.out)
    if problem := make_folder(out):
        print(f"digitd train: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    if second_epochs is None:
        second_epochs = SECOND_EPOCHS if args.arch == "cnn" else 0
    result = train(data, arch=args.arch, epochs=args.epochs or DEFAULT_EPOCHS[args.arch],
                   seed=args.seed, out=out, limit=args.limit, usps=usps,
                   second_epochs=second_epochs)
    line = (f"test accuracy {result['test']['accuracy']:.4f} in {result['training_seconds']:.0f}"
            f" s; wrote {out / f'digitd-{args.arch}.keras'} (model id {result['model_id'][:12]})")
    if "calibration" in result:
        op = result["calibration"]["operating_point"]
        check = op["usps_test"]
        line += (f"; T={result['calibration']['temperature']}, min_confidence "
                 f"{op['min_confidence']:.2f}: USPS test silent errors "
                 f"{check['silent_errors']:.2%}, review {check['review_share']:.2%}")
    print(line)
    return ExitCode.OK


def train(data: Mnist, arch: str, epochs: int, seed: int, out: Path,
          limit: int | None = None, usps: Usps | None = None,
          second_epochs: int = 0) -> dict[str, Any]:
    """Train one model; write digitd-<arch>.keras, .card.json and .report.png; return the card.

    CNN with `second_epochs`: first the second opinion (train_second), then the CNN starting
    from its weights; the CNN's card names the second, and every figure in it (MNIST test,
    the operating point) is of the pair's answers as served (digitd.model).
    """
    keras = import_keras()
    x_test = to_input(data.x_test)
    second = None
    if arch == "cnn" and second_epochs:
        second = train_second(keras, data, x_test, second_epochs, seed, out, limit, usps)
    x_train, y_train, sources = training_set(data, usps, seed, arch)
    model, history, seconds = fit(keras, x_train, y_train, data, arch, epochs, seed,
                                  start=second["network"] if second else None)
    consult = None
    if second is not None:
        ask = second["served"].predict

        def consult(probs: np.ndarray, x: np.ndarray) -> np.ndarray:
            return with_second_opinion(probs, x, lambda xs: ask(xs, batch_size=500, verbose=0),
                                       SECOND_BELOW, SECOND_WEIGHT)

    temperature, calib, curves = 1.0, None, {}
    if usps is not None:
        temperature, calib, curves = calibrate(keras, model, usps, consult)
        model = calibrated(keras, model, temperature)
    alone = model.predict(x_test, batch_size=500, verbose=0)
    probs = consult(alone, x_test) if consult else alone
    test = metrics(data.y_test, probs)
    test["ece"] = round(calibration.ece(probs, data.y_test), 5)
    model_id = save_model(keras, model, out / f"digitd-{arch}.keras")
    card = model_card(model, model_id, data, arch, epochs, seed, history, seconds, test, limit,
                      sources, usps)
    if calib is not None:
        card["calibration"] = calib
    if second is not None:
        card["second_opinion"] = {
            "model": second["card"]["name"], "model_id": second["card"]["model_id"],
            "below": SECOND_BELOW, "weight": SECOND_WEIGHT,
            "rule": f"below {SECOND_BELOW} top probability, the mean of both networks' "
                    f"probabilities ({SECOND_WEIGHT:.0%} the second's)",
            "mnist_test_alone": metrics(data.y_test, alone)["accuracy"],
            "mnist_test_second_alone": second["card"]["test"]["accuracy"],
            "mnist_test_together": test["accuracy"],
            "warm_start": "this network started from the second opinion's trained weights"}
        card["training_seconds"] = round(seconds + second["card"]["training_seconds"], 1)
    finish_card(out / f"digitd-{arch}.keras", card, x_test, data, usps)
    curves["mnist_test"], curves["mnist_test_y"] = probs, data.y_test
    title = (f"digitd-{arch}: MNIST test {test['accuracy']:.2%} ({test['errors']} errors / "
             f"{test['n']}), {card['training_seconds']:.0f} s, seed {seed}")
    if second is not None:
        title += " (with its second opinion)"
    if calib is not None:
        title += (f"; USPS test {calib['usps_test']['accuracy']:.2%}, T={temperature:.3f}, "
                  f"min_confidence {calib['operating_point']['min_confidence']:.2f}")
    save_report(out / f"digitd-{arch}.report.png", history, np.array(test["confusion_matrix"]),
                data.x_test, data.y_test, probs, curves, title=title)
    _log().info("trained", arch=arch, accuracy=test["accuracy"], seconds=round(seconds, 1),
                model_id=model_id, temperature=round(temperature, 4))
    return card


def train_second(keras, data: Mnist, x_test: np.ndarray, epochs: int, seed: int, out: Path,
                 limit: int | None, usps: Usps | None) -> dict[str, Any]:
    """The second opinion: the CNN's network trained on MNIST's digits only, varied only as
    MNIST's own writers vary (digitd.augment.mnist_batch: the issue-2 network's recipe),
    calibrated like the CNN; written as digitd-cnn.second.keras (with its .tflite and card).
    It reads MNIST-like digits better than the CNN trained for other writers too, and errs
    on other digits.

    Returns {"network": the trained network (the CNN starts from it), "served": the same
    calibrated, "card": its card}.
    """
    network, history, seconds = fit(keras, data.x_train, data.y_train, data, "cnn", epochs,
                                    seed, vary=mnist_batch)
    served, calib = network, None
    if usps is not None:
        temperature, calib, _ = calibrate(keras, network, usps)
        served = calibrated(keras, network, temperature)
    probs = served.predict(x_test, batch_size=500, verbose=0)
    test = metrics(data.y_test, probs)
    target = out / SECOND_NAME
    model_id = save_model(keras, served, target)
    card = model_card(served, model_id, data, "cnn", epochs, seed, history, seconds, test, limit,
                      {"mnist_train": len(data.x_train)}, usps, name=SECOND_NAME)
    card["training"]["augmentation"] = ("digitd.augment.mnist_batch: stroke width, rotation "
                                        "±10°, zoom ±10%, shift ±2 px")
    card["role"] = "the second opinion of digitd-cnn.keras (see its card)"
    if calib is not None:
        card["calibration"] = calib
    finish_card(target, card, x_test, data, usps)
    _log().info("trained", arch="cnn", role="second opinion", accuracy=test["accuracy"],
                seconds=round(seconds, 1), model_id=model_id)
    return {"network": network, "served": served, "card": card}


def finish_card(target: Path, card: dict[str, Any], x_test: np.ndarray, data: Mnist,
                usps: Usps | None = None) -> None:
    """Convert the saved `target` to its int8 .tflite (parity checked on the MNIST test set,
    recorded in the card; float32 if int8 fails it: digitd.export), write the card beside
    it, then measure the model as served (`as_served`) and write the card again."""
    card["tflite"] = tflite_card_entry(target, x_test, data.y_test,
                                       f"MNIST test set ({data.source})", precision="int8")
    write_card(target, card)
    if card["tflite"].get("sha256"):
        as_served(target, card, x_test, data.y_test, usps)
        write_card(target, card)


def as_served(target: Path, card: dict[str, Any], x_test: np.ndarray, y_test: np.ndarray,
              usps: Usps | None) -> None:
    """Measure the model as the daemon serves it (its .tflite through LiteRT, with its card's
    second opinion; digitd.model) into the card: `as_served` (MNIST test and, with `usps`,
    its calibration and test parts) and, with `usps`, the operating point chosen again on
    these answers: an int8 .tflite moves probabilities by a few hundredths, and the
    min_confidence promise is about the answers people get."""
    from digitd.model import load_classifier

    served = load_classifier(target, runtime="litert")
    section: dict[str, Any] = {
        "runtime": served.runtime, "precision": card["tflite"]["precision"],
        "second_opinion": served.second is not None,
        "mnist_test": metrics(y_test, served.predict(x_test))["accuracy"]}
    calib = card.get("calibration")
    if usps is not None and calib is not None:
        probs, labels = {}, {}
        for name in ("calibration", "test"):
            x16, y = usps.part(name)
            probs[name], labels[name] = served.predict(usps_inputs(x16)), y.astype(np.int64)
            section[f"usps_{name}"] = round(float((probs[name].argmax(1) == y).mean()), 6)
        calib["operating_point"] = {
            **operating_point(probs["calibration"], labels["calibration"], probs["test"],
                              labels["test"]),
            "answers": f"as served ({section['precision']} .tflite through LiteRT"
                       + (", with the second opinion)" if section["second_opinion"] else ")")}
    card["as_served"] = section


def fit(keras, x_train: np.ndarray, y_train: np.ndarray, data: Mnist, arch: str, epochs: int,
        seed: int, vary=augment_batch, start=None) -> tuple[Any, dict, float]:
    """Build and train the model (from `start`'s weights if given); return it, its per-epoch
    history and the training seconds."""
    keras.utils.set_random_seed(seed)
    batch = BATCH_SIZE[arch]
    steps_per_epoch = math.ceil(len(x_train) / batch)
    model = build_cnn(keras) if arch == "cnn" else build_mlp(keras)
    if start is not None:
        model.set_weights(start.get_weights())
    compile_model(keras, model, arch, steps_per_epoch * epochs)
    train_ds = make_train_dataset(x_train, y_train, batch, seed,
                                  vary=vary if arch == "cnn" else None)
    interactive = sys.stdout.isatty()
    _log().info("training", arch=arch, epochs=epochs, seed=seed, train=len(x_train),
                test=len(data.x_test), params=model.count_params())
    started = time.monotonic()
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=(to_input(data.x_test), data.y_test),
                        validation_batch_size=500, shuffle=False,  # train_ds is shuffled
                        verbose=1 if interactive else 0,
                        callbacks=[] if interactive else [epoch_logger(keras, epochs)])
    return model, history.history, time.monotonic() - started


def model_card(model, model_id: str, data: Mnist, arch: str, epochs: int, seed: int,
               history: dict, seconds: float, test: dict, limit: int | None,
               sources: dict[str, Any], usps: Usps | None,
               name: str | None = None) -> dict[str, Any]:
    """Everything needed to trust and reproduce the model, as one JSON-ready dict."""
    dataset: dict[str, Any] = {
        "source": data.source, "sha256": data.sha256, "train": len(data.x_train),
        "test": len(data.x_test), "limit": limit, "trained_on": sources}
    if usps is not None:
        split = usps.split()
        dataset["usps"] = {
            "source": usps.source, "sha256": usps.sha256,
            "split": "numpy default_rng(20261130).permutation(n): train 50% / calibration 20% "
                     "/ test 30% (digitd.dataset.usps_split); the test part is never trained "
                     "or calibrated on",
            "parts": {name: {"n": len(idx), "indices_sha256": split_sha256(idx)}
                      for name, idx in split.items()}}
    return {
        "name": name or f"digitd-{arch}.keras",
        "model_id": model_id,  # SHA-256 of the .keras file
        "arch": arch,
        "architecture": describe_layers(model),
        "parameters": int(model.count_params()),
        "input": "(N, 28, 28) float32 in [0, 1], ink bright on dark, MNIST-normalised",
        "output": "(N, 10) float32 softmax probabilities for digits 0-9"
                  + (" (calibrated: logits / T)" if usps is not None else ""),
        "dataset": dataset,
        "validation": "the MNIST test set, monitored per epoch only (no early stopping, no "
                      "selection)",
        "training": {"seed": seed, "epochs": epochs, "batch_size": BATCH_SIZE[arch],
                     "augmentation": "digitd.augment (elastic, slant ±20°, rotation, aspect, "
                                     "stroke width, low-res, binarised, anti-aliased)"
                                     if arch == "cnn" else None,
                     "optimizer": "adam",
                     "peak_learning_rate": PEAK_LR if arch == "cnn" else 1e-3,
                     "seconds": round(seconds, 1),
                     "history": {k: [round(float(v), 5) for v in vs] for k, vs in history.items()}},
        "training_seconds": round(seconds, 1),
        "test": test,
        "library_versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
