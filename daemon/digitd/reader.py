"""Candidate pieces + the classifier's probabilities, and the number model's reading of the
whole line -> the number read: the recognition half of reading a number (digitd.segment gives
the candidates and the line's strip).

Pure functions, no model: the caller passes the models' batch functions in, and each runs
at most once for many images.

    read_all([(whole, line), ...], classifier.predict, mode, numbers.predict, sure,
             second.predict) -> [(probabilities | None, Reading | None)]
    read_line(line, probabilities) -> Reading            the segmentation reader alone
    alone(line, decoded) -> Reading                       the number model alone
    combine(line, pieces, decoded, mode, steps) -> Reading | None    both together

Two readers, measured against each other (docs/BENCHMARKS.md, "Numbers"):

- the number model (digitd.ctc): a segmentation-free network that reads the whole line, its
  decoration too, and says the string and its calibrated probability;
- the segmentation reader (read_line): the single-digit classifier on candidate pieces.

With the number model, it reads every line first (and where it reads a number but is
unsure of it, the second number model too, if there is one: digitd.ctc.reconsider keeps the
string more probable under both). A number it reads (two digits or more)
at confidence `sure` or above (min_confidence) is the answer as it stands: its string, its
probability, boxes from its alignment (digitd.ctc.boxes); the line's pieces are never cut
and the classifier reads nothing of it. That is most numbers (about 70%), and the cheap
path: checking every one of them by the segmentation reader cost its pieces and the
classifier on each and, at min_confidence 0.99, caught no more silent errors
(docs/BENCHMARKS.md).

Below `sure`, the segmentation reader is consulted (combine): when it reads the same number
of digits, each digit is the one both readers together find the most probable (_together:
the classifier's vote at SEGMENTATION_WEIGHT, and the other number model's reading at full
weight where it read as many digits), which mends some of the number model's misread
digits; the string's confidence is then its probability under the (first) number model.
Where all three read the same string (both number models and the segmentation reader), its
confidence is the larger of the two number models' probabilities, each digit the surer
model's (_read_alike): such strings are right as often as the first model's own at the
same confidence, and some are `ok`. Each digit is `agreed` when the segmentation reader
read the same digit there (the same string, or the same length and that digit); a digit not
agreed is doubtful (highlighted for review). Boxes: where the readers agree, the
segmentation's pieces (cut from the ink itself), otherwise the number model's alignment.
With `auto`, a line is one digit when the number model reads fewer than two digits, or, when
it is unsure, the segmentation reader reads one digit too (choose()) and the two number
models do not read the same string, one of them at ALIKE_SURE (_two_alike); only then
is the whole ink read as one digit (an unsure number's pieces are read first, its whole ink
after, in a second classifier call for the few lines that need it).

Without the number model (recognise: auto/number with no digitd-numbers model), the
segmentation reader alone answers, as below.

The reading is the chain of pieces covering every unit whose digits the classifier is
surest of: the largest sum of log(top probability) plus each piece's shape prior (dynamic
programming over the units; a piece joins up to segment.MAX_RUN units, so this is linear in
the number of units). The string's confidence is the product of its digits' probabilities
(each digit read independently: the chance that all of them are right), sharpened (SHARPNESS)
to match how often strings are in fact right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from digitd import ctc
from digitd.segment import Box, Line

TOP = 3  # probabilities kept per digit
# The product of the digits' probabilities overstates how often a string is right (the model
# is sure of pieces cut wrongly too): on 2,000 generated numbers (bench/number_accuracy.py,
# seed 0) products of 0.99-1 were right 93% of the time, 0.95-0.99 75%, 0.80-0.90 only 25%.
# The string's confidence is the product to this power (0.99 -> 0.92, 0.97 -> 0.78), so that
# min_confidence keeps more of its meaning for numbers; docs/BENCHMARKS.md has the figures on
# another seed.
SHARPNESS = 8
# Where the number model is unsure of a number and the segmentation reader read as many
# digits, each digit is the one both find the most probable, the classifier's vote at half
# weight (reader._together): on 1,000 + 2,000 generated numbers (bench/number_accuracy.py,
# seeds 1 and 2) 947 -> 954 and 1,885 -> 1,900 read exactly, 3 + 3 right ones spoilt; at
# full weight the classifier spoilt more than it mended (949, 1,888).
SEGMENTATION_WEIGHT = 0.5
FLOOR = 1e-3  # a digit outside a reader's top 3: at most this probable
# One part a little wide (segment's Line.maybe_one: a wide single digit, or two digits written
# into each other) is a number only if both number models read the same string of two digits
# or more, one of them at this confidence or above (_two_alike); whatever min_confidence, so
# that a single digit's answer never depends on it. None of the 35,376 single digits of
# bench/recognise_modes.py answers otherwise; 8 of 14,000 bench numbers were mended with the
# first model at this bar, 3 of 13,000 more with either.
TWO_IN_ONE_SURE = 0.99
# The same two models alike, one of them this sure, keep an unsure line a number where the
# segmentation reader reads one digit (one piece, or pieces all guesses): a bar below
# TWO_IN_ONE_SURE, as such a line (several parts, or one too wide to be one digit) is seldom
# a single digit. Of the 35,376 single digits, the surest such reading is 0.974 (a 5 in a
# form's box read `151`); from 0.99 to this, 6 more of 13,000 bench numbers, all right, are
# numbers (docs/BENCHMARKS.md, Numbers).
ALIKE_SURE = 0.98
# A maybe_one part narrower (Line.narrow: as narrow as most single digits, a 1 written into
# its neighbour) needs one of the two at this: of the 35,376 single digits, one (MNIST test
# 8116, a 6 with a stroke beside it) is read `61` alike at 0.991 and 0.994; 10 of the 11
# numbers of 13,000 such parts hold are read at 0.995 or above (docs/BENCHMARKS.md, Numbers).
NARROW_SURE = 0.995
NOT_A_NUMBER = ctc.Decoded("", 0.0, ())  # what a maybe_one line not taken for a number reads


@dataclass(frozen=True)
class Digit:
    """One digit of a number: where it is, what it reads, the top-3 alternatives."""

    value: int
    confidence: float
    box: Box  # x, y, width, height in the input's pixels
    cut: bool  # cut from touching ink or joined from parts: its shape is a guess
    top: tuple[tuple[int, float], ...]  # (digit, probability), best first
    agreed: bool = True  # False: the other reader read something else here (doubtful)


@dataclass(frozen=True)
class Reading:
    """A number read from a line: its digits, left to right, and the string's confidence."""

    digits: tuple[Digit, ...]
    confidence: float
    agreed: bool | None = None  # both readers read this string (None: one reader only)
    source: str = "segmentation"  # whose string: "segmentation", "number model", "both readers"

    @property
    def text(self) -> str:
        return "".join(str(d.value) for d in self.digits)


