"""The number model's output -> the digits it read: greedy CTC decoding in NumPy.

The number model (`digitd train --arch numbers`, digitd.train_numbers) reads a strip
(digitd.strip) and gives, for each of its STEPS output steps (STRIDE strip columns each),
the probabilities of CLASSES classes: BLANK (no digit here) and 1 + d for the digit d.

    read(probs) -> [Decoded(text, confidence, emissions), ...]

Greedy decoding: each step's most probable class, repeats merged, blanks dropped. The
string's confidence is its probability under the model: the sum over every alignment of the
string with the output steps (the CTC forward algorithm, string_log_probs), which is what
the CTC loss trains; calibrated: the model's logits are divided by a temperature fitted on
held-out strings before the softmax (baked into its graph), so that it predicts how often a
string is read exactly. Each digit is an emission: a run of steps with the same digit, its
value's probability at its surest step and the top-3 digits there.

A second number model (its own training: another seed, USPS's writers among the strings)
may stand beside the first; its card names it (`second_reading`), and load() loads both.
Where the first is unsure of a line, the second reads it too and the string more probable
under both is kept (reconsider): two differently trained networks' errors are partly
independent (docs/BENCHMARKS.md, "Numbers").

`boxes()` places each emission on the strip: its columns reach from the thinnest ink column
between its centre and each neighbour's centre, at most about a digit's width from its own
centre, and its box is the ink within them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitd.strip import HEIGHT, STRIDE, WIDTH, Strip

CLASSES = 11
BLANK = 0
STEPS = WIDTH // STRIDE
TOP = 3
SHAPE = (HEIGHT, WIDTH)  # one input of the number model
# Strips run in one call: a strip's activations are large (16x128x24 floats after the second
# convolution), and 8 at a time stay in the caches: 0.70 -> 0.65 ms a strip on one core,
# the same outputs bit for bit (docs/BENCHMARKS.md, Numbers).
CHUNK = 8
# Output step t of the number model sees strip columns 4t - 26 .. 4t + 30 (its convolutions'
# reach). A strip whose ink ends at column c, run cut to a width w >= c + REACH (a multiple of
# STRIDE), gives the whole strip's outputs at its first w / 4 - NEAR_CUT steps, and each later
# step sees no ink: it is a blank strip's. A strip costs about its width: 0.65 -> 0.50 ms a
# strip on the bench's numbers in float32 (docs/BENCHMARKS.md, Numbers). Float32: bit for bit
# the whole strip's outputs. int8 (activations quantised per strip at run time, over the
# columns run): within ~1e-5 of them, the same strings; so that a strip's outputs never
# depend on the strips beside it in a batch, its width is its own ink's, rounded up to CUT_TO
# columns (tests/test_numbers.py).
REACH = 62
NEAR_CUT = 8  # steps next to the cut, whose view reaches past it
CUT_TO = 32  # strips are run at widths of a multiple of this (a few widths: a few calls)
# The forward algorithm rescales every RESCALE steps: each step's emissions are float32
# probabilities (>= 1e-45 unless 0), so 4 steps lose at most 180 of float64's 308 decades.
RESCALE = 4
NAME = "digitd-numbers.keras"
SECOND_NAME = "digitd-numbers.second.keras"  # the second number model, beside the first


@dataclass(frozen=True)
class Emission:
    """One digit of a greedy reading: steps first..last (inclusive) of the output."""

    value: int
    confidence: float  # the value's probability at its surest step
    first: int
    last: int
    peak: int  # its surest step
    top: tuple[tuple[int, float], ...]  # (digit, probability) at the peak, best first


@dataclass(frozen=True)
class Decoded:
    text: str
    confidence: float  # the greedy path's probability (calibrated)
    emissions: tuple[Emission, ...]


def default_path() -> Path:
    """The number model shipped inside the package (beside the digit model)."""
    return Path(__file__).resolve().parent / "models" / NAME


def load(path: str | Path | None = None, threads: int | None = None):
    """The number model (default: the shipped one) for serving: a digitd.model.Classifier
    whose inputs are strips, served through its .tflite as the digit model is (the same
    fallback rules), with the second number model its card names (`second_reading`, served
    alike) as its `second_reading`. Raises FileNotFoundError or digitd.model.ModelError
    (also when the card names a second that is missing or is not the file it records)."""
    from digitd.model import companion, load_classifier

    numbers = load_classifier(path or default_path(), threads=threads, shape=SHAPE,
                              wrap=CutStrips)
    entry = numbers.card.get("second_reading")
    if entry:
        numbers.second_reading = companion(
            numbers, entry, "second number model",
            lambda p: load_classifier(p, threads=threads, shape=SHAPE, wrap=CutStrips))
    return numbers


def load_configured(path: str | Path | None, threads: int | None = None):
    """The number model a configuration names (`number_model`, a .keras written by `digitd
    train --arch numbers`) or, with None, the shipped one: (model, None), or (None, why)
    when the shipped one cannot be served (numbers are then read by segmentation alone). A
    model that is named but cannot be loaded raises (OSError, ValueError,
    digitd.model.ModelError): the operator asked for it, so it is an error, not a
    fallback."""
    from digitd.model import ModelError

    if path is not None:
        return load(path, threads=threads), None
    try:
        return load(threads=threads), None
    except (OSError, ValueError, ModelError) as exc:
        return None, str(exc)


class CutStrips:
    """A number model's runner ((N, HEIGHT, WIDTH) strips -> (N, STEPS, CLASSES)) that runs
    each strip cut short after its ink (REACH, rounded up to a multiple of CUT_TO columns):
    the strips of one width CHUNK at a time, the steps past the cut a blank strip's outputs.
    The whole strips' outputs (float32 bit for bit, int8 within ~1e-5), for about the ink's
    width of work; each strip's the same whatever the batch. A model of fixed width (a
    .tflite exported before its width was free, or the .keras through TensorFlow) runs whole
    strips, CHUNK at a time."""

    def __init__(self, run) -> None:
        self.run = run
        self.free = bool(getattr(run, "free_width", False))
        self._blank: np.ndarray | None = None  # a blank strip's outputs, made on first use

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.free:
            return np.concatenate([self.run(x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)])
        if self._blank is None:
            self._blank = self.run(np.zeros((1, HEIGHT, WIDTH), np.float32))[0]
        inked = x.max(axis=1) > 0  # (N, WIDTH)
        last = WIDTH - 1 - inked[:, ::-1].argmax(axis=1)
        widths = np.minimum(WIDTH, -(-(last + REACH) // CUT_TO) * CUT_TO)
        out = np.empty((len(x), STEPS, CLASSES), np.float32)
        for width in np.unique(widths).tolist():
            keep = STEPS if width == WIDTH else width // STRIDE - NEAR_CUT
            same = np.flatnonzero(widths == width)
            for i in range(0, len(same), CHUNK):
                some = same[i:i + CHUNK]
                out[some, :keep] = self.run(x[some, :, :width])[:, :keep]
                out[some, keep:] = self._blank[keep:]
        return out


def second_of(numbers):
    """The batch function of the second number model of `numbers` (a loaded number model, or
    None), for digitd.reader.read_all; None when there is none."""
    second = numbers.second_reading if numbers else None
    return second.predict if second is not None else None


def reconsider(first: np.ndarray, second: np.ndarray, mine: Decoded,
               theirs: Decoded) -> Decoded:
    """Two number models' greedy readings of one strip (`mine` the first's, `theirs` the
    second's; `first`, `second` their outputs, (STEPS, CLASSES)) -> the string more probable
    under both: the larger sum of its log probabilities under each (string_log_probs). The
    first's reading stands on a tie and when the second reads nothing. A string taken from
    the second keeps its emissions (alignment, top 3s) and, as confidence, the first's
    probability of it: min_confidence is set against the first's calibration."""
    if theirs.text == mine.text or not theirs.emissions:
        return mine
    labels = [[e.value + 1 for e in d.emissions] for d in (mine, theirs)]
    under_first = string_log_probs(np.stack([first, first]), labels)
    under_second = string_log_probs(np.stack([second, second]), labels)
    if under_first[1] + under_second[1] <= under_first[0] + under_second[0]:
        return mine
    return Decoded(theirs.text, float(np.exp(under_first[1])), theirs.emissions)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def read(probs: np.ndarray) -> list[Decoded]:
    """(N, STEPS, CLASSES) probabilities -> each one's greedy reading, its confidence the
    string's probability (string_log_probs)."""
    emitted = _emissions(probs)
    labels = [[e.value + 1 for e in emissions] for emissions in emitted]
    confidence = np.exp(string_log_probs(probs, labels))
    return [Decoded("".join(str(e.value) for e in emissions), float(c), emissions)
            for emissions, c in zip(emitted, confidence, strict=True)]


