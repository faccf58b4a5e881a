"""`digitd train --corrections DIR [...] [--base MODEL]`: teach a model what reviewers said.

The steps, each a function below:

1. read_corrections: in each outbox, the last row per id of corrections.csv whose verdict gives
   a digit (confirmed or corrected), with its image corrections/<id>.png (SHA-256 checked),
   normalised exactly as the daemon normalises an input; an image given verdicts in several
   outboxes counts once, with its latest label. Corrections of numbers (a label or a
   prediction of several digits) are skipped and counted: the image holds a whole line, and
   which of its pieces a wrong digit is cannot be told from a string of another length; the
   number models learn them (digitd.finetune_numbers).
2. split: a fifth is held out, chosen by a hash of the image (stable as corrections grow).
3. fine_tune: the base model (default: the shipped one) trains on batches that are half
   corrections and half MNIST (replayed so that nothing is forgotten), both augmented, with a
   small learning rate decaying to zero.
4. judge: accuracy on the held-out corrections and on the MNIST test set, before and after.
   A model that is worse on the held-out corrections, or loses more than MAX_MNIST_DROP on
   MNIST, is refused (exit code 1) and nothing is written.
5. recalibrate: fine-tuning moves the logits, so the temperature baked into the base model no
   longer fits them. It is fitted again (digitd.calibration, as `digitd train` does) on digits
   never trained on: the held-out corrections (the reviewers' own population) and, with
   --usps, the USPS calibration part; ECE before/after and the operating point the rule of
   `digitd train` would choose on them go in the card (the temperature does not change which
   digit wins, so the judgement above holds).
6. write the .keras, the .tflite converted from it (parity checked by digitd.export) and the
   card (with the corrections' count and hash). The base's second opinion (digitd.model), if
   it has one, is not carried over: it never saw the corrections, and it is asked exactly on
   the digits the network is unsure of, so it would argue against what reviewers taught.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from digitd import calibration
from digitd.codes import ExitCode
from digitd.dataset import DatasetError, Mnist, Usps, load_mnist, load_usps

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = ExitCode.OK, ExitCode.FAILURE, ExitCode.USAGE
MAX_MNIST_DROP = 0.001  # 0.1 point of MNIST test accuracy
HELD_OUT = 5  # one correction in five is held out
BATCH = 128  # half corrections, half MNIST
PEAK_LR = 3e-4  # a tenth of training's peak: adjust the model, do not retrain it
PASSES = 40  # default steps: each training correction is seen about this many times
MIN_STEPS, MAX_STEPS = 200, 2000


class CorrectionsError(Exception):
    """No usable corrections, or a folder that holds none; the message is one line."""


@dataclass
class Corrections:
    """Corrected digits ready for the model, and where they came from."""

    x: np.ndarray  # (N, 28, 28) float32 in [0, 1]: the model's input contract
    y: np.ndarray  # (N,) int64 labels
    sha256: list[str]  # of each image
    sources: list[str]
    skipped: dict[str, int]  # why rows were not used -> count

    @property
    def digest(self) -> str:
        """SHA-256 naming exactly this set: its images and labels, in a canonical order."""
        lines = sorted(f"{s},{int(y)}\n" for s, y in zip(self.sha256, self.y, strict=True))
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    def held_out(self) -> np.ndarray:
        """Mask of the held-out fifth, by a hash of each image (not by position or time)."""
        return held_out_mask(self.sha256)


# --- 1. reading -----------------------------------------------------------------------------


def latest_verdicts(folders: list[Path], numbers: bool = False, longest: int = 1,
                    ) -> tuple[dict[str, tuple[str, Path]], dict[str, int]]:
    """The last usable verdict per image in these outboxes' corrections.csv: image sha256 ->
    (label, its copy corrections/<id>.png), and why other rows were skipped -> count. A
    row gives a label when its verdict is confirmed or corrected; it is a number's when its
    label or the string read holds two digits or more. `numbers` False takes the single
    digits (numbers are skipped as "number"), True the numbers (single digits are skipped as
    "digit"); a label longer than `longest` digits is skipped as "too long". An image given
    verdicts in several outboxes counts once, with its latest label."""
    latest: dict[str, tuple[str, str, Path]] = {}  # image sha256 -> (reviewed_at, label, png)
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        count(skipped, why)

    for folder in folders:
        path = folder / "corrections.csv"
        if not path.is_file():
            raise CorrectionsError(f"{folder}: no corrections.csv (give an outbox that "
                                   "digitd review has written to)")
        with open(path, encoding="utf-8", newline="") as f:
            last = {row["id"]: row for row in csv.DictReader(f) if row.get("id")}
        for row in last.values():
            if row.get("verdict") not in ("confirmed", "corrected"):
                skip(row.get("verdict") or "no verdict")  # not_a_digit, undone
                continue
            label, sha = row.get("label", ""), row.get("sha256", "")
            if (len(label) > 1 or len(row.get("predicted", "")) > 1) != numbers:
                skip("digit" if numbers else "number")  # the other command's to learn from
                continue
            if not label or not label.isascii() or not label.isdigit() or len(sha) != 64:
                skip("malformed row")
                continue
            if len(label) > longest:
                skip("too long")
                continue
            png = folder / "corrections" / f"{row['id']}.png"
            if "/" in row["id"] or not png.is_file():
                skip("image missing")
                continue
            previous = latest.get(sha)
            if previous is None or previous[0] <= row.get("reviewed_at", ""):
                latest[sha] = (row.get("reviewed_at", ""), label, png)
    return {sha: (label, png) for sha, (_, label, png) in sorted(latest.items())}, skipped


def count(skipped: dict[str, int], why: str) -> None:
    """One more row or image skipped for `why`."""
    skipped[why] = skipped.get(why, 0) + 1


def held_out_mask(sha256: list[str]) -> np.ndarray:
    """Which images are held out: one in HELD_OUT, by a hash of each image (not by position
    or time, so the split is stable as corrections grow)."""
    return np.array([int(s[:8], 16) % HELD_OUT == 0 for s in sha256], dtype=bool)


def read_corrections(folders: list[Path], max_pixels: int = 40_000_000) -> Corrections:
    """The usable corrections of these outboxes (see the module docstring)."""
    from digitd.intake import take_in

    latest, skipped = latest_verdicts(folders)
    xs, ys, shas = [], [], []
    for sha, (label, png) in latest.items():
        intake = take_in(png, max_pixels)  # exactly as the daemon takes an input in
        if intake.sha256 and intake.sha256 != sha:
            count(skipped, "image does not match its sha256")
            continue
        if not intake.ok:
            count(skipped, f"image rejected ({intake.error})")
            continue
        xs.append(intake.model_input)
        ys.append(int(label))
        shas.append(sha)
    if not xs:
        raise CorrectionsError("no usable corrections (single digits confirmed or corrected, "
                               f"with their images) in {', '.join(map(str, folders))}; "
                               f"skipped: {skipped or 'none'}")
    return Corrections(np.stack(xs).astype(np.float32), np.array(ys, dtype=np.int64), shas,
                       [str(f) for f in folders], skipped)


# --- 3. fine-tuning ---------------------------------------------------------------------------


def default_steps(n_train: int) -> int:
    return int(np.clip(math.ceil(PASSES * n_train / (BATCH // 2)), MIN_STEPS, MAX_STEPS))


def batches(images: np.ndarray, labels: np.ndarray, size: int, scale: float, seed: int):
    """An endless tf.data stream of (images * scale as float32, labels as int32) batches of
    `size`, reshuffled every pass: the two halves of each fine-tuning batch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return ds.repeat().batch(size, drop_remainder=len(images) >= size).map(
        lambda a, b: (tf.cast(a, tf.float32) * scale, b))


