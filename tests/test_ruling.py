"""Printed form ruling is not ink (digitd.ruling, and through preprocess and `digitd predict`).

The fields come from bench/scans.py's form generator: MNIST test digits from the committed
sample written into boxes, comb fields, on underlines, through a printed line, on squared and
ruled paper, and in a loosely cut row of boxes; no mocks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import number_scans
import scans
from digitd.preprocess import Rejected, normalise, prepare
from digitd.ruling import Line, Ruling, _profile, remove_ruling
from pngwrite import encode_png

MODEL = Path(__file__).parent.parent / "daemon" / "digitd" / "models" / "digitd-cnn.keras"
LEVEL = 127  # ink maps below are 0..255; a pixel is ink above half strength


def as_ink(cover: np.ndarray) -> np.ndarray:
    return np.clip(cover * 255 + 0.5, 0, 255).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b)))


def similar(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two model inputs, the best over shifts of up to a pixel."""
    return max(float(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b.ravel())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@pytest.mark.parametrize("flavour", scans.FORM_FLAVOURS)
def test_digit_with_ruling_gives_the_digit_alone_mask(sample, flavour):
    """Every kind of ruling: the ink left is the digit's, IoU >= 0.9 with the digit alone.

    Twelve digits each; one may fall short (a comb's tick touching the digit stays, see
    digitd.ruling), none by much."""
    x = sample[0]
    scores = []
    for i in range(12):
        digit, ruling = scans.form_maps(x[i], i, flavour=flavour)
        alone = as_ink(digit)
        both = as_ink(np.maximum(digit, ruling))
        assert np.count_nonzero((both > LEVEL) & ~(alone > LEVEL)) > 0  # ruling is there
        result = remove_ruling(both, LEVEL)
        assert result.mask is not None and result.lines and not result.empty, i
        scores.append(iou(result.ink > LEVEL, alone > LEVEL))
    assert sum(s >= 0.9 for s in scores) >= 11, scores
    assert min(scores) >= 0.75, scores


@pytest.mark.parametrize("flavour", scans.FORM_FLAVOURS)
def test_ruling_alone_is_an_empty_field(flavour):
    for i in range(8):
        _, ruling = scans.form_maps(None, i, flavour=flavour)
        result = remove_ruling(as_ink(ruling), LEVEL)
        assert result.empty, (flavour, i)
        assert np.count_nonzero(result.ink > LEVEL) < 0.01 * ruling.size


@pytest.mark.parametrize("flavour", scans.FORM_FLAVOURS)
def test_an_empty_scanned_field_is_no_ink(flavour):
    for i in range(6):
        with pytest.raises(Rejected) as info:
            prepare(scans.render_form(None, i, flavour=flavour)[0])
        assert info.value.code == "no_ink", (flavour, i)


def test_a_plain_digit_is_unchanged(sample):
    x = sample[0]
    for i in range(40):
        for ink in (x[i], as_ink(scans.form_maps(x[i], i)[0])):
            result = remove_ruling(ink)
            assert result == Ruling(ink, None), i
            assert result.ink is ink  # not even copied
    # Through the pipeline: a scan with no ruling gives what it gave before ruling existed,
    # which the daemon's figures rest on (bench/accuracy.py's scans).
    for i in range(24):
        data = scans.render_scan(x[i], i, flavour=scans.FLAVOURS[1 + i % 10])[0]
        assert prepare(data).model_input.shape == (28, 28)


def test_a_stroke_crossing_a_line_is_kept_whole():
    ink = np.zeros((120, 160), np.uint8)
    cv2.line(ink, (0, 60), (159, 62), 255, 2, cv2.LINE_AA)  # a printed line, slightly skewed
    stroke = np.zeros_like(ink)
    cv2.line(stroke, (70, 15), (90, 105), 255, 9, cv2.LINE_AA)  # a pen stroke across it
    result = remove_ruling(np.maximum(ink, stroke), LEVEL)
    assert len(result.lines) == 1 and not result.lines[0].vertical
    left = result.ink > LEVEL
    n, _ = cv2.connectedComponents(left.astype(np.uint8))
    assert n == 2  # one piece: the stroke is not cut where it crosses the line
    assert iou(left, stroke > LEVEL) >= 0.95
    assert not left[:, :50].any() and not left[:, 120:].any()  # the line is gone


@pytest.mark.parametrize(("flavour", "indices"), [
    ("form_squared", (196, 295, 363)),  # a stroke runs along a grid line for half its length
    ("form_neighbours", (506, 891)),  # the neighbours' edges, as thick as a stroke
])
def test_ruling_hidden_by_strokes_or_as_thick_as_them_goes(sample, flavour, indices):
    """Fields where the ruling used to stay with the digit (IoU 0.24-0.87 before): a grid
    line hidden by a stroke running along it (the grid's pitch says it is there), the bold
    edges of neighbouring boxes (two lines a gap apart)."""
    x = sample[0]
    for i in indices:
        digit, ruling = scans.form_maps(x[i], i, flavour=flavour)
        result = remove_ruling(as_ink(np.maximum(digit, ruling)), LEVEL)
        assert iou(result.ink > LEVEL, as_ink(digit) > LEVEL) >= 0.9, i


def test_the_bold_edges_of_neighbouring_boxes_are_ruling():
    """A row of boxes cut loosely: the neighbours' edges (two lines a gap apart merge into
    one as thick as a stroke) run from the top line to the bottom one near the crop's sides."""
    field = np.zeros((90, 110), np.uint8)
    for y in (8, 80):
        cv2.line(field, (0, y), (109, y), 255, 3)
    for x in (6, 103):
        cv2.line(field, (x, 2), (x, 87), 255, 7)
    digit = np.zeros_like(field)
    cv2.ellipse(digit, (55, 44), (16, 24), 0, 0, 360, 255, 6)  # a 0
    result = remove_ruling(np.maximum(field, digit), LEVEL)
    assert sum(line.vertical for line in result.lines) == 2
    assert iou(result.ink > LEVEL, digit > LEVEL) >= 0.9
    # the same bold stroke in the middle of the field, not at a neighbour's place, stays
    one = np.zeros_like(field)
    cv2.line(one, (55, 2), (55, 87), 255, 7)
    middle = remove_ruling(np.maximum(field, one), LEVEL)
    assert iou(middle.ink > LEVEL, one > LEVEL) >= 0.8


def test_thin_digits_standing_on_a_thick_underline_are_not_ticks(sample):
    """A number underlined by hand with a thicker pen than its digits': the digits touching
    the line are not a comb's ticks (they are not straight), so the field is not empty."""
    data, text, _ = number_scans.render_number(*sample, 14, seed=3, decorations=("underline",))
    assert text == "47"
    assert prepare(data).model_input.max() == pytest.approx(1.0)  # used to be no_ink


def test_a_lone_one_is_not_a_line():
    """A thin vertical stroke across a tight crop is a 1, not a box's edge."""
    one = np.full((120, 60), 255, np.uint8)
    cv2.line(one, (30, 0), (31, 119), 0, 4)
    result = remove_ruling(255 - one)
    assert result.mask is None
    assert normalise(one).max() == pytest.approx(1.0)


def test_a_thin_one_in_a_line_of_bolder_digits_is_not_ruling():
    """A number written with a 1 thinner than its other digits, over a scanner's border line:
    the 1 is an upright stroke touching no line, not ruling thinner than the strokes."""
    ink = np.zeros((42, 180), np.uint8)
    cv2.line(ink, (0, 40), (179, 40), 200, 1)  # the border line, across the image
    cv2.line(ink, (24, 6), (24, 25), 255, 2)  # the 1, 2 px
    for x in (60, 100, 140):  # bolder digits, 5 px strokes: 0s
        cv2.ellipse(ink, (x, 16), (10, 11), 0, 0, 360, 255, 5)
    result = remove_ruling(ink, LEVEL)
    assert [line.vertical for line in result.lines] == [False]  # the border line alone
    assert np.count_nonzero(result.ink[6:26, 22:27] > LEVEL) >= 35  # the 1 is all there


def test_a_one_standing_on_an_underline_beside_touching_digits_is_not_a_tick():
    """An underlined number whose 1 stands on the line, thin and straight as a comb's tick,
    beside two touching digits (one part wider than a digit is tall): the 1 is as tall as
    the digits, so it stays (it went when measured against the touching pair's width:
    `4577127` read `457727`, some of them `ok`)."""
    ink = np.zeros((64, 200), np.uint8)
    cv2.line(ink, (0, 52), (199, 52), 255, 3)  # the underline
    for x in (40, 62, 160):  # 0s, the first two touching: one part 54 px wide
        cv2.ellipse(ink, (x, 28), (11, 17), 0, 0, 360, 255, 5)
    cv2.line(ink, (118, 17), (118, 50), 255, 3)  # the 1, on the line
    result = remove_ruling(ink, LEVEL)
    assert [line.vertical for line in result.lines] == [False]  # the underline
    assert np.count_nonzero(result.ink[17:48, 116:121] > LEVEL) >= 3 * 30  # the 1 is there
    assert np.count_nonzero(result.ink[52] > LEVEL) < 40  # and the underline is not


def test_a_one_as_tall_as_most_digits_beside_it_is_not_a_tick():
    """Digits of a number differ in height: a 1 on the underline shorter than 0.8 of the
    tallest digit (a large 0 first) but nearly as tall as most of them stays (USPS seed 3's
    `078171` read `0787`, `ok`: its 1s as tall as its 7s, its 8 taller). Several digits side
    by side are measured by their median height; a comb's ticks are at most 0.8 of it."""
    ink = np.zeros((72, 260), np.uint8)
    cv2.line(ink, (0, 60), (259, 60), 255, 3)  # the underline
    for x, half in ((30, 19), (80, 17), (170, 14), (220, 14)):  # four 0s, 45 to 35 px tall
        cv2.ellipse(ink, (x, 54 - half), (9, half), 0, 0, 360, 255, 5)
    cv2.line(ink, (125, 28), (125, 58), 255, 3)  # the 1 on the line, as tall as the last two
    result = remove_ruling(ink, LEVEL)
    assert [line.vertical for line in result.lines] == [False]  # the underline
    assert np.count_nonzero(result.ink[28:56, 123:128] > LEVEL) >= 3 * 26  # the 1 is there
    assert np.count_nonzero(result.ink[60] > LEVEL) < 40  # and the underline is not


def test_a_combs_ticks_as_tall_as_the_digits_go():
    """A comb field whose ticks are nearly as tall as the digits written between them (each
    tick a thin straight stroke standing on the line, as a 1 can be): evenly spaced and
    alike in height, they are ticks and go, the 0s stay (`bench/number_accuracy.py --forms`:
    `208` read `2108`, `ok`)."""
    ink = np.zeros((100, 280), np.uint8)  # ticks shorter than a line must be (LONG)
    cv2.line(ink, (0, 88), (279, 88), 255, 2)  # the comb's baseline
    for x in (10, 60, 110, 160, 210, 260):  # its ticks, 33 px: nearly the digits' height
        cv2.line(ink, (x, 55), (x, 88), 255, 2)
    for x in (35, 85, 135, 185, 235):  # 0s, 35 px tall, one in each cell
        cv2.ellipse(ink, (x, 68), (9, 17), 0, 0, 360, 255, 5)
    result = remove_ruling(ink, LEVEL)
    kept = result.ink > LEVEL
    for x in (60, 110, 160, 210):  # the ticks between the digits
        assert np.count_nonzero(kept[55:86, x - 2 : x + 3]) == 0, x
    for x in (35, 85, 135, 185, 235):
        assert np.count_nonzero(kept[50:86, x - 14 : x + 15]) >= 500, x


def test_a_two_cell_combs_three_ticks_go():
    """A comb of two cells: three ticks as tall as the two digits, one digit in each cell,
    the ticks thinner than the handwriting: they go (`90` read `19101`, `ok`), the 0s stay."""
    ink = np.zeros((100, 150), np.uint8)
    cv2.line(ink, (0, 88), (149, 88), 255, 2)  # the comb's baseline
    for x in (15, 75, 135):  # its ticks, 34 px: as tall as the digits
        cv2.line(ink, (x, 54), (x, 88), 255, 2)
    for x in (45, 105):  # 0s, 36 px tall
        cv2.ellipse(ink, (x, 68), (11, 18), 0, 0, 360, 255, 4)
    kept = remove_ruling(ink, LEVEL).ink > LEVEL
    for x in (15, 75, 135):
        assert np.count_nonzero(kept[54:86, x - 2 : x + 3]) == 0, x
    for x in (45, 105):
        assert np.count_nonzero(kept[50:86, x - 14 : x + 15]) >= 400, x


def test_three_ones_as_thick_as_the_digits_around_two_digits_are_not_a_comb():
    """`10101` on an underline: three 1s evenly spaced, a 0 between each two, as a two-cell
    comb's ticks stand, but as thick as the 0s' strokes: they stay."""
    ink = np.zeros((100, 170), np.uint8)
    cv2.line(ink, (0, 88), (169, 88), 255, 3)  # the underline
    for x in (20, 80, 140):  # 1s on the line, 34 px
        cv2.line(ink, (x, 54), (x, 86), 255, 3)
    for x in (50, 110):
        cv2.ellipse(ink, (x, 68), (11, 18), 0, 0, 360, 255, 3)
    kept = remove_ruling(ink, LEVEL).ink > LEVEL
    for x in (20, 80, 140):
        assert np.count_nonzero(kept[54:86, x - 2 : x + 3]) >= 3 * 28, x


def test_ones_unevenly_spaced_on_an_underline_are_not_a_comb():
    """Three 1s standing on an underline among other digits, as tall as each other and as
    straight as ticks, but not evenly spaced: they stay (only a comb's ticks are)."""
    ink = np.zeros((72, 300), np.uint8)
    cv2.line(ink, (0, 60), (299, 60), 255, 3)  # the underline
    for x in (40, 160, 270):  # 0s
        cv2.ellipse(ink, (x, 40), (10, 18), 0, 0, 360, 255, 5)
    for x in (80, 110, 210):  # 1s on the line, 30 px
        cv2.line(ink, (x, 29), (x, 58), 255, 3)
    result = remove_ruling(ink, LEVEL)
    for x in (80, 110, 210):
        assert np.count_nonzero(result.ink[29:56, x - 2 : x + 3] > LEVEL) >= 3 * 25, x


def row_of_boxes(walls: list[int], thickness: int = 2, gap: int = 1) -> np.ndarray:
    """A row of boxes 60 px high, its outer sides at x 10 and 310; each inner wall two lines
    `gap` px apart (two boxes side by side): a pixel apart, they merge into one wall as thick
    as a stroke."""
    ink = np.zeros((80, 320), np.uint8)
    cv2.rectangle(ink, (10, 10), (310, 70), 255, thickness)
    for x in walls:
        for dx in (-thickness - gap // 2, gap - gap // 2):
            cv2.line(ink, (x + dx, 10), (x + dx, 70), 255, thickness)
    return ink


def test_the_double_walls_of_a_row_of_boxes_go():
    """Five boxes a pixel apart: the walls between them are as thick as the 0s' strokes and
    were left, read as 1s (`631` read `61311`); dividing the row into equal cells, they go
    and the 0s stay whole."""
    ink = row_of_boxes([70, 130, 190, 250])
    for x in (40, 100, 160, 220, 280):  # 0s, 36 px tall, inside their boxes
        cv2.ellipse(ink, (x, 40), (10, 18), 0, 0, 360, 255, 4)
    kept = remove_ruling(ink, LEVEL).ink > LEVEL
    for x in (70, 130, 190, 250):
        assert np.count_nonzero(kept[14:67, x - 4 : x + 4]) == 0, x
    for x in (40, 100, 160, 220, 280):
        assert np.count_nonzero(kept[20:61, x - 12 : x + 13]) >= 300, x


def test_a_digit_crossing_a_double_wall_stays():
    """A 0 written across its box's side (one digit in five crosses its box's bottom or side
    in bench/number_scans.py's rows of boxes): the walls go, the 0 stays, losing only some
    of its side where it runs along the wall (11%; a component taken whole would lose it)."""
    ink = row_of_boxes([70, 130, 190, 250])
    zero = np.zeros_like(ink)
    cv2.ellipse(zero, (124, 40), (10, 18), 0, 0, 360, 255, 4)  # its right side on the wall
    ink |= zero
    for x in (40, 160, 220, 280):
        cv2.ellipse(ink, (x, 40), (10, 18), 0, 0, 360, 255, 4)
    kept = remove_ruling(ink, LEVEL).ink > LEVEL
    assert np.count_nonzero(kept & (zero > 0)) >= 0.85 * np.count_nonzero(zero)
    for x in (70, 190, 250):
        assert np.count_nonzero(kept[14:67, x - 4 : x + 4]) == 0, x


def test_underlined_digits_keep_their_shape_through_normalise(sample):
    x = sample[0]
    for i in range(10):
        digit, ruling = scans.form_maps(x[i], i, flavour="form_underline")
        page = 255 - as_ink(digit)
        lined = 255 - as_ink(np.maximum(digit, ruling))
        assert similar(normalise(lined), normalise(page)) > 0.9, i


def test_the_run_across_a_line_is_the_one_through_its_strongest_centre_row():
    """ruling._profile, column by column: the run of ink (above half the strongest of the
    three rows at the line's centre; the first of equally strong ones) through that row, also
    where the line's own row is paper and ink lies on both sides of it."""
    work = np.zeros((40, 8), np.uint8)  # a level line at row 20: rows 15..25 are looked at
    work[19:22, 1] = 200  # a line 3 px thick
    work[21:24, 2] = 200  # row 20 paper, ink from 21 down
    work[17:20, 3] = 200  # row 20 paper, ink up to 19
    work[19, 4], work[21:23, 4] = 150, 200  # paper at 20 between: the stronger run, below
    work[5:35, 5] = 200  # a stroke across the line: on past the rows looked at
    work[19:22, 6], work[20, 6] = 60, 200  # pale ink around a dark pixel: half of 200 is 100
    work[19:22, 7] = 60  # pale alone: its own half
    centre, above, below, thick, has, edge = _profile(work, Line(False, 20.0, 0.0, 0, 7, 0.0))
    assert has.tolist() == [False] + [True] * 7
    assert centre.tolist() == [20, 19, 21, 19, 21, 19, 20, 19]
    assert above.tolist() == [0, 0, 0, 2, 0, 4, 0, 0]
    assert below.tolist() == [0, 2, 2, 0, 1, 6, 0, 2]
    assert thick.tolist() == [0, 3, 3, 3, 2, 11, 1, 3]
    assert edge.tolist() == [False] * 5 + [True, False, False]


def test_remove_ruling_checks_its_input():
    with pytest.raises(ValueError):
        remove_ruling(np.zeros((40, 40), np.float32))
    with pytest.raises(ValueError):
        remove_ruling(np.zeros((40, 40, 3), np.uint8))
    tiny = np.zeros((20, 20), np.uint8)
    tiny[10] = 255  # shorter than any ruling line: left alone
    assert remove_ruling(tiny).mask is None


def test_form_fields_through_digitd_predict(tmp_path, sample):
    """The real CLI and model: written fields read right, empty fields are no_ink."""
    if not MODEL.is_file():
        pytest.skip(f"the shipped model {MODEL.name} is not there")
    x, y = sample
    labels = {}
    for i in range(21):  # three of each flavour
        name = f"field{i:02d}.png"
        (tmp_path / name).write_bytes(scans.render_form(x[200 + i], 200 + i)[0])
        labels[name] = int(y[200 + i])
    for i in range(7):
        (tmp_path / f"empty{i}.png").write_bytes(scans.render_form(None, i)[0])
    (tmp_path / "underlined3.png").write_bytes(encode_png(underlined_three(x, y)))
    labels["underlined3.png"] = 3
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    proc = subprocess.run([sys.executable, "-m", "digitd", "predict", "--json", *names],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    rows = {r["file"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(rows) == set(names), proc.stderr
    wrong = [n for n, label in labels.items() if rows[n]["digit"] != label]
    assert len(wrong) <= 1, wrong
    for i in range(7):
        assert rows[f"empty{i}.png"]["error"] == "no_ink"


def underlined_three(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The issue's example: a 3 on a printed underline, dark on a grey scan."""
    three = x[int(np.flatnonzero(y == 3)[0])]
    big = cv2.resize(three, None, fx=5, fy=5, interpolation=cv2.INTER_CUBIC)
    page = np.full((180, 220), 235, np.uint8)
    page[20:160, 40:180] = np.minimum(page[20:160, 40:180], 255 - big)
    cv2.line(page, (0, 142), (219, 142), 40, 3)  # through the 3's foot
    return page