MODES = ("auto", "digit", "number")  # the `recognise` setting


def model_inputs(whole: np.ndarray, line: Line | None) -> np.ndarray:
    """What the classifier must read for one image: its whole ink as one digit (row 0), then
    the line's pieces, if any (rows 1..; none for a line that is one part, Line.maybe_one)."""
    if line is None or line.maybe_one:
        return whole[None]
    return np.stack([whole] + [piece.model_input for piece in line.pieces])


def read_all(images: list[tuple[np.ndarray | None, Line | None]], predict, mode: str = "auto",
             numbers=None, sure: float = 1.0,
             second=None) -> list[tuple[np.ndarray | None, Reading | None]]:
    """Read many images with one call of `predict` ((N, 28, 28) -> (N, 10), the classifier;
    a second one only for numbers found to be one digit, below) and, unless `mode` is
    "digit", one of `numbers` ((N, HEIGHT, WIDTH) strips -> (N, STEPS, CLASSES), the number
    model; None: the segmentation reader alone): for each (whole, line) its whole ink's
    probabilities (None when it is read as a number: a number needs none) and its number
    (None: one digit). `whole` may be None for a line: line.whole is then made only where it
    is read.

    With the number model, a line it reads as two digits or more at confidence `sure` or
    above (the callers pass min_confidence) is that number as it stands: the classifier
    reads nothing of it and its pieces are never cut. Below `sure` the segmentation reader
    is consulted (combine()) on the line's pieces, and where it finds one digit after all
    (`auto`), the whole ink is read as that digit in a second call of `predict`, for those
    lines only (most unsure numbers stay numbers, and their whole ink is never made). Fewer
    than two digits: one digit, the whole ink's.

    `second`: the second number model's batch function (None: there is none), called at most
    once, on the strips `numbers` reads as two digits or more below `sure`; each of those
    readings is then the string more probable under both (digitd.ctc.reconsider), before the
    rest. A line it reads as one digit stays one digit: the second does not make numbers.

    A line that is one part a little wide (Line.maybe_one) is one digit, its whole ink's,
    unless both number models read it as the same number, one of them at TWO_IN_ONE_SURE
    (NARROW_SURE where the part is narrow, Line.narrow: _two_alike); the second is asked
    wherever the first reads two digits or more there. Without the two models, or with
    `mode` "digit", it is one digit."""
    if not images:
        return []
    if all(line is None for _, line in images):  # single digits only (e.g. recognise: digit)
        wholes = np.stack([whole for whole, _ in images]).astype(np.float32, copy=False)
        return [(row, None) for row in predict(wholes)]
    decoded: dict[int, ctc.Decoded] = {}
    others: dict[int, ctc.Decoded] = {}  # the number reading ctc.reconsider did not keep
    steps: dict[int, np.ndarray] = {}
    lines = [k for k, (_, line) in enumerate(images)
             if line is not None and line.strip is not None]
    if numbers is not None and mode != "digit" and lines:
        outputs = numbers(np.stack([images[k][1].strip.pixels for k in lines]))
        decoded = dict(zip(lines, ctc.read(outputs), strict=True))
        steps = dict(zip(lines, outputs, strict=True))
        doubted = {k for k in lines if images[k][1].maybe_one}
        unsure = [k for k in lines if k not in doubted
                  and decoded[k].confidence < sure and len(decoded[k].emissions) >= 2]
        asked = [k for k in sorted(doubted) if len(decoded[k].emissions) >= 2]
        confirmed = set()
        if second is not None and unsure + asked:
            theirs = second(np.stack([images[k][1].strip.pixels for k in unsure + asked]))
            for k, reading, out in zip(unsure + asked, ctc.read(theirs), theirs, strict=True):
                if k in doubted:
                    if _two_alike(decoded[k], reading,
                                  NARROW_SURE if images[k][1].narrow else TWO_IN_ONE_SURE):
                        confirmed.add(k)
                    continue
                kept = ctc.reconsider(steps[k], out, decoded[k], reading)
                others[k] = reading if kept is decoded[k] else decoded[k]
                decoded[k] = kept
        for k in doubted - confirmed:
            decoded[k] = NOT_A_NUMBER
    inputs: list[np.ndarray | None] = []
    for k, (whole, line) in enumerate(images):
        found = decoded.get(k)
        if found is not None and len(found.emissions) >= 2:
            # a number: as it stands when sure; else its pieces, for the segmentation reader
            # (its whole ink is read only if it turns out to be one digit, below)
            inputs.append(None if found.confidence >= sure or line.maybe_one else
                          np.stack([piece.model_input for piece in line.pieces]))
            continue
        if whole is None:
            whole = line.whole
        if found is None:  # no number model: the segmentation reader alone
            inputs.append(model_inputs(whole, line if mode != "digit" else None))
        else:  # one digit (or none): the whole ink's
            inputs.append(whole[None])
    rows = [x for x in inputs if x is not None]
    probabilities = (predict(np.concatenate(rows).astype(np.float32, copy=False))
                     if rows else None)
    out: list[tuple[np.ndarray | None, Reading | None]] = []
    at, ones = 0, []
    for k, ((_, line), mine) in enumerate(zip(images, inputs, strict=True)):
        found = decoded.get(k)
        if mine is None:
            out.append((None, alone(line, found)))
            continue
        theirs = probabilities[at : at + len(mine)]
        at += len(mine)
        if found is None:
            out.append((theirs[0], read(line, theirs, mode)))
        elif len(found.emissions) < 2:
            out.append((theirs[0], None))
        else:
            reading = combine(line, theirs, found, mode, steps[k], others.get(k))
            out.append((None, reading))
            if reading is None:  # one digit after all
                ones.append(k)
    if ones:  # their whole inks, in one more call
        wholes = np.stack([images[k][0] if images[k][0] is not None else images[k][1].whole
                           for k in ones])
        for k, row in zip(ones, predict(wholes.astype(np.float32, copy=False)), strict=True):
            out[k] = (row, None)
    return out


