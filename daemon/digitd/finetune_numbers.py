"""`digitd train --arch numbers --corrections DIR [...] [--base MODEL]`: teach the number
models what reviewers said about numbers.

The steps, as digitd.finetune's for single digits (each a function below):

1. read_number_corrections: in each outbox, the last verdict per image that gives a number's
   string (confirmed or corrected; its label or the string read holds two digits or more,
   so a number read as one digit and corrected counts), with its image
   corrections/<id>.png (SHA-256 checked), taken in and segmented exactly as the daemon
   does: the line's strip is what the number models read. An image the daemon reads as one
   part (no line) and a label longer than MAX_LABEL digits are skipped and counted.
2. split: a fifth held out, by a hash of the image (digitd.finetune.held_out_mask).
3. fine_tune: the base number model (default: the shipped one) and, if its card names one,
   its second, each in turn, train on batches that are half corrections and half strings
   made as `digitd train --arch numbers` makes them from MNIST's training digits (replayed
   so that nothing is forgotten), with a small learning rate decaying to zero.
4. judge: strings read exactly on the held-out corrections and on held-out strings of
   MNIST training digits no model trained on, before and after. A model that is worse on
   the held-out corrections, or loses more than MAX_STRINGS_DROP on the strings, is refused
   (exit code 1) and nothing is written.
5. recalibrate: the temperature (the string confidence behind min_confidence) is fitted
   again (train_numbers.fit_temperature) on the held-out corrections and strings.
6. write digitd-numbers.keras and its second as digitd-numbers.second.keras into --out,
   each with its .tflite (parity checked on the held-out strings) and card (the
   corrections' count and hash, before/after), the first's card naming the second: point
   `number_model:` at DIR/digitd-numbers.keras and reload the daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from digitd import ctc
from digitd.finetune import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CorrectionsError,
    Judgement,
    batches,
    count,
    held_out_mask,
    latest_verdicts,
    open_inputs,
)

MAX_LABEL = 16  # digits a strip holds at most (its 64 steps; training strings hold 8)
MAX_STRINGS_DROP = 0.01  # 1 point of the held-out strings (2,000: about 2 standard errors)
HELD_OUT_STRINGS = 2000
BATCH = 64  # half corrections, half training strings
PEAK_LR = 2e-4  # a tenth of training's peak: adjust the models, do not retrain them
PASSES = 20  # default steps: each training correction is seen about this many times
MIN_STEPS, MAX_STEPS = 200, 1500
REPLAY_SEED = 1000  # the replayed strings' seed offset: other strings than training's


@dataclass
class NumberCorrections:
    """Corrected numbers ready for the number models, and where they came from."""

    strips: np.ndarray  # (N, HEIGHT, WIDTH) float32: the lines as the daemon cuts them
    labels: np.ndarray  # (N, MAX_LABEL) int32: 1 + digit, 0 after the end (CTC classes)
    texts: list[str]
    sha256: list[str]
    sources: list[str]
    skipped: dict[str, int]

    @property
    def digest(self) -> str:
        """SHA-256 naming exactly this set: its images and labels, in a canonical order."""
        lines = sorted(f"{s},{t}\n" for s, t in zip(self.sha256, self.texts, strict=True))
        return hashlib.sha256("".join(lines).encode()).hexdigest()


# --- 1. reading -----------------------------------------------------------------------------


def read_number_corrections(folders: list[Path],
                            max_pixels: int = 40_000_000) -> NumberCorrections:
    """The usable corrections of numbers in these outboxes (see the module docstring)."""
    from digitd.intake import take_in

    latest, skipped = latest_verdicts(folders, numbers=True, longest=MAX_LABEL)
    strips, texts, shas = [], [], []
    for sha, (label, png) in latest.items():
        intake = take_in(png, max_pixels, recognise="number")  # as the daemon reads a number
        if intake.sha256 and intake.sha256 != sha:
            count(skipped, "image does not match its sha256")
        elif not intake.ok:
            count(skipped, f"image rejected ({intake.error})")
        elif intake.line is None or intake.line.strip is None:
            count(skipped, "one part, not a line")  # the daemon reads it as one digit
        else:
            strips.append(intake.line.strip.pixels)
            texts.append(label)
            shas.append(sha)
    if not strips:
        raise CorrectionsError("no usable corrections of numbers (confirmed or corrected, "
                               f"with their images) in {', '.join(map(str, folders))}; "
                               f"skipped: {skipped or 'none'}")
    labels = np.zeros((len(texts), MAX_LABEL), np.int32)
    for row, text in zip(labels, texts, strict=True):
        row[:len(text)] = [int(c) + 1 for c in text]
    return NumberCorrections(np.stack(strips).astype(np.float32), labels, texts, shas,
                             [str(f) for f in folders], skipped)


# --- 3. fine-tuning -------------------------------------------------------------------------


def default_steps(n_train: int) -> int:
    return int(np.clip(math.ceil(PASSES * n_train / (BATCH // 2)), MIN_STEPS, MAX_STEPS))


def logits_model(keras, model):
    """The saved number model's network without its temperature and softmax (the same
    layers, so training this trains them)."""
    from digitd import strip

    layers = [layer for layer in model.layers
              if layer.name not in ("temperature", "probabilities")]
    return keras.Sequential([keras.Input(shape=(strip.HEIGHT, strip.WIDTH), name="strip"),
                             *layers], name=model.name)


def fine_tune(keras, plain, x: np.ndarray, y: np.ndarray, replay: tuple[np.ndarray, np.ndarray],
              steps: int, seed: int) -> float:
    """Train `plain` (logits) in place for `steps` batches, half corrections, half replayed
    training strings (uint8 strips); returns the seconds taken."""
    import tensorflow as tf

    from digitd.train_numbers import ctc_loss

    half = BATCH // 2
    keras.utils.set_random_seed(seed)
    padded = np.zeros((len(replay[1]), y.shape[1]), np.int32)  # labels as long as theirs
    padded[:, :replay[1].shape[1]] = replay[1]
    data = tf.data.Dataset.zip((batches(x, y, half, 1.0, seed + 1),
                                batches(replay[0], padded, half, 1 / 255, seed + 2)))
    data = data.map(lambda c, r: (tf.concat([c[0], r[0]], 0), tf.concat([c[1], r[1]], 0)))
    warm = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=PEAK_LR / 10, decay_steps=max(1, steps - warm), alpha=0.0,
        warmup_target=PEAK_LR, warmup_steps=warm)
    plain.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0), loss=ctc_loss(keras))
    started = time.monotonic()
    plain.fit(data.prefetch(2), epochs=1, steps_per_epoch=steps, verbose=0)
    return time.monotonic() - started


# --- 4. judging -----------------------------------------------------------------------------


def logits_of(plain, x: np.ndarray) -> np.ndarray:
    return np.asarray(plain.predict(x, batch_size=256, verbose=0), np.float64)


def exact(logits: np.ndarray, texts: list[str]) -> np.ndarray:
    """Which strings the greedy reading gets exactly (the argmax: the same for any T)."""
    return np.array([ctc.greedy(lg).text == t for lg, t in zip(logits, texts, strict=True)])


def judged(held_out: tuple[float, float], strings: tuple[float, float]) -> Judgement:
    """(before, after) on the held-out corrections and on the held-out strings, judged as
    digitd.finetune judges a digit model, the strings being what must not be forgotten."""
    return Judgement(*held_out, *strings, kept="the held-out strings",
                     max_drop=MAX_STRINGS_DROP)


def as_dict(judgement: Judgement) -> dict[str, Any]:
    """The card's "exact": strings read exactly, before and after."""
    return {"held_out_corrections": {"before": round(judgement.held_out_before, 6),
                                     "after": round(judgement.held_out_after, 6)},
            "held_out_strings": {"before": round(judgement.kept_before, 6),
                                 "after": round(judgement.kept_after, 6)}}


