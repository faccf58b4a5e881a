"""Ink -> candidate digits along a line: the segmentation half of reading a number.

Pure functions (arrays in, dataclasses out), no model, thread-safe. digitd.reader picks, among
the candidates, the reading the classifier likes best.

    segment(image) -> Single(model_input) | Line(height, whole, strip; units, pieces)

The steps, on preprocess's located ink (the same paper, lighting and noise handling as for
one digit):

1. The ink's parts on the small copy (preprocess.ink_components: scanner border lines and
   shadows dropped), dust dropped, and upright bars that are printed, not written (far finer
   than the ink, or straight at either end on a form's ruling, unless as tall as the several
   digits beside them: a 1 on the number's underline); one part, or parts that are
   not side by side (in columns: a digit's pieces one above the other are one), is a single
   digit: the result is exactly preprocess.normalise's. One part a little wide (TWO_IN_ONE
   to ALONE times as wide as tall: a wide single digit, or two digits written into each
   other), specks beside it or not, is a line too, `maybe_one`: one digit unless both
   number models read it as the same number, surely (digitd.reader.read_all); surer still
   where it is `narrow` (under NARROW times as wide as tall, as most single digits are).
2. Several parts along a line: the whole line is cut out at a resolution where its height is
   about WORK_SIZE (preprocess.extract), and its parts found again there (where they are one
   part a little wide, two digits that touch seen sharper, the line is `maybe_one` too).
3. Decoration is removed: long horizontal lines (an underline, touching the digits or not;
   but where parts apart along the line would be one digit without it, it was a digit's
   stroke), flat strokes (a dash, an equals sign, a stray tick) and small blobs on the baseline
   (thousands dots and commas). A small part inside a digit's columns and close to it (a 5's
   detached bar, a broken stroke) joins that digit.
4. Units: the remaining parts in reading order; a part wider than a digit (touching digits) is
   over-segmented at the valleys of its column profile.
5. Pieces: every run of up to MAX_RUN consecutive units that could be one digit (not wider
   than a digit, no wide gap inside), each normalised exactly as preprocess normalises one
   digit (preprocess.finish), with its box in the input's pixels and a geometric prior.
   Steps 4 and 5 run on first use (Line.units, Line.pieces): the number model needs neither,
   and most numbers, those it is sure of, are answered without them (digitd.reader). (Step
   4 runs at once on a line that is one wide part: whether it splits decides one digit.)
6. The strip: the line cut out in step 2 near its digits (decoration too, far specks and
   lines not), its ink mapped to strength as for one digit, levelled when it runs slanted
   (not where a form's printed ruling was found: the field says what is level), as the
   number model reads it (digitd.strip).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from digitd.components import label
from digitd.preprocess import (
    Components,
    Cut,
    Rejected,
    _ink_profile,
    _one_digit,
    extract,
    finish,
    ink_components,
    locate,
    mask_of,
)
from digitd.ruling import SKEW_DEG
from digitd.strip import Strip, strip

MAX_RUN = 3  # units a piece may join (a digit broken into up to three parts, or cut apart)
DUST = 0.02  # parts smaller than this share of the largest are dust
LINE_LENGTH = 1.6  # a horizontal run longer than this many digit heights is a rule, not ink
FLAT = 0.38  # parts lower than this share of the digit height...
SMALL = 0.4  # ...or smaller than this in both directions are decoration, unless joined
PART = 0.45  # a part of a broken digit is at least this share of the digit height
WIDE = 0.75  # a part wider than this many digit heights may be touching digits
ALONE = 1.3  # one part alone is read as touching digits only when this much wider than tall
# ...and one part at least this much wider than tall (but not ALONE) may be two digits written
# into each other (`64` was read `4`, some `ok`): from 1.1, asking the number models mended 8
# of 14,000 bench numbers (5-6% of single digits are that wide); from 0.8 (a 1 written into
# its neighbour: `17` read `7`, `83` read `8`, some `ok`; under NARROW, reader.NARROW_SURE)
# 10 more of 13,000, none spoilt, while about 38% of single digits are asked
# (docs/BENCHMARKS.md, Numbers: "A 1 written into its neighbour")
TWO_IN_ONE = 0.8
NARROW = 1.1  # ...narrower than this: `narrow`, the number models must be surer (reader)
SLIM = 0.3  # an upright bar is at most this much wider than tall...
BAR = 0.3  # ...and printed when its stroke is at most this share of the largest part's
STRAIGHT = 0.02  # ...or, at an end of the line and touching a form's ruling, when its centre
# strays at most this share of its height from a line at most ruling.SKEW_DEG off upright
# ...unless, in a line of several digits, it is as tall as they are: from this share of their
# median height to this share of the tallest (comb ticks are at most 0.8 of the digit's
# height, a box's edges at least 1.15 in bench/scans.py's forms)
AS_TALL = (0.85, 1.1)
CUT = math.log(0.4)  # log-penalty for reading a part cut apart as two digits
VALLEY = 0.9  # a cut goes where the ink is at most this share of the part's median column
DOUBT = 1.05  # a piece wider than this many digit heights may be two digits read as one
MAX_WIDTH = 1.15  # a piece wider than this many digit heights is not one digit
JOIN_GAP = 0.12  # parts further apart than this many heights are never one digit
BAND_X = 1.5  # the strip holds the ink this many digit heights left and right of the digits
BAND_Y = 0.4  # ...and this many above and below them


Box = tuple[int, int, int, int]  # x, y, width, height
Band = tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Single:
    """One digit: the model input, exactly preprocess.normalise's."""

    model_input: np.ndarray