def alone(line: Line, decoded: ctc.Decoded) -> Reading:
    """The number model's reading as it stands (it is sure of it): its boxes from the
    alignment (digitd.ctc.boxes), no digit doubted by the other reader."""
    digits = tuple(Digit(value=e.value, confidence=e.confidence, box=box, cut=False, top=e.top)
                   for e, box in zip(decoded.emissions, ctc.boxes(decoded, line.strip),
                                     strict=True))
    return Reading(digits=digits, confidence=decoded.confidence, source="number model")


def combine(line: Line, pieces: np.ndarray, decoded: ctc.Decoded, mode: str,
            steps: np.ndarray | None = None,
            other: ctc.Decoded | None = None) -> Reading | None:
    """The number model's reading, unsure, checked against the segmentation reader's (see
    the module's docstring); None when the image is read as one digit: the number model
    reads fewer than two digits, or with "auto" the segmentation reader reads one digit too
    (choose()) and the two number models do not read the same string surely (_two_alike).
    `steps`: the number model's output for the line, for the confidence of a string
    the two readers made together (None: the number model's own string's). `other`: the
    other number model's reading (the one ctc.reconsider did not keep), a third vote for
    each digit where it read as many digits."""
    if len(decoded.emissions) < 2:
        return None
    segmented = read_line(line, pieces)
    if mode == "auto" and _one_digit(segmented) and not _two_alike(decoded, other, ALIKE_SURE):
        return None
    same = segmented.text == decoded.text
    lengths = len(segmented.text) == len(decoded.text)
    places = [d.box for d in segmented.digits] if same else ctc.boxes(decoded, line.strip)
    values = [e.value for e in decoded.emissions]
    if lengths and not same:
        thirds = [o.top for o in other.emissions] \
            if other is not None and len(other.emissions) == len(decoded.emissions) \
            else [()] * len(decoded.emissions)
        values = [_together(e.top, d.top, t) for e, d, t in zip(decoded.emissions,
                                                                segmented.digits, thirds,
                                                                strict=True)]
    digits = tuple(
        Digit(value=v, confidence=dict(e.top).get(v, 0.0) if v != e.value else e.confidence,
              box=box, cut=False, top=e.top,
              agreed=same or (lengths and segmented.text[i] == decoded.text[i]))
        for i, (v, e, box) in enumerate(zip(values, decoded.emissions, places, strict=True)))
    if values == [e.value for e in decoded.emissions]:
        if same and other is not None and other.text == decoded.text:
            return _read_alike(digits, decoded, other)
        return Reading(digits=digits, confidence=decoded.confidence, agreed=same,
                       source="number model")
    confidence = decoded.confidence if steps is None else \
        float(np.exp(ctc.string_log_probs(steps[None], [[v + 1 for v in values]])[0]))
    return Reading(digits=digits, confidence=confidence, agreed=same, source="both readers")