def fine_tune(keras, model, x: np.ndarray, y: np.ndarray, mnist: Mnist, steps: int,
              seed: int) -> float:
    """Train `model` in place for `steps` batches; returns the seconds taken."""
    import tensorflow as tf

    from digitd.augment import augment_batch

    half = BATCH // 2
    keras.utils.set_random_seed(seed)
    corrections = batches(x, y, half, 1.0, seed + 1)
    replay = batches(mnist.x_train, mnist.y_train, half, 1.0 / 255.0, seed + 2)

    def mix(step, pair):
        (xc, yc), (xm, ym) = pair
        images = augment_batch(tf.concat([xc, xm], 0), tf.cast(step, tf.int32), seed)
        return images, tf.concat([yc, ym], 0)

    data = tf.data.Dataset.zip((corrections, replay)).enumerate().map(mix).prefetch(2)
    warm = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=PEAK_LR / 10, decay_steps=max(1, steps - warm), alpha=0.0,
        warmup_target=PEAK_LR, warmup_steps=warm)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy")
    started = time.monotonic()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.monotonic() - started


# --- 4. judging -------------------------------------------------------------------------------


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    if not len(x):
        return float("nan")
    probabilities = model.predict(x, batch_size=500, verbose=0)
    return float((probabilities.argmax(axis=1) == y).mean())