@dataclass(frozen=True)
class Piece:
    """A candidate digit: units first..last (inclusive) taken together."""

    first: int
    last: int
    box: Box  # in the input's pixels
    model_input: np.ndarray  # (28, 28) float32
    prior: float  # log-penalty from its shape (0 for a plausible digit)
    cut: bool  # an edge of it is a cut through touching ink, or it joins several units


@dataclass(frozen=True)
class Line:
    """Several digits side by side, as the number model reads them (`strip`) and as the
    segmentation reader does: `units` parts in reading order and the candidate pieces (every
    piece a run of consecutive units; a reading is a chain of pieces covering units
    0..units-1). Units and pieces are made by `cut` on first use, `whole` by `one_digit`."""

    height: float  # the digits' height in the input's pixels
    one_digit: Callable[[], np.ndarray] = field(repr=False, compare=False)  # -> whole
    strip: Strip | None = None  # all of it (decoration too) as the number model reads it
    cut: Callable[[], tuple[int, tuple[Piece, ...]]] = field(default=lambda: (0, ()),
                                                             repr=False, compare=False)
    # One part a little wide (step 1): one digit, its `whole`, unless both number models
    # read it as the same number, surely (digitd.reader.read_all); never segmented.
    maybe_one: bool = False
    narrow: bool = False  # maybe_one, under NARROW times as wide as tall: surer still

    @functools.cached_property
    def whole(self) -> np.ndarray:
        """All of it read as one digit: exactly preprocess.normalise's input (made on first
        use: a number the number model is sure of needs none)."""
        return self.one_digit()

    @functools.cached_property
    def _candidates(self) -> tuple[int, tuple[Piece, ...]]:
        return self.cut()

    @property
    def units(self) -> int:
        return self._candidates[0]

    @property
    def pieces(self) -> tuple[Piece, ...]:
        """The candidate pieces (cut once, on first use)."""
        return self._candidates[1]