def _two_alike(decoded: ctc.Decoded, other: ctc.Decoded | None,
               bar: float = TWO_IN_ONE_SURE) -> bool:
    """Do both number models read the same string, one of them at `bar` or above? Then a
    maybe_one part is a number (read_all; `bar` NARROW_SURE where it is narrow), and the
    segmentation reader finding one digit (one piece, or pieces all guesses) does not make
    an unsure line one digit (combine, `bar` ALIKE_SURE: `56` written into each other read
    `2`, `5449` in two touching pairs read `2`). Such a line is then read as any unsure
    number (below `sure` unless the segmentation reader's guessed pieces read the same string
    too: _read_alike). Lifted wherever the models agree, the veto let 6 of 35,376 single
    digits become numbers; with this, none (docs/BENCHMARKS.md, Numbers)."""
    return (other is not None and other.text == decoded.text
            and max(decoded.confidence, other.confidence) >= bar)


def _read_alike(digits: tuple[Digit, ...], decoded: ctc.Decoded,
                other: ctc.Decoded) -> Reading:
    """An unsure number all three readers read alike (both number models the same string,
    the segmentation reader too): its confidence is the larger of the two number models'
    probabilities of it, and each digit the surer of the two models' (its confidence and top
    3). Such strings at 0.99 or above are right as often as the first model's own: on the
    bench, 99.46-99.73% of the MNIST and 99.21-99.50% of the USPS answers at 0.99 or above
    are right (99.50-99.72% and 99.22-99.59% with the first model's confidence alone), and
    3.5-6.5 points more numbers are `ok` (docs/BENCHMARKS.md, Numbers)."""
    surer = tuple(d if d.confidence >= o.confidence else replace(d, confidence=o.confidence,
                                                                 top=o.top)
                  for d, o in zip(digits, other.emissions, strict=True))
    return Reading(digits=surer, confidence=max(decoded.confidence, other.confidence),
                   agreed=True, source="number model")