# --- 5. recalibrating -----------------------------------------------------------------------


def recalibrate(sets: dict[str, tuple[np.ndarray, list[str]]],
                base_temperature: float | None) -> tuple[float, dict[str, Any]]:
    """The temperature fitted again on these sets (name -> (logits, truths)), and the card's
    "calibration" section. Strings all read right carry no evidence about over-confidence:
    without a wrong one the base model's temperature is kept."""
    from digitd.train_numbers import fit_temperature, measure

    logits = np.concatenate([lg for lg, _ in sets.values()])
    truths = [t for _, ts in sets.values() for t in ts]
    greedy = [ctc.greedy(lg) for lg in logits]
    right = np.array([g.text == t for g, t in zip(greedy, truths, strict=True)])
    fitted = (not right.all()) or base_temperature is None
    t = (fit_temperature(logits, [[e.value + 1 for e in g.emissions] for g in greedy], right)
         if fitted else float(base_temperature))
    section: dict[str, Any] = {
        "method": "temperature scaling of the per-step logits, fitted again after "
                  "fine-tuning (the probability of the string read predicting whether it is "
                  "read exactly, log loss)",
        "fitted_on": " + ".join(sets), "n": len(truths), "wrong": int((~right).sum()),
        "temperature": round(t, 4), "base_temperature": base_temperature, "refitted": fitted}
    for name, (lg, ts) in sets.items():
        section[name] = measure(ctc.softmax(lg / t).astype(np.float32), ts)
    return t, section