def string_log_probs(probs: np.ndarray, labels: list[list[int]]) -> np.ndarray:
    """log P(string | strip) for each of N strings (classes 1 + digit): the CTC forward
    algorithm, the sum over every alignment of the string with the output steps (not only
    the greedy one, whose probability understates the string's when the model is unsure
    only where a digit starts or ends). Vectorised over the N strings: each step is one
    batched product of the forward variables with the transitions (stay, move on, or skip a
    blank between two different digits) and one with the step's emissions; every RESCALE
    steps the forward variables are rescaled to sum to 1 (their logarithms summed), so
    nothing underflows."""
    probs = np.asarray(probs, np.float64)
    n, steps, _ = probs.shape
    if n == 0:
        return np.zeros(0)
    lengths = np.array([len(label) for label in labels])
    states = 2 * int(lengths.max()) + 1
    ext = np.zeros((n, states), np.int64)  # blank, label 1, blank, label 2, ..., blank
    for k, label in enumerate(labels):
        ext[k, 1 : 2 * len(label) : 2] = label
    emit = np.take_along_axis(probs, np.broadcast_to(ext[:, None, :], (n, steps, states)),
                              axis=2)
    emit *= (np.arange(states)[None, :] < (2 * lengths + 1)[:, None])[:, None, :]
    move = np.zeros((n, states, states))  # move[k, i, j]: state j may follow state i
    at = np.arange(states)
    move[:, at, at] = 1
    move[:, at[:-1], at[1:]] = 1
    # a label may follow the previous one across no blank, unless it repeats it
    move[:, at[1:-2:2], at[3::2]] = ext[:, 3::2] != ext[:, 1:-2:2]
    alpha = np.zeros((n, 1, states))
    alpha[:, 0, :2] = emit[:, 0, :2]
    log_scale = np.zeros(n)
    for t in range(1, steps):
        alpha = np.matmul(alpha, move)
        alpha *= emit[:, t, None, :]
        if t % RESCALE == 0 or t == steps - 1:
            total = np.maximum(alpha.sum(axis=2), 1e-300)
            alpha /= total[:, :, None]
            log_scale += np.log(total[:, 0])
    alpha = alpha[:, 0]
    rows = np.arange(n)
    last = alpha[rows, 2 * lengths] + np.where(lengths > 0,
                                               alpha[rows, np.maximum(2 * lengths - 1, 0)], 0)
    return np.log(np.maximum(last, 1e-300)) + log_scale