def segment(image: np.ndarray) -> Single | Line:
    """A decoded image -> one digit, or the candidates for a line of digits.

    Raises preprocess.Rejected("no_ink") as normalise does.
    """
    page = locate(image)
    parts = ink_components(page.ink, page.floor, page.top, page.level)
    stats = parts.stats
    wide = None  # one part a little wide (maybe_one): whether it is narrow (_two_in_one)
    if len(parts.candidates) == 1:
        _, _, w, h, _ = stats[parts.candidates[0]]
        if w < TWO_IN_ONE * h:  # most single digits: one part, not wide (step 1's answer)
            return Single(_whole(page, parts))
        wide = _two_in_one(w, h)
    areas = stats[:, 4]
    big = max(areas[i] for i in parts.candidates)
    kept = [i for i in parts.candidates if areas[i] >= DUST * big]
    kept = [i for i in kept if not _edge_line(stats[i], page.ink.shape)] or kept
    kept = _without_printed_bars(parts, kept)
    kept = _without_form_bars(parts, kept, page.ruling)
    columns = _columns(stats, kept)
    if wide is None and not _side_by_side(stats, kept, columns):
        wide = _a_little_wide_alone(columns)  # one part a little wide, and specks
        if wide is None:
            return Single(_whole(page, parts))
    line_mask, line_box = mask_of(parts, kept)
    # the line's digits about WORK_SIZE / 2 tall: ample for 20x20, and cheap
    cut = extract(page, line_mask, line_box, side=2 * _digit_height(stats, kept))
    whole = functools.partial(_whole, page, parts)
    found = _line(cut, _digit_height(stats, kept) * page.f / cut.scale, wide, columns)
    if found is None:
        return Single(whole())
    labels, stats, groups, height, band, wide = found
    return Line(float(height * cut.scale), whole,
                _strip(cut, band, height, level=page.ruling is None),
                functools.partial(_candidates, cut, labels, stats, groups, height),
                maybe_one=wide is not None, narrow=bool(wide))


def _two_in_one(width: float, height: float) -> bool | None:
    """Is one part (or group, or column) a little wide, TWO_IN_ONE to ALONE times as wide as
    tall: a wide single digit, or two digits written into each other (Line.maybe_one)? None
    when not; else whether it is narrow, under NARROW times (Line.narrow)."""
    if not TWO_IN_ONE * height <= width <= ALONE * height:
        return None
    return bool(width < NARROW * height)


def _whole(page, parts) -> np.ndarray:
    """All the ink read as one digit, exactly as preprocess.normalise reads it."""
    mask, box = mask_of(parts, _one_digit(parts.stats, parts.candidates))
    return finish(extract(page, mask, box))


def _edge_line(stat: np.ndarray, shape: tuple[int, ...]) -> bool:
    """A scanner's border line: along an edge, most of its length, thin (for its length and
    across the image: a digit joined to what a form's removed underline left is not)."""
    x, y, w, h, _ = stat
    rows, cols = shape[:2]
    near_x, near_y = max(2, 0.06 * cols), max(2, 0.06 * rows)
    upright = (x <= near_x or x + w >= cols - near_x) and h >= 0.6 * rows \
        and w <= 0.15 * min(h, cols)
    lying = (y <= near_y or y + h >= rows - near_y) and w >= 0.6 * cols \
        and h <= 0.15 * min(w, rows)
    return bool(upright or lying)


def _digit_height(stats: np.ndarray, labels: list[int]) -> int:
    """The tallest part's height that is not a long flat line."""
    heights = [stats[i, 3] for i in labels if stats[i, 2] < 3 * stats[i, 3]]
    return int(max(heights or [stats[i, 3] for i in labels]))


def _without_printed_bars(parts: Components, labels: list[int]) -> list[int]:
    """`labels` without the upright bars drawn with a far finer line than the largest part
    (BAR): a neighbour's stroke cut at a scan's edge, a comb's tick or a box's edge a form's
    ruling removal left. Not a digit: one writer's pen draws a number's digits, a 1 too, with
    strokes of about one width (MNIST's writers differ by less than BAR; a finer rule, one
    that also took the bars touching a form's ruling at 0.7, dropped 1s standing on an
    underline in bench/number_accuracy.py). The pen's width is the largest part's stroke, or
    the other parts' median where that is less: a blotted 8, filled in, measured three times
    its pen, and a thin 1 beside it went as a bar (`94251871` read `9425187`)."""
    stats = parts.stats
    if len(labels) < 2:
        return labels
    main = max(labels, key=lambda i: stats[i, 4])
    slim = [i for i in labels if i != main and stats[i, 2] <= SLIM * stats[i, 3]]
    if not slim:  # most lines: no upright bar, no outline traced
        return labels
    width = _stroke(parts.labels, stats[main], main)
    strokes = {i: _stroke(parts.labels, stats[i], i) for i in slim}
    printed = {i for i in slim if strokes[i] <= BAR * width}
    if printed:  # the pen's width is its digits' usual one: the largest part may be a blot
        others = [width] + [_stroke(parts.labels, stats[i], i) for i in labels
                            if i not in slim and i != main]
        width = min(width, float(np.median(others)))
        printed = {i for i in printed if strokes[i] <= BAR * width}
    return [i for i in labels if i not in printed]