@dataclass
class Judgement:
    """A fine-tuned model against its base: on the held-out corrections (it must not be
    worse) and on a set it must not forget (`kept`: the MNIST test set for the digit model,
    held-out training strings for the number models), at most `max_drop` lost there."""

    held_out_before: float
    held_out_after: float
    kept_before: float
    kept_after: float
    kept: str = "the MNIST test set"
    max_drop: float = MAX_MNIST_DROP

    def refusal(self) -> str | None:
        """Why the new model must not be written, or None."""
        if self.held_out_after < self.held_out_before:
            return (f"it is worse on the held-out corrections ({self.held_out_after:.2%} < "
                    f"{self.held_out_before:.2%} before)")
        if self.kept_before - self.kept_after > self.max_drop + 1e-9:
            return (f"it loses {100 * (self.kept_before - self.kept_after):.2f} points on "
                    f"{self.kept} ({self.kept_before:.2%} -> {self.kept_after:.2%}; "
                    f"at most {100 * self.max_drop:.1f} allowed)")
        return None


# --- 5. recalibrating ---------------------------------------------------------------------------


def uncalibrated(keras, model):
    """The same network without its temperature layer (if it has one): logits, then softmax."""
    layers = model.layers[:-1]
    if layers and layers[-1].name == "temperature":
        layers = layers[:-1]
    return keras.Sequential([keras.Input(shape=(28, 28), name="digits"), *layers,
                             keras.layers.Activation("softmax", name="probabilities")],
                            name=model.name)


def recalibrate(keras, model, held: tuple[np.ndarray, np.ndarray], usps: Usps | None,
                base_temperature: float | None):
    """(the model with a temperature fitted again, the card's "calibration" section).

    Digits that are all answered right carry no evidence about over-confidence (the NLL then
    falls as T falls, to the search's floor): without a single wrong answer among them the
    base model's temperature is kept, and the section says so."""
    from digitd.train import calibrated, logits_of, usps_inputs

    plain = uncalibrated(keras, model)
    sets = {"held_out_corrections": held}
    if usps is not None:
        x16, y16 = usps.part("calibration")
        sets["usps_calibration"] = (usps_inputs(x16), y16.astype(np.int64))
    logits = {name: logits_of(keras, plain, x) for name, (x, _) in sets.items()}
    labels = {name: y for name, (_, y) in sets.items()}
    all_logits = np.concatenate(list(logits.values()))
    all_y = np.concatenate(list(labels.values()))
    wrong = int((all_logits.argmax(1) != all_y).sum())
    fitted = wrong > 0 or base_temperature is None
    t = calibration.fit_temperature(all_logits, all_y) if fitted else float(base_temperature)
    section: dict = {"method": "temperature scaling (logits / T before the softmax), fitted "
                               "again after fine-tuning",
                     "fitted_on": " + ".join(sets), "n": int(len(all_y)), "wrong": wrong,
                     "temperature": round(t, 4), "base_temperature": base_temperature,
                     "refitted": fitted}
    if not fitted:
        section["note"] = ("no wrong answer among these digits: the base model's temperature "
                           "is kept (give --usps to fit on its calibration part)")
    for name in sets:
        before = model.predict(sets[name][0], batch_size=500, verbose=0)  # the old temperature
        after = calibration.softmax(logits[name], t)
        section[name] = {"n": int(len(labels[name])),
                         "ece_before": round(calibration.ece(before, labels[name]), 5),
                         "ece_after": round(calibration.ece(after, labels[name]), 5),
                         "nll_after": round(calibration.nll(logits[name], labels[name], t), 5)}
    point = calibration.choose_threshold(calibration.softmax(all_logits, t), all_y)
    section["operating_point"] = {
        "rule": "digitd train's rule (calibration.choose_threshold) on the digits above",
        "min_confidence": point.threshold, "at": point.as_dict()}
    return calibrated(keras, plain, t), section


# --- the command --------------------------------------------------------------------------------