def greedy(probs: np.ndarray) -> Decoded:
    """(STEPS, CLASSES) probabilities -> the greedy reading; its confidence here is the
    greedy path's probability (read() gives the string's)."""
    probs = np.asarray(probs, np.float64)
    best = probs.max(axis=1)
    confidence = float(np.exp(np.log(np.maximum(best, 1e-30)).sum()))
    emissions = _emissions(probs[None])[0]
    return Decoded("".join(str(e.value) for e in emissions), confidence, emissions)


def _emissions(probs: np.ndarray) -> list[tuple[Emission, ...]]:
    """(N, STEPS, CLASSES) probabilities -> each one's greedy emissions: each step's most
    probable class, runs of one class merged, blanks dropped; an emission's peak is the
    first of its surest steps. Done on all N strips' steps at once: per strip, numpy's small
    calls cost more than the work."""
    probs = np.asarray(probs, np.float64)
    n, steps, _ = probs.shape
    if n == 0:
        return []
    best = probs.argmax(axis=2).ravel()
    value = np.take_along_axis(probs, best.reshape(n, steps, 1), axis=2).ravel()
    begins = np.ones(n * steps, bool)  # a run begins at each strip's first step...
    begins[1:] = best[1:] != best[:-1]  # ...and where the class changes
    begins[::steps] = True
    starts = np.flatnonzero(begins)
    ends = np.append(starts[1:], n * steps) - 1
    index = np.arange(n * steps)
    surest = np.maximum.reduceat(value, starts)
    sure = np.where(value == np.repeat(surest, ends - starts + 1), index, n * steps)
    peaks = np.minimum.reduceat(sure, starts)
    keep = best[starts] != BLANK
    starts, ends, peaks = starts[keep], ends[keep], peaks[keep]
    digits = probs.reshape(n * steps, -1)[peaks, 1:]
    order = np.argsort(-digits, axis=1, kind="stable")[:, :TOP]
    chances = np.take_along_axis(digits, order, axis=1)
    out: list[list[Emission]] = [[] for _ in range(n)]
    for first, last, peak, tops, odds in zip(starts.tolist(), ends.tolist(), peaks.tolist(),
                                             order.tolist(), chances.tolist(), strict=True):
        k, at = divmod(first, steps)
        out[k].append(Emission(
            value=int(best[first]) - 1, confidence=float(value[peak]), first=at,
            last=last - k * steps, peak=peak - k * steps,
            top=tuple((d, round(p, 6)) for d, p in zip(tops, odds, strict=True))))
    return [tuple(e) for e in out]