def _without_form_bars(parts: Components, labels: list[int],
                       ruling: np.ndarray | None) -> list[int]:
    """`labels` without a form's printed bars at either end of the line: an upright part, first
    or last along it, that touches the ruling locate removed and is straight (STRAIGHT) and
    upright within a crooked scan's skew. A comb's tick standing on its baseline, a box's
    edge or a neighbouring box's edge, printed as thick as the pen or thicker (a finer one
    goes by BAR); printed lines stand straight, a written 1 wavers, if only at its ends
    (measured: 27 -> 4 of 10,000 form fields read otherwise by `auto` than by `digit`, 7
    with the number model trained since; not one of 3,000 generated numbers read otherwise;
    judged on the middle rows only, a 1 standing at the end of a number on its underline
    went too). A bar as tall as the digits beside it (AS_TALL), when they are several side by
    side, is a 1 on the number's underline, however straight (USPS 1s are: `105304` lost its
    1, `ok`); one digit's broken strokes are not several digits (_apart)."""
    if ruling is None or len(labels) < 2:
        return labels
    stats = parts.stats
    ends = {min(labels, key=lambda i: stats[i, 0]),
            max(labels, key=lambda i: stats[i, 0] + stats[i, 2])}
    bars = [i for i in ends if stats[i, 2] <= SLIM * stats[i, 3] and stats[i, 3] >= 8]
    if not bars:  # most lines: no upright bar at either end
        return labels
    # the other digits' heights, when there are several side by side (a number; not a digit
    # broken in two): a bar as tall as they are is a 1 standing on the number's underline (a
    # comb's tick is shorter, a box's edge taller)
    digits = [i for i in labels if stats[i, 2] > SLIM * stats[i, 3]]
    highest = max((int(stats[i, 3]) for i in digits), default=0)
    digits = [i for i in digits if stats[i, 3] >= 0.5 * highest]
    heights = [int(stats[i, 3]) for i in digits]
    tall = (AS_TALL[0] * float(np.median(heights)), AS_TALL[1] * highest) \
        if len(digits) >= 2 and _apart(stats, digits) else None
    near = None
    printed = set()
    for i in bars:
        x, y, w, h, _ = (int(v) for v in stats[i])
        if tall is not None and tall[0] <= h <= tall[1]:
            continue
        if near is None:
            near = cv2.dilate(ruling, np.ones((5, 5), np.uint8))
        mine = parts.labels[y : y + h, x : x + w] == i
        if not near[y : y + h, x : x + w][mine].any():
            continue
        rows = np.flatnonzero(mine.any(axis=1))
        cols = np.arange(w, dtype=np.float64)
        centres = (mine[rows] * cols).sum(axis=1) / mine[rows].sum(axis=1)
        slope, offset = np.polyfit(rows, centres, 1)
        wander = float(np.abs(centres - (slope * rows + offset)).max())
        if abs(slope) <= math.tan(math.radians(SKEW_DEG)) and wander <= STRAIGHT * h:
            printed.add(i)
    return [i for i in labels if i not in printed] or labels


def _stroke(labels: np.ndarray, stat: np.ndarray, label: int) -> float:
    """A part's stroke width: twice its area over its outline's length."""
    x, y, w, h, area = (int(v) for v in stat)
    mask = np.zeros((h + 2, w + 2), np.uint8)
    mask[1:-1, 1:-1] = labels[y:y + h, x:x + w] == label
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    outline = sum(cv2.arcLength(c, True) for c in contours)
    return 2.0 * area / max(outline, 1.0)