def _together(number: tuple[tuple[int, float], ...],
              segmented: tuple[tuple[int, float], ...],
              other: tuple[tuple[int, float], ...] = ()) -> int:
    """The digit the readers together find the most probable at one place (each gives its
    top 3): the largest log P(number model) + SEGMENTATION_WEIGHT log P(classifier)
    [+ log P(other number model), when it is given], each at least FLOOR."""
    a, b, c = dict(number), dict(segmented), dict(other)

    def score(d: int) -> float:
        third = math.log(max(c.get(d, 0.0), FLOOR)) if c else 0.0
        return (math.log(max(a.get(d, 0.0), FLOOR))
                + SEGMENTATION_WEIGHT * math.log(max(b.get(d, 0.0), FLOOR)) + third)

    return max(sorted(set(a) | set(b) | set(c)), key=score)


def read(line: Line | None, probabilities: np.ndarray, mode: str = "auto") -> Reading | None:
    """The number an image holds, or None when it holds one digit (read from row 0 of
    `probabilities` exactly as before numbers existed). `probabilities`: the classifier's
    rows for model_inputs(); `mode` "number" reads a line as a number even when it might be
    one broken digit, "auto" lets choose() decide. One part a little wide (Line.maybe_one) is
    one digit here: only the number models make it a number (read_all)."""
    if line is None or mode == "digit" or line.maybe_one:
        return None
    pieces = probabilities[1:]
    if mode == "number":
        reading = read_line(line, pieces)
        return reading if len(reading.digits) > 1 else None
    return choose(line, pieces)


def choose(line: Line, pieces: np.ndarray) -> Reading | None:
    """The number read from `line`, or None when it is read as one digit: when the best
    chain is one piece, or when every digit of it is a guess (cut out of touching ink or
    joined from parts: far more often a single digit broken in two or a wide 0 cut at a thin
    stroke than a number of touching digits alone). `pieces`: the probabilities of the
    line's pieces."""
    reading = read_line(line, pieces)
    return None if _one_digit(reading) else reading


def _one_digit(reading: Reading) -> bool:
    """Is the segmentation reader's reading one digit? One piece, or pieces all guessed."""
    return len(reading.digits) <= 1 or all(d.cut for d in reading.digits)


def read_line(line: Line, probabilities: np.ndarray) -> Reading:
    """The best chain of pieces; `probabilities` has one row per piece of `line`."""
    probs = np.asarray(probabilities, np.float64)
    if len(probs) != len(line.pieces):
        raise ValueError(f"{len(line.pieces)} pieces but {len(probs)} rows of probabilities")
    top = probs.argmax(axis=1)
    score = np.log(np.maximum(probs[np.arange(len(probs)), top], 1e-12))
    score += np.array([piece.prior for piece in line.pieces])
    chain, _ = _best_chain(line, score, 0, line.units)
    if chain is None:  # pragma: no cover - every unit with ink is a piece of its own
        raise ValueError("no chain of pieces covers the line")
    digits = []
    for k in chain:
        order = np.argsort(-probs[k], kind="stable")[:TOP]
        piece = line.pieces[k]
        digits.append(Digit(value=int(top[k]), confidence=float(probs[k, top[k]]),
                            box=piece.box, cut=piece.cut,
                            top=tuple((int(d), round(float(probs[k, d]), 6)) for d in order)))
    confidence = float(np.prod([d.confidence for d in digits])) ** SHARPNESS
    return Reading(digits=tuple(digits), confidence=confidence)


def _best_chain(line: Line, score: np.ndarray, start: int,
                end: int) -> tuple[list[int] | None, float]:
    """The best chain of pieces covering units start..end-1 (dynamic programming)."""
    best = {start: 0.0}
    back: dict[int, int] = {}
    for u in range(start + 1, end + 1):
        for k, piece in enumerate(line.pieces):
            if piece.last != u - 1 or piece.first < start:
                continue
            if piece.first in best:
                value = best[piece.first] + score[k]
                if value > best.get(u, -math.inf):
                    best[u], back[u] = value, k
    if end not in best:
        return None, -math.inf
    chain, u = [], end
    while u > start:
        chain.append(back[u])
        u = line.pieces[back[u]].first
    return chain[::-1], best[end]