def spans(decoded: Decoded, line: Strip) -> list[tuple[int, int, int, int]]:
    """Each emission's ink on the strip, (x0, y0, x1, y1) in strip pixels (see the module's
    docstring)."""
    ink = line.pixels
    profile = ink.sum(axis=0)
    rows_used = np.flatnonzero(ink.any(axis=1))
    reach = 0.6 * (rows_used[-1] - rows_used[0] + 1) if len(rows_used) else WIDTH
    centres = [(e.first + e.last + 1) / 2 * STRIDE for e in decoded.emissions]
    # the valley between each two neighbours: where the one's columns end and the next's begin
    valleys = [_valley(profile, left, right)
               for left, right in zip(centres, centres[1:], strict=False)]
    out = []
    for k, c in enumerate(centres):
        lo = max(0.0, c - reach) if k == 0 else valleys[k - 1]
        hi = min(float(WIDTH), c + reach) if k == len(centres) - 1 else valleys[k]
        lo, hi = max(lo, c - reach), min(hi, c + reach)
        a, b = int(lo), max(int(lo) + 1, int(np.ceil(hi)))
        part = ink[:, a:b] > 0.1
        cols, rows = np.flatnonzero(part.any(axis=0)), np.flatnonzero(part.any(axis=1))
        if len(cols) == 0:  # no ink under the emission: its steps' columns, the line's rows
            e = decoded.emissions[k]
            y0, y1 = (rows_used[0], rows_used[-1] + 1) if len(rows_used) else (0, HEIGHT)
            out.append((e.first * STRIDE, int(y0), (e.last + 1) * STRIDE, int(y1)))
        else:
            out.append((a + int(cols[0]), int(rows[0]), a + int(cols[-1]) + 1,
                        int(rows[-1]) + 1))
    return out


def boxes(decoded: Decoded, line: Strip) -> list[tuple[int, int, int, int]]:
    """Each emission's box (x, y, width, height) in the input's pixels."""
    return [line.to_input(*span) for span in spans(decoded, line)]


def _valley(profile: np.ndarray, left: float, right: float) -> float:
    """The column with the least ink between two centres (the middle one of ties)."""
    a, b = int(np.ceil(left)), int(right)
    if b <= a:
        return (left + right) / 2
    window = profile[a : b + 1]
    low = np.flatnonzero(window <= window.min() + 1e-6)
    return float(a + low[len(low) // 2])