def _side_by_side(stats: np.ndarray, labels: list[int],
                  columns: tuple[np.ndarray, list[int]]) -> bool:
    """Could these parts be several digits? One part as tall as a digit and much wider
    (touching digits, or digits joined by an underline they stand on; _line tells a single
    digit on a line apart), or some two of their `columns` (_columns: a digit's pieces one
    above the other are one) as tall as a digit and apart along the line."""
    height = _digit_height(stats, labels)
    for i in labels:
        x, _, w, h, _ = stats[i]
        if h >= 0.5 * height and w > ALONE * h:  # touching digits, or standing on a line
            return True
    return _apart(*columns)


def _a_little_wide_alone(columns: tuple[np.ndarray, list[int]]) -> bool | None:
    """One of the `columns` (_columns) as tall as a digit (specks beside it aside),
    TWO_IN_ONE to ALONE times as wide as tall: what one part that wide is (segment's step 1),
    with specks: _two_in_one's answer for it (None when not)."""
    boxes, tall = columns
    if len(tall) != 1:
        return None
    _, _, w, h, _ = boxes[tall[0]]
    return _two_in_one(w, h)


def _columns(stats: np.ndarray, labels: list[int]) -> tuple[np.ndarray, list[int]]:
    """The parts' boxes merged where they share most of their columns (the narrower one's
    half) and nearly touch (JOIN_GAP of the tallest part apart at most): the pieces of a digit
    broken one above the other, not specks below the line; long flat lines left out; as stats
    rows (x, y, w, h, area), and which of them are as tall as a digit (half the tallest)."""
    near = JOIN_GAP * _digit_height(stats, labels)
    boxes: list[list[int]] = []
    for i in sorted(labels, key=lambda i: stats[i, 0]):
        x, y, w, h, area = (int(v) for v in stats[i])
        if w >= 3 * h:  # a long flat line (an underline): no digit's column
            continue
        if boxes:
            bx, by, bw, bh, barea = boxes[-1]
            if min(bx + bw, x + w) - max(bx, x) >= 0.5 * min(bw, w) \
                    and max(by, y) - min(by + bh, y + h) <= near:
                x0, y0 = min(bx, x), min(by, y)
                x1, y1 = max(bx + bw, x + w), max(by + bh, y + h)
                boxes[-1] = [x0, y0, x1 - x0, y1 - y0, barea + area]
                continue
        boxes.append([x, y, w, h, area])
    merged = np.array(boxes, np.int64).reshape(-1, 5)
    if not len(merged):
        return merged, []
    height = int(merged[:, 3].max())
    return merged, [i for i in range(len(merged)) if merged[i, 3] >= 0.5 * height]


def _apart(stats: np.ndarray, tall: list[int]) -> bool:
    """Are some two of these parts apart along the line (not one digit's broken strokes)?"""
    tall = sorted(tall, key=lambda i: stats[i, 0])
    for a, b in zip(tall, tall[1:], strict=False):
        ax, _, aw, _, _ = stats[a]
        bx, _, bw, _, _ = stats[b]
        overlap = ax + aw - bx
        if overlap < 0.5 * min(aw, bw):
            return True
    return False


def _line(cut: Cut, height: float, wide: bool | None, columns: tuple[np.ndarray, list[int]]
          ) -> tuple[np.ndarray, np.ndarray, list[list[int]], int, Band, bool | None] | None:
    """Steps 2-3 on the cut-out line (its digits about `height` pixels tall): its parts
    (labels, stats), their groups (_group), the digits' height in the cut's pixels, the
    groups' box in the cut (x0, y0, x1, y1: the units' too) and `wide`, _two_in_one's answer
    where it may be one digit (given, or one group a little wide here: two digits that touch
    seen sharper, `38` read `8`), None where not; None when it turns out to hold one digit
    (with `wide` given, the number models say, not its shape). `columns`: the page's parts'
    (_columns); where they stand apart along the line, a long stroke wiped as a rule may have
    been a digit's."""
    binary = _remove_rules(cut.binary, int(height))
    if binary is cut.binary:  # no rule wiped (most lines)
        return _line_of(cut.parts or label(binary), height, wide)
    found = _line_of(label(binary), height, wide)
    if found is not None or not _apart(*columns):
        return found
    # One digit without the rule, but parts apart on the page: what looked like a rule may be
    # a digit's long stroke (a bold 2's base beside a thin 9, `92` read `2`). The line as
    # cut, if it holds several digit-sized groups (one wide 2 is no `22`).
    found = _line_of(cut.parts or label(cut.binary), height, wide)
    return found if found is not None and len(found[2]) >= 2 else None