# --- the command ----------------------------------------------------------------------------


@dataclass
class Material:
    """What every number model is fine-tuned and judged on."""

    corrections: NumberCorrections
    train: np.ndarray  # indices of the corrections trained on
    held: np.ndarray  # ...and of those held out
    strings: np.ndarray  # held-out strings (float strips) of MNIST training digits
    strings_truth: list[str]
    strings_what: str
    replay: tuple[np.ndarray, np.ndarray]  # training strings (uint8 strips, labels)
    replay_what: str

    @property
    def held_truth(self) -> list[str]:
        return [self.corrections.texts[i] for i in self.held]


@dataclass
class Tuned:
    """One number model fine-tuned, judged and recalibrated, not yet written."""

    source: Path
    source_card: dict[str, Any]  # read before anything is written
    source_id: str
    name: str  # the file it is written as
    plain: Any  # the network (logits), trained
    temperature: float
    calibration: dict[str, Any]
    judgement: Judgement
    seconds: float


def material(corrections: NumberCorrections, held: np.ndarray, mnist, usps, steps: int,
             seed: int) -> Material:
    """The corrections split by `held` (held_out_mask); the held-out strings and the strings
    replayed (those of `digitd train --arch numbers`: MNIST training digits, with --usps its
    train part's at training's share too, as the second model was trained)."""
    from digitd.train_numbers import (
        USPS_SHARE,
        held_out_from,
        held_out_strings,
        strings,
        texts,
    )

    x, y = mnist.x_train, mnist.y_train
    first_held = held_out_from(len(x))
    n_held = min(HELD_OUT_STRINGS, max(200, first_held // 10))
    count = min(steps * BATCH // 2, 30_000)
    # string makers in processes only where there are enough strings to pay for them
    workers = len(os.sched_getaffinity(0)) if n_held + count >= 2000 else 1
    strips, labels, what = held_out_strings(x, y, seed, n_held, workers)
    digits, digit_labels, other = x[:first_held], y[:first_held], None
    if usps is not None:
        from digitd.dataset import usps_ink

        ux, uy = usps.part("train")
        digits = np.concatenate([digits, usps_ink(ux)])
        digit_labels = np.concatenate([digit_labels, uy])
        other = first_held
    replay = strings(digits, digit_labels, 0, count, seed + REPLAY_SEED, workers, other)
    replay_what = (f"{count} strings of MNIST training digits 0-{first_held - 1}"
                   + (f", {USPS_SHARE:.0%} with the USPS train part's" if usps else "")
                   + f", seed {seed + REPLAY_SEED}")
    return Material(corrections, np.flatnonzero(~held), np.flatnonzero(held), strips,
                    texts(labels), what, replay, replay_what)


def tune(keras, path: Path, name: str, data: Material, steps: int, seed: int) -> Tuned:
    """Fine-tune the number model `path` on `data`, judge it, fit its temperature again."""
    from digitd.model import file_sha256, read_card

    card = read_card(path)
    plain = logits_model(keras, keras.saving.load_model(path, compile=False))
    held = data.corrections.strips[data.held]
    before = (exact(logits_of(plain, held), data.held_truth).mean(),
              exact(logits_of(plain, data.strings), data.strings_truth).mean())
    seconds = fine_tune(keras, plain, data.corrections.strips[data.train],
                        data.corrections.labels[data.train], data.replay, steps, seed)
    held_logits, string_logits = logits_of(plain, held), logits_of(plain, data.strings)
    judgement = judged((float(before[0]), float(exact(held_logits, data.held_truth).mean())),
                       (float(before[1]), float(exact(string_logits,
                                                      data.strings_truth).mean())))
    base_temperature = (card.get("calibration") or {}).get("temperature")
    t, calib = recalibrate({"held_out_corrections": (held_logits, data.held_truth),
                            "held_out_strings": (string_logits, data.strings_truth)},
                           base_temperature)
    return Tuned(path, card, file_sha256(path), name, plain, t, calib, judgement, seconds)


def write(keras, tuned: Tuned, out: Path, data: Material, steps: int,
          seed: int) -> dict[str, Any]:
    """The fine-tuned model as `digitd train` writes one: .keras, .tflite (int8, parity
    checked on the held-out strings) and card; returns the card."""
    from digitd.export import tflite_card_entry
    from digitd.model import file_sha256, write_card
    from digitd.train import library_versions, save_model
    from digitd.train_numbers import with_softmax

    target = out / tuned.name
    save_model(keras, with_softmax(keras, tuned.plain, tuned.temperature), target)
    base = tuned.source_card
    card = {
        **{k: base[k] for k in ("arch", "parameters", "input", "output", "dataset")
           if k in base},
        "name": target.name,
        "model_id": file_sha256(target),
        "base": {"name": tuned.source.name, "model_id": tuned.source_id,
                 "held_out_exact": (base.get("calibration") or {}).get("held_out", {}).get(
                     "exact")},
        "corrections": {"count": len(data.corrections.texts),
                        "sha256": data.corrections.digest, "trained": len(data.train),
                        "held_out": len(data.held), "sources": data.corrections.sources,
                        "skipped": data.corrections.skipped},
        "exact": as_dict(tuned.judgement),
        "training": base.get("training", {}),  # the base's, before fine-tuning
        "fine_tuning": {"steps": steps, "batch_size": BATCH,
                        "corrections_per_batch": BATCH // 2, "peak_learning_rate": PEAK_LR,
                        "seed": seed, "replay": data.replay_what,
                        "held_out_strings": data.strings_what,
                        "seconds": round(tuned.seconds, 1)},
        "calibration": tuned.calibration,
        "library_versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tflite": tflite_card_entry(target, data.strings,
                                    np.array(data.strings_truth, dtype=object),
                                    data.strings_what, precision="int8"),
    }
    write_card(target, card)
    return card


def fine_tune_numbers_command(args: argparse.Namespace) -> int:
    """`digitd train --arch numbers --corrections DIR ...`: report before/after for each
    number model; write them all, or refuse and write nothing."""
    from digitd.model import card_path, import_keras, read_card
    from digitd.train_numbers import pair

    if args.epochs is not None or args.limit is not None or args.second:
        print("digitd train: --epochs, --limit and --second train from scratch; with "
              "--corrections use --steps (the base's second is fine-tuned too)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.steps is not None and args.steps < 1:
        print("digitd train: --steps must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    base = Path(args.base) if args.base else ctc.default_path()
    entry = read_card(base).get("second_reading") if base.is_file() else None
    models = [(base, ctc.NAME)] + ([(base.parent / entry["model"], ctc.SECOND_NAME)]
                                   if entry else [])
    for path, _ in models:
        if not path.is_file():
            print(f"digitd train: {path}: no such model file", file=sys.stderr)
            return EXIT_USAGE
    if Path(args.out).resolve() == base.parent.resolve():
        print(f"digitd train: --out {args.out} holds the base models: give another folder "
              "(the fine-tuned ones take the same names)", file=sys.stderr)
        return EXIT_USAGE
    opened = open_inputs(args, read_number_corrections)
    if not isinstance(opened, tuple):
        return opened
    corrections, mnist, usps, out = opened
    held = held_out_mask(corrections.sha256)
    if held.all() or not held.any():
        print(f"digitd train: {len(corrections.texts)} corrections of numbers are too few to "
              "hold a fifth out and train on the rest", file=sys.stderr)
        return EXIT_USAGE
    steps = args.steps or default_steps(int((~held).sum()))
    print(f"corrections of numbers: {len(corrections.texts)} usable ({(~held).sum()} to train "
          f"on, {held.sum()} held out); skipped: {corrections.skipped or 'none'}")
    data = material(corrections, held, mnist, usps, steps, args.seed)

    keras = import_keras()
    tuned = []
    for k, (path, name) in enumerate(models):
        one = tune(keras, path, name, data, steps, args.seed + k)
        j = one.judgement
        print(f"{path.name}: held-out corrections {j.held_out_before:.2%} -> "
              f"{j.held_out_after:.2%}, held-out strings {j.kept_before:.2%} -> "
              f"{j.kept_after:.2%} ({steps} steps, {one.seconds:.0f} s); temperature "
              f"{one.calibration['base_temperature']} -> {one.temperature:.4f}")
        if (why := j.refusal()) is not None:
            print(f"digitd train: refused to write the number models: {path.name}: {why}",
                  file=sys.stderr)
            return EXIT_REFUSED
        tuned.append(one)
    cards = [write(keras, one, out, data, steps, args.seed) for one in tuned]
    for card in cards:
        print(f"wrote {out / card['name']} (model id {card['model_id'][:12]}) and "
              f"{card_path(out / card['name']).name}")
    if len(cards) == 2:
        pair(out / ctc.NAME, cards[1])
        print(f"{ctc.NAME}'s card names {ctc.SECOND_NAME} as its second number model")
    print(f"to serve them: number_model: {out / ctc.NAME} in the configuration, then reload")
    return EXIT_OK