def open_inputs(args: argparse.Namespace, read):
    """(the corrections `read` finds in the --corrections outboxes, MNIST, USPS or None, the
    --out folder made), or EXIT_USAGE with the reason said on stderr."""
    from digitd.fsutil import make_folder

    try:
        corrections = read([Path(d) for d in args.corrections])
        mnist = load_mnist(args.data, verify=not args.no_verify)
        usps = load_usps(args.usps, verify=not args.no_verify) if args.usps else None
    except (CorrectionsError, DatasetError) as exc:
        print(f"digitd train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    if problem := make_folder(out):
        print(f"digitd train: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return corrections, mnist, usps, out


def fine_tune_command(args: argparse.Namespace) -> int:
    """`digitd train --corrections DIR ...`: report before/after; write the model or refuse."""
    from digitd.model import card_path, default_model_path, file_sha256, import_keras, read_card
    from digitd.train import finish_card, library_versions, metrics, save_model, to_input

    if args.epochs is not None or args.limit is not None:
        print("digitd train: --epochs and --limit train from scratch; with --corrections "
              "use --steps", file=sys.stderr)
        return EXIT_USAGE
    if args.steps is not None and args.steps < 1:
        print("digitd train: --steps must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    base = Path(args.base) if args.base else default_model_path()
    if not base.is_file():
        print(f"digitd train: --base {base}: no such model file", file=sys.stderr)
        return EXIT_USAGE
    opened = open_inputs(args, read_corrections)
    if not isinstance(opened, tuple):
        return opened
    corrections, mnist, usps, out = opened

    held = corrections.held_out()
    x_train, y_train = corrections.x[~held], corrections.y[~held]
    x_held, y_held = corrections.x[held], corrections.y[held]
    if not len(x_train) or not len(x_held):
        print(f"digitd train: {len(corrections.y)} corrections are too few to hold a fifth "
              "out and train on the rest", file=sys.stderr)
        return EXIT_USAGE
    steps = args.steps or default_steps(len(x_train))
    keras = import_keras()
    model = keras.saving.load_model(base, compile=False)
    x_test = to_input(mnist.x_test)
    before_held, before_mnist = accuracy(model, x_held, y_held), accuracy(model, x_test,
                                                                           mnist.y_test)
    print(f"corrections: {len(corrections.y)} usable ({len(x_train)} to train on, "
          f"{len(x_held)} held out); skipped: {corrections.skipped or 'none'}")
    if corrections.skipped.get("number"):
        print(f"skipped {corrections.skipped['number']} corrections of numbers: the number "
              "models learn them (digitd train --arch numbers --corrections)")
    print(f"before: held-out corrections {before_held:.2%}, MNIST test {before_mnist:.2%}")
    seconds = fine_tune(keras, model, x_train, y_train, mnist, steps, args.seed)
    probabilities = model.predict(x_test, batch_size=500, verbose=0)
    test = metrics(mnist.y_test, probabilities)
    judgement = Judgement(before_held, accuracy(model, x_held, y_held), before_mnist,
                          test["accuracy"])
    print(f"after:  held-out corrections {judgement.held_out_after:.2%}, "
          f"MNIST test {judgement.kept_after:.2%} ({steps} steps, {seconds:.0f} s)")
    why = judgement.refusal()
    if why is not None:
        print(f"digitd train: refused to write the model: {why}", file=sys.stderr)
        return EXIT_REFUSED
    base_temperature = (read_card(base).get("calibration") or {}).get("temperature")
    model, calib = recalibrate(keras, model, (x_held, y_held), usps, base_temperature)
    probabilities = model.predict(x_test, batch_size=500, verbose=0)
    test = metrics(mnist.y_test, probabilities)
    test["ece"] = round(calibration.ece(probabilities, mnist.y_test), 5)
    print(f"temperature: {base_temperature} -> {calib['temperature']} ("
          f"{'fitted' if calib['refitted'] else 'kept: no wrong answer'} on {calib['fitted_on']},"
          f" {calib['n']} digits); the operating point there: min_confidence "
          f"{calib['operating_point']['min_confidence']:.2f}")

    name = f"{base.name.removesuffix('.keras')}-corrected"
    target = out / f"{name}.keras"
    model_id = save_model(keras, model, target)
    base_card = read_card(base)
    card = {
        **{k: base_card[k] for k in ("arch", "architecture", "parameters", "input", "output")
           if k in base_card},
        "name": target.name,
        "model_id": model_id,
        "base": {"name": base.name, "model_id": file_sha256(base),
                 "test_accuracy": base_card.get("test", {}).get("accuracy")},
        "corrections": {"count": len(corrections.y), "sha256": corrections.digest,
                        "trained": len(x_train), "held_out": len(x_held),
                        "sources": corrections.sources, "skipped": corrections.skipped},
        "held_out_accuracy": {"before": round(before_held, 6),
                              "after": round(judgement.held_out_after, 6)},
        "mnist_test_accuracy": {"before": round(before_mnist, 6),
                                "after": round(judgement.kept_after, 6)},
        "fine_tuning": {"steps": steps, "batch_size": BATCH, "corrections_per_batch": BATCH // 2,
                        "peak_learning_rate": PEAK_LR, "seed": args.seed,
                        "augmentation": True, "replay": mnist.source,
                        "seconds": round(seconds, 1)},
        "dataset": {"source": mnist.source, "sha256": mnist.sha256},
        "calibration": calib,
        "test": test,
        "library_versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if base_card.get("second_opinion"):
        card["second_opinion_dropped"] = (
            f"{base_card['second_opinion']['model']}, the base's second opinion, did not learn "
            "the corrections and would be asked exactly where they matter (the digits the "
            "network is unsure of): this model is served alone")
    # the .tflite that serving runs, converted and checked against the .keras (digitd.export)
    finish_card(target, card, x_test, mnist)
    print(f"wrote {target} (model id {model_id[:12]}) and {card_path(target).name}")
    return EXIT_OK