def _line_of(labelled: tuple[int, np.ndarray, np.ndarray], height: float, wide: bool | None
             ) -> tuple[np.ndarray, np.ndarray, list[list[int]], int, Band, bool | None] | None:
    """_line on the cut's parts as label() gives them (n, labels, stats), rules wiped or
    not."""
    n, labels, stats = labelled
    if n <= 1:
        return None
    parts = list(range(1, n))
    big = stats[1:, 4].max()
    parts = [i for i in parts if stats[i, 4] >= DUST * big]
    height = _digit_height(stats, parts)
    groups = _group(stats, parts, height)
    if wide is None:
        if len(groups) <= 1 and all(_width(stats, g) <= ALONE * height for g in groups):
            if len(groups) != 1:
                return None
            wide = _two_in_one(_width(stats, groups[0]), height)
            if wide is None:
                return None
        # One group, wider than a digit: touching digits if it splits into units (step 4).
        elif len(groups) == 1 and len(_units(labels, stats, groups, height)) <= 1:
            return None
    return (labels, stats, groups, height, _bounds(stats, [i for g in groups for i in g]),
            wide)


def _candidates(cut: Cut, labels: np.ndarray, stats: np.ndarray, groups: list[list[int]],
                height: int) -> tuple[int, tuple[Piece, ...]]:
    """Steps 4-5: the number of units and the candidate pieces."""
    units = _units(labels, stats, groups, height)
    return len(units), _pieces(cut, units, height)


def _strip(cut: Cut, band: Band, height: float, level: bool) -> Strip:
    """Step 6: the line's ink near its digits (the units' box, BAND_X digit heights wider on
    each side and BAND_Y taller: a currency sign, a trailing dash, an underline stay; specks
    and lines far off, which would shrink the digits in the strip, do not), levelled if it
    runs slanted and `level` (digitd.strip), as the number model reads it."""
    ink = _ink_profile(cut.ink, cut.mask, cut.floor)
    x0, y0, x1, y1 = band
    rows, cols = ink.shape
    ax0, ax1 = max(0, int(x0 - BAND_X * height)), min(cols, int(x1 + BAND_X * height) + 1)
    ay0, ay1 = max(0, int(y0 - BAND_Y * height)), min(rows, int(y1 + BAND_Y * height) + 1)
    near = np.zeros_like(ink)
    near[ay0:ay1, ax0:ax1] = ink[ay0:ay1, ax0:ax1]
    return strip(near, cut.origin, cut.scale, level=level)


def _remove_rules(binary: np.ndarray, height: int) -> np.ndarray:
    """Wipe long horizontal lines (an underline, a form's rule) and their thickness."""
    length = max(8, int(LINE_LENGTH * height))
    if binary.shape[1] <= length:
        return binary
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1))
    core = cv2.erode(binary, kernel)  # an opening is this erosion dilated back: nothing
    if not core.any():  # this long, no rule
        return binary
    rule = cv2.dilate(core, kernel)
    thick = max(1, round(0.06 * height))
    rule = cv2.dilate(rule, np.ones((2 * thick + 1, 3), np.uint8))
    return cv2.bitwise_and(binary, cv2.bitwise_not(rule))


def _width(stats: np.ndarray, group: list[int]) -> int:
    x0 = min(stats[i, 0] for i in group)
    x1 = max(stats[i, 0] + stats[i, 2] for i in group)
    return int(x1 - x0)


def _group(stats: np.ndarray, parts: list[int], height: int) -> list[list[int]]:
    """Digit-sized parts, each with the small parts that belong to it (sharing its columns
    and close to it). Other small parts are decoration and dropped when they lie outside the
    line of digits (a stray stroke), low in it (a thousands dot or comma) or are flat (a dash,
    an equals sign); what is left (part of a digit broken apart) is a unit of its own. In
    reading order."""
    rows = stats.tolist()  # Python ints: these loops index them many times

    def small(i: int) -> bool:  # or low and wide: a dash, an equals sign
        w, h = rows[i][2], rows[i][3]
        return h < FLAT * height or (w < SMALL * height and h < SMALL * height) \
            or h < 0.6 * height and (w < 0.45 * height or w > 1.2 * h)

    digits = [i for i in parts if not small(i)]
    if not digits:
        return []
    # (statistics.median of these Python ints: np.median's float, without its 15 us a call)
    top = float(statistics.median([rows[i][1] for i in digits]))
    bottom = float(statistics.median([rows[i][1] + rows[i][3] for i in digits]))
    middle = (top + bottom) / 2
    groups = {i: [i] for i in digits}
    loose = []
    for i in parts:
        if i in groups:
            continue
        x, y, w, h, _ = rows[i]
        best, best_gap = None, None
        for d in digits:
            dx, dy, dw, dh, _ = rows[d]
            if min(x + w, dx + dw) - max(x, dx) < 0.3 * w:
                continue
            gap_y = max(0, dy - (y + h), y - (dy + dh))
            if gap_y <= JOIN_GAP * height and (best_gap is None or gap_y < best_gap):
                best, best_gap = d, gap_y
        if best is not None:
            groups[best].append(i)
        else:
            loose.append(i)
    # Loose small parts close together that make up a digit's height: a digit written with
    # a broken, faint stroke.
    for cluster in _clusters(rows, loose, JOIN_GAP * height):
        x0, y0, x1, y1 = _bounds(stats, cluster)
        if len(cluster) > 1 and y1 - y0 >= 0.6 * height and x1 - x0 <= MAX_WIDTH * height:
            groups[cluster[0]] = cluster
            continue
        for i in cluster:
            x, y, w, h, _ = rows[i]
            centre = y + h / 2
            if centre < top or centre > bottom or y > middle - 0.1 * height \
                    or h < PART * height or w > 1.2 * h:
                continue
            groups[i] = [i]
    return sorted(groups.values(), key=lambda g: rows[g[0]][0] + rows[g[0]][2] / 2)


def _bounds(stats: np.ndarray, labels: list[int]) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the parts' union."""
    return (int(min(stats[i, 0] for i in labels)), int(min(stats[i, 1] for i in labels)),
            int(max(stats[i, 0] + stats[i, 2] for i in labels)),
            int(max(stats[i, 1] + stats[i, 3] for i in labels)))


def _clusters(rows: list[list[int]], labels: list[int], reach: float) -> list[list[int]]:
    """The parts grouped by proximity: boxes at most `reach` apart are linked. `rows`: the
    parts' stats as lists."""
    root = {i: i for i in labels}

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for a in labels:
        ax, ay, aw, ah, _ = rows[a]
        for b in labels:
            if b <= a:
                continue
            bx, by, bw, bh, _ = rows[b]
            gap_x = max(0, bx - (ax + aw), ax - (bx + bw))
            gap_y = max(0, by - (ay + ah), ay - (by + bh))
            if gap_x <= reach and gap_y <= reach:
                root[find(a)] = find(b)
    clusters: dict[int, list[int]] = {}
    for i in labels:
        clusters.setdefault(find(i), []).append(i)
    return list(clusters.values())


@dataclass(frozen=True)
class _Unit:
    mask: np.ndarray  # uint8 255 where the unit's ink is: the cut's full height, columns x0:x1
    cut_left: bool  # its left edge is a cut through a part (not the part's own edge)
    cut_right: bool
    x0: int
    x1: int  # columns [x0, x1)
    y0: int
    y1: int


def _units(labels: np.ndarray, stats: np.ndarray, groups: list[list[int]],
           height: int) -> list[_Unit]:
    """Each group as a unit, a group wider than a digit split at its column profile's
    valleys into several."""
    units = []
    for group in groups:
        lut = np.zeros(len(stats), np.uint8)
        lut[group] = 255
        x0 = int(min(stats[i, 0] for i in group))
        x1 = int(max(stats[i, 0] + stats[i, 2] for i in group))
        mask = lut.take(labels[:, x0:x1])
        cuts = _valleys(mask, height) if x1 - x0 > WIDE * height else []
        edges = [x0] + [x0 + c for c in cuts] + [x1]
        for a, b in zip(edges, edges[1:], strict=False):
            cut_left, cut_right = a != x0, b != x1
            part = mask[:, a - x0 : b - x0]
            rows = np.flatnonzero(part.any(axis=1))
            if len(rows) == 0:
                continue
            units.append(_Unit(part, cut_left, cut_right, a, b, int(rows[0]), int(rows[-1]) + 1))
    return units


def _valleys(mask: np.ndarray, height: int) -> list[int]:
    """Candidate columns to cut touching digits at: local minima of the (smoothed) column
    profile where the ink is thin, at least 0.18 digit heights from the ends and 0.3 from
    each other, lowest first, about two per digit boundary expected."""
    profile = (mask > 0).sum(axis=0).astype(np.float32)
    width = len(profile)
    k = max(1, height // 12) | 1
    smooth = np.convolve(profile, np.ones(k, np.float32) / k, mode="same")
    margin = max(2, int(0.18 * height))
    spacing = max(2, int(0.3 * height))
    want = max(1, 2 * (int(round(width / (0.6 * height))) - 1))
    low = VALLEY * float(np.median(smooth[smooth > 0]))
    inner = np.arange(margin, width - margin)
    if len(inner) == 0:
        return []
    left, right = smooth[inner - 1], smooth[np.minimum(inner + 1, width - 1)]
    minima = inner[(smooth[inner] <= left) & (smooth[inner] <= right) & (smooth[inner] <= low)]
    chosen: list[int] = []
    for c in minima[np.argsort(smooth[minima], kind="stable")].tolist():
        if len(chosen) >= want:
            break
        if all(abs(c - o) >= spacing for o in chosen):
            chosen.append(c)
    return sorted(chosen)


def _pieces(cut: Cut, units: list[_Unit], height: int) -> tuple[Piece, ...]:
    """Step 5: the candidate pieces of the units."""
    pieces = []
    kernel = np.ones((3, 3), np.uint8)
    rows, cols = cut.binary.shape
    for first in range(len(units)):
        for last in range(first, min(len(units), first + MAX_RUN)):
            run = units[first : last + 1]
            x0, x1 = min(u.x0 for u in run), max(u.x1 for u in run)
            if last > first:
                if x1 - x0 > MAX_WIDTH * height:
                    break
                gap = max(0, units[last].x0 - max(u.x1 for u in run[:-1]))
                if gap > JOIN_GAP * height:
                    break
            y0, y1 = min(u.y0 for u in run), max(u.y1 for u in run)
            # preprocess's convention: the digit's parts with one pixel around, dilated
            px0, py0 = max(0, x0 - 1), max(0, y0 - 1)
            px1, py1 = min(cols, x1 + 1), min(rows, y1 + 1)
            mask = np.zeros((rows, px1 - px0), np.uint8)
            for u in run:
                region = mask[:, u.x0 - px0 : u.x1 - px0]
                np.bitwise_or(region, u.mask, out=region)
            mask = mask[py0:py1]
            part = Cut(cut.ink[py0:py1, px0:px1], cv2.dilate(mask, kernel), mask, cut.floor,
                       cut.origin, cut.scale)
            try:
                model_input = finish(part)
            except Rejected:  # no ink left in the piece (a cut through nothing)
                continue
            s = cut.scale
            box = (cut.origin[0] + x0 * s, cut.origin[1] + y0 * s, (x1 - x0) * s, (y1 - y0) * s)
            prior = _prior(x1 - x0, y1 - y0, height)
            prior += CUT / 2 * (run[0].cut_left + run[-1].cut_right)
            # a guess: cut out of touching ink, or parts that are apart joined into one
            joined = any(not u.cut_right for u in run[:-1])
            guess = run[0].cut_left or run[-1].cut_right or joined
            pieces.append(Piece(first, last, box, model_input, prior, guess))
    return tuple(pieces)


def _prior(width: int, tall: int, height: int) -> float:
    """Log-penalty for a piece's shape: too wide or too low for one digit."""
    penalty = 0.0
    if width > 0.9 * height:
        penalty -= 4.0 * (width / height - 0.9)
    if tall < 0.5 * height:
        penalty -= 4.0 * (0.5 - tall / height)
    return penalty
