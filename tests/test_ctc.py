"""The number model's side of reading numbers: the strip contract (digitd.strip), greedy CTC
decoding and the digits' boxes (digitd.ctc), and how the two readers are combined
(digitd.reader.combine). Pure functions on hand-made inputs; the real model is exercised in
test_numbers.py, test_predict.py and test_daemon.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from digitd import ctc
from digitd.reader import ALIKE_SURE, TWO_IN_ONE_SURE, _two_alike, combine
from digitd.result import Result
from digitd.segment import Line, Piece
from digitd.strip import HEIGHT, MARGIN, STRIDE, WIDTH, strip
from harness import classifier_rows


def _steps(*labels: int, sure: float = 0.98) -> np.ndarray:
    """(STEPS, CLASSES) probabilities whose most probable class at step t is labels[t]
    (blank after the given ones)."""
    probs = np.full((ctc.STEPS, ctc.CLASSES), (1 - sure) / (ctc.CLASSES - 1))
    best = list(labels) + [ctc.BLANK] * (ctc.STEPS - len(labels))
    probs[np.arange(ctc.STEPS), best] = sure
    return probs


def test_greedy_merges_repeats_and_blanks_separate_them():
    b = ctc.BLANK
    decoded = ctc.greedy(_steps(b, 5, 5, b, 2, b, 2, 2, b, 8))  # classes are 1 + digit
    assert decoded.text == "4117"
    assert [(e.first, e.last) for e in decoded.emissions] == [(1, 2), (4, 4), (6, 7), (9, 9)]
    assert decoded.confidence == pytest.approx(0.98 ** ctc.STEPS)
    e = decoded.emissions[0]
    assert e.value == 4 and e.top[0] == (4, pytest.approx(0.98)) and len(e.top) == 3


def test_greedy_reads_nothing_from_blanks():
    decoded = ctc.greedy(_steps())
    assert decoded.text == "" and decoded.emissions == ()


def test_read_decodes_each_strip_of_a_batch_on_its_own():
    """read() decodes a batch at once: a digit running on from one strip's last step into
    the next strip's first is two emissions, one in each; an emission's peak is the first
    of its surest steps; a blank strip reads nothing; each as greedy() reads it alone."""
    b = ctc.BLANK
    first = _steps(*[b] * (ctc.STEPS - 2), 1 + 6, 1 + 6)  # a 6 at its last two steps
    second = _steps(1 + 6, 1 + 6, 1 + 6, b, 1 + 2)  # a 6 from its first step, then a 2
    second[1, 1 + 6] = second[2, 1 + 6] = 0.99  # two surest steps: the first is the peak
    probs = np.stack([first, second, _steps()])
    decoded = ctc.read(probs)
    assert [d.text for d in decoded] == ["6", "62", ""]
    assert [(e.first, e.last, e.peak) for e in decoded[0].emissions] == [
        (ctc.STEPS - 2, ctc.STEPS - 1, ctc.STEPS - 2)]
    assert [(e.first, e.last, e.peak) for e in decoded[1].emissions] == [(0, 2, 1), (4, 4, 4)]
    for d, p in zip(decoded, probs, strict=True):
        alone = ctc.greedy(p)
        assert (d.text, d.emissions) == (alone.text, alone.emissions)
    assert ctc.read(np.zeros((0, ctc.STEPS, ctc.CLASSES))) == []


def test_strip_fits_the_line_keeps_its_aspect_and_maps_back():
    ink = np.zeros((60, 300), np.float32)
    ink[10:50, 20:220] = 0.5  # the line: 40 x 200 in a 60 x 300 map
    s = strip(ink, origin=(100, 40), step=2.0)
    assert s.pixels.shape == (HEIGHT, WIDTH) and s.pixels.dtype == np.float32
    assert s.pixels.max() == 1.0  # the strongest ink is 1
    rows = np.flatnonzero(s.pixels.any(axis=1))
    cols = np.flatnonzero(s.pixels.any(axis=0))
    assert cols[0] == MARGIN and rows[0] == s.top
    assert len(rows) == HEIGHT - 2 * MARGIN  # the height binds: 200 / 40 < 252 / 28
    assert (cols[-1] - cols[0] + 1) / len(rows) == pytest.approx(5, rel=0.03)
    # the whole strip box maps back onto the ink's box in the input (origin + 2 * map pixels)
    x, y, w, h = s.to_input(cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    assert (x, y, w, h) == pytest.approx((100 + 2 * 20, 40 + 2 * 10, 400, 80), abs=2)


def _slanted_blobs(degrees: float, count: int = 6) -> tuple[np.ndarray, list[tuple]]:
    """An ink map of `count` blobs 40 tall and 25 wide, 90 px apart, their centres on a line
    `degrees` off horizontal (running down to the right), and their boxes (x, y, w, h)."""
    ink = np.zeros((240, 40 + 90 * count), np.float32)
    boxes = []
    for k in range(count):
        x = 20 + 90 * k
        y = round(60 + math.tan(math.radians(degrees)) * x)
        ink[y : y + 40, x : x + 25] = 1.0
        boxes.append((x, y, 25, 40))
    return ink, boxes


def _blob_spans(s) -> list[tuple[int, int]]:
    """The strip columns (first, past the last) of each of its blobs, left to right."""
    cols = s.pixels.any(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], cols.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _blob_rows(s, count: int) -> list[int]:
    """How many strip rows each of the strip's `count` blobs (left to right) spans."""
    spans = _blob_spans(s)
    assert len(spans) == count
    return [len(np.flatnonzero(s.pixels[:, a:b].any(axis=1))) for a, b in spans]


def test_a_slanted_line_is_levelled_its_digits_stand_taller_and_map_back():
    """Serving's strip (level=True) of a line 4 degrees off level: turned level, its blobs
    fill the strip's height, and their boxes map back to where they are in the input."""
    ink, boxes = _slanted_blobs(4.0, count=4)
    assert strip(ink).turn == 0.0  # training's strips are never levelled
    s = strip(ink, origin=(100, 40), step=2.0, level=True)
    assert s.turn == pytest.approx(4.0, abs=0.3)
    # levelled, each blob is nearly the strip's height; not levelled, 40 of the line's 59 rows
    assert min(_blob_rows(s, 4)) >= HEIGHT - 2 * MARGIN - 2
    assert max(_blob_rows(strip(ink), 4)) <= 20
    # each blob's box in the strip maps back onto its box in the input
    for (a, b), (x, y, w, h) in zip(_blob_spans(s), boxes, strict=True):
        rows = np.flatnonzero(s.pixels[:, a:b].any(axis=1))
        gx, gy, gw, gh = s.to_input(a, rows[0], b, rows[-1] + 1)
        # its centre where the blob's is (input pixels); its size the blob's, turned once and
        # a strip pixel wider on each side (a strip pixel is 3 input pixels here)
        assert (gx + gw / 2, gy + gh / 2) == pytest.approx(
            (100 + 2 * (x + w / 2), 40 + 2 * (y + h / 2)), abs=3)
        assert 2 * w <= gw <= 2 * w + 14 and 2 * h <= gh <= 2 * h + 14


@pytest.mark.parametrize("degrees, count", [(8.0, 6), (4.0, 2), (0.3, 6)])
def test_a_line_too_steep_too_short_or_nearly_level_is_not_turned(degrees, count):
    """Steeper than LEVEL_DEG (a short line's shape), narrower than LEVEL_ASPECT (two digits,
    whose principal axis says little) or nearly level: the strip as before levelling."""
    ink, boxes = _slanted_blobs(degrees, count)
    s = strip(ink, level=True)
    assert s.turn == 0.0
    rows = np.flatnonzero(s.pixels.any(axis=1))
    cols = np.flatnonzero(s.pixels.any(axis=0))
    x0, y0 = boxes[0][:2]
    x1, y1 = boxes[-1][0] + 25, boxes[-1][1] + 40
    assert s.to_input(cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == pytest.approx(
        (x0, y0, x1 - x0, y1 - y0), abs=2)  # the strip's ink is the line's box, upright


def test_strip_refuses_no_ink():
    with pytest.raises(ValueError):
        strip(np.zeros((10, 10), np.float32))


def _two_blobs():
    """A strip of two blobs (columns 10-29 and 50-69 of the ink map) and a reading with one
    emission at the centre of each."""
    ink = np.zeros((40, 100), np.float32)
    ink[5:35, 10:30] = 1.0
    ink[5:35, 50:70] = 1.0
    s = strip(ink)
    left = np.flatnonzero(s.pixels.any(axis=0))
    assert left[0] == MARGIN
    # the blobs' centres (ink-map columns 20 and 60; the strip starts at the ink, column 10)
    centres = [int((MARGIN + (x - 10) * s.scale) / STRIDE) for x in (20, 60)]
    labels = [ctc.BLANK] * (centres[1] + 1)
    labels[centres[0]], labels[centres[1]] = 1 + 3, 1 + 8
    return s, ctc.greedy(_steps(*labels))


def test_boxes_are_each_emissions_ink_in_input_pixels():
    s, decoded = _two_blobs()
    assert decoded.text == "38"
    first, second = ctc.boxes(decoded, s)
    assert first == pytest.approx((10, 5, 20, 30), abs=1)  # the ink map's pixels (step 1)
    assert second == pytest.approx((50, 5, 20, 30), abs=1)


def _line_for(s) -> Line:
    blank = np.zeros((28, 28), np.float32)
    pieces = (Piece(0, 0, (11, 6, 19, 29), blank, 0.0, False),
              Piece(1, 1, (51, 6, 19, 29), blank, 0.0, True))
    return Line(height=30.0, one_digit=lambda: blank, strip=s, cut=lambda: (2, pieces))


def test_readers_agree_boxes_from_segmentation_and_ok():
    s, decoded = _two_blobs()
    line = _line_for(s)
    reading = combine(line, classifier_rows((3, 0.99), (8, 0.97)), decoded, "number")
    assert reading.text == "38" and reading.agreed
    assert [d.box for d in reading.digits] == [(11, 6, 19, 29), (51, 6, 19, 29)]
    # the second piece was cut from touching ink, but both readers read an 8 there
    result = Result.number(reading, 0.2, file="x.png")  # 0.98 ** 64 steps = 0.27
    assert result.status == "ok" and not any(p["doubtful"] for p in result.parts)
    assert result.confidence == pytest.approx(decoded.confidence)


def test_readers_disagree_the_digit_is_doubtful_and_boxes_from_the_alignment():
    s, decoded = _two_blobs()
    line = _line_for(s)
    reading = combine(line, classifier_rows((3, 0.99), (6, 0.97)), decoded, "number")
    assert reading.text == "38" and reading.agreed is False
    assert [d.agreed for d in reading.digits] == [True, False]
    assert [d.box for d in reading.digits] == ctc.boxes(decoded, s)
    result = Result.number(reading, 0.2, file="x.png")
    assert result.status == "low_confidence"
    assert [p["doubtful"] for p in result.parts] == [False, True]


def test_one_digit_read_by_the_number_model_is_one_digit():
    s, _ = _two_blobs()
    one = ctc.greedy(_steps(ctc.BLANK, 1 + 7))
    assert combine(_line_for(s), classifier_rows((7, 0.9), (1, 0.9)), one, "number") is None


def _collapse(path) -> tuple[int, ...]:
    out, last = [], None
    for c in path:
        if c != ctc.BLANK and c != last:
            out.append(c)
        last = c
    return tuple(out)


def test_string_probability_sums_every_alignment():
    """The CTC forward algorithm against brute force: the sum of the probabilities of every
    path of 5 steps that collapses to the string (repeats and blanks included)."""
    import itertools

    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(4), size=(1, 5))  # blank and the classes 1-3
    for label in ([], [1], [2, 2], [1, 3], [3, 1, 3], [2, 2, 2]):
        brute = sum(np.prod([probs[0, t, c] for t, c in enumerate(path)])
                    for path in itertools.product(range(4), repeat=5)
                    if _collapse(path) == tuple(label))
        got = np.exp(ctc.string_log_probs(probs, [label]))[0]
        assert got == pytest.approx(brute, rel=1e-9), label


def test_read_gives_the_strings_probability():
    """read(): the greedy string, its confidence the string's probability, at least the
    greedy path's (one of its alignments)."""
    b = ctc.BLANK
    probs = _steps(b, 5, 5, b, 2)
    probs[2] = probs[1] * 0 + 0.02  # step 2: unsure between the 4 going on and a blank
    probs[2, 5], probs[2, b] = 0.5, 0.32
    [decoded] = ctc.read(probs[None])
    path = ctc.greedy(probs)
    assert decoded.text == path.text == "41"
    assert decoded.confidence > path.confidence * 1.5  # the blank at step 2 counts too
    assert decoded.confidence == pytest.approx(
        np.exp(ctc.string_log_probs(probs[None], [[5, 2]]))[0])


def test_forward_algorithm_over_a_whole_strip_matches_log_space():
    """string_log_probs (rescaled products) against the textbook recursion in log space, on
    64 steps of peaky and flat outputs, strings right, wrong, repeated and empty."""
    rng = np.random.default_rng(7)
    for sharp in (1.0, 8.0, 25.0):
        probs = ctc.softmax(rng.normal(0, sharp, (3, ctc.STEPS, ctc.CLASSES)))
        labels = [[3, 3, 5], [1, 2, 3, 4, 5, 6, 7, 8], []]
        got = ctc.string_log_probs(probs, labels)
        for k, label in enumerate(labels):
            ext = [ctc.BLANK]
            for c in label:
                ext += [c, ctc.BLANK]
            logp = np.log(np.maximum(probs[k], 1e-300))
            alpha = np.full(len(ext), -np.inf)
            alpha[:2] = logp[0, ext[:2]]
            for t in range(1, ctc.STEPS):
                prev = alpha.copy()
                for s in range(len(ext)):
                    terms = [prev[s]] + ([prev[s - 1]] if s >= 1 else [])
                    if s >= 2 and ext[s] != ctc.BLANK and ext[s] != ext[s - 2]:
                        terms.append(prev[s - 2])
                    alpha[s] = np.logaddexp.reduce(terms) + logp[t, ext[s]]
            want = np.logaddexp.reduce(alpha[-2:]) if label else alpha[-1]
            if want > -200:
                assert got[k] == pytest.approx(want, abs=1e-8), (sharp, label)


def _unsure_of_the_second(second: dict[int, float]):
    """The two blobs read with the second digit's probabilities at its step as given (the
    rest spread evenly), and those steps."""
    s, decoded = _two_blobs()
    probs = _steps(*[ctc.BLANK] * ctc.STEPS)
    peak = decoded.emissions[1].peak
    probs[peak] = (1 - sum(second.values())) / (ctc.CLASSES - len(second))
    for digit, p in second.items():
        probs[peak, 1 + digit] = p
    probs[decoded.emissions[0].peak] = probs[0] * 0 + 0.002
    probs[decoded.emissions[0].peak, 1 + 3] = 0.98
    [decoded] = ctc.read(probs[None])
    return s, decoded, probs


def test_an_unsure_digit_is_the_one_both_readers_find_most_probable():
    """The number model reads 4 (0.5) or 9 (0.45) there, the classifier a clear 9: the number
    is 39, the digit doubtful, the string's confidence its probability under the number
    model."""
    s, decoded, probs = _unsure_of_the_second({4: 0.5, 9: 0.45})
    assert decoded.text == "34"
    reading = combine(_line_for(s), classifier_rows((3, 0.99), (9, 0.98)), decoded, "auto",
                      probs)
    assert reading.text == "39" and reading.source == "both readers"
    assert [d.agreed for d in reading.digits] == [True, False]
    assert reading.digits[1].confidence == pytest.approx(0.45)
    assert reading.confidence == pytest.approx(
        np.exp(ctc.string_log_probs(probs[None], [[1 + 3, 1 + 9]]))[0])
    assert Result.number(reading, 0.2, file="x.png").status == "low_confidence"


def test_a_digit_the_number_model_is_fairly_sure_of_stays():
    """The number model reads 4 (0.9), the classifier 9 (0.4) or 4 (0.3): 4 stays, doubtful."""
    s, decoded, probs = _unsure_of_the_second({4: 0.9, 9: 0.05})
    rows = classifier_rows((3, 0.99), (9, 0.4))
    rows[1] = 0.3 / 8
    rows[1, 9], rows[1, 4] = 0.4, 0.3
    reading = combine(_line_for(s), rows, decoded, "auto", probs)
    assert reading.text == "34" and reading.source == "number model"
    assert reading.confidence == decoded.confidence
    assert [d.agreed for d in reading.digits] == [True, False]


def test_the_other_number_models_reading_is_a_third_vote_for_each_digit():
    """The same digit, and the other number model read 39 (its 9 at 0.95): three readers
    together find 9 the most probable; its confidence stays the first model's probability of
    the string. A reading of another length has no vote."""
    s, decoded, probs = _unsure_of_the_second({4: 0.9, 9: 0.05})
    rows = classifier_rows((3, 0.99), (9, 0.4))
    rows[1] = 0.3 / 8
    rows[1, 9], rows[1, 4] = 0.4, 0.3
    _, other, _ = _unsure_of_the_second({9: 0.95, 4: 0.02})
    assert other.text == "39"
    reading = combine(_line_for(s), rows, decoded, "auto", probs, other)
    assert reading.text == "39" and reading.source == "both readers"
    assert reading.confidence == pytest.approx(
        np.exp(ctc.string_log_probs(probs[None], [[1 + 3, 1 + 9]]))[0])
    [longer] = ctc.read(_steps(ctc.BLANK, 1 + 3, ctc.BLANK, 1 + 9, ctc.BLANK, 1 + 9)[None])
    assert combine(_line_for(s), rows, decoded, "auto", probs, longer).text == "34"


def test_a_number_all_three_readers_read_alike_takes_the_surer_models_confidence():
    """Both number models read 34 (the first unsure of its 4: 0.6; the second at 0.97) and
    the digit model reads 3 and 4: the string's confidence is the larger of the two models'
    probabilities, the 4 the second model's (confidence and top 3), the 3 the first's; each
    digit agreed. Where the digit model reads another second digit, or the second model
    another string, the first model's probability stands."""
    s, decoded, probs = _unsure_of_the_second({4: 0.6, 9: 0.3})
    _, other, _ = _unsure_of_the_second({4: 0.97, 9: 0.01})
    assert decoded.text == other.text == "34" and decoded.confidence < other.confidence
    rows = classifier_rows((3, 0.99), (4, 0.9))
    reading = combine(_line_for(s), rows, decoded, "auto", probs, other)
    assert reading.text == "34" and reading.agreed and reading.source == "number model"
    assert reading.confidence == other.confidence
    three, four = reading.digits
    assert (three.confidence, three.top) == (decoded.emissions[0].confidence,
                                             decoded.emissions[0].top)
    assert (four.confidence, four.top) == (other.emissions[1].confidence, other.emissions[1].top)
    assert three.agreed and four.agreed
    # the segmentation reader reads 39: the first model's own probability
    unlike = combine(_line_for(s), classifier_rows((3, 0.99), (9, 0.9)), decoded, "auto", probs,
                     other)
    assert unlike.confidence == decoded.confidence
    # the second model read 39: the same
    _, nine, _ = _unsure_of_the_second({9: 0.97, 4: 0.01})
    assert combine(_line_for(s), rows, decoded, "auto", probs, nine).confidence == \
        decoded.confidence


def test_guessed_pieces_do_not_make_one_digit_of_what_both_models_read_alike_and_sure():
    """reader._two_alike: the two number models read the same string and one of them at
    TWO_IN_ONE_SURE or above; otherwise (another string, no second model, both below) the
    segmentation reader's one digit stands."""
    def read(text: str, confidence: float) -> ctc.Decoded:
        return ctc.Decoded(text, confidence, ())

    below = TWO_IN_ONE_SURE - 0.01
    assert _two_alike(read("56", below), read("56", TWO_IN_ONE_SURE))
    assert _two_alike(read("56", TWO_IN_ONE_SURE), read("56", 0.5))
    assert not _two_alike(read("56", below), read("56", below))
    assert not _two_alike(read("56", 0.999), read("58", 0.999))
    assert not _two_alike(read("56", 0.999), None)


def test_pieces_all_guesses_give_way_to_both_models_alike_at_alike_sure():
    """combine: where every piece the segmentation reader reads is a guess (cut from
    touching ink; one digit to it), both number models reading the same string, one of them
    at ALIKE_SURE (below TWO_IN_ONE_SURE), keep the line a number, at the first model's
    confidence; below ALIKE_SURE, or where the second reads another string, it is one
    digit (None)."""
    s, decoded = _two_blobs()
    blank = np.zeros((28, 28), np.float32)
    guessed = (Piece(0, 0, (11, 6, 19, 29), blank, 0.0, True),
               Piece(1, 1, (51, 6, 19, 29), blank, 0.0, True))
    line = Line(height=30.0, one_digit=lambda: blank, strip=s, cut=lambda: (2, guessed))
    rows = classifier_rows((5, 0.9), (6, 0.9))  # its guesses read `56`

    def at(confidence: float, text: str = "38") -> ctc.Decoded:
        return ctc.Decoded(text, confidence, decoded.emissions)

    assert ALIKE_SURE < TWO_IN_ONE_SURE
    reading = combine(line, rows, at(0.6), "auto", None, at(ALIKE_SURE))
    assert reading.text == "38" and reading.confidence == 0.6
    assert combine(line, rows, at(ALIKE_SURE), "auto", None, at(0.6)).text == "38"
    assert combine(line, rows, at(0.6), "auto", None, at(ALIKE_SURE - 0.005)) is None
    assert combine(line, rows, at(0.6), "auto", None, at(0.999, "39")) is None
    assert combine(line, rows, at(0.6), "auto", None, None) is None


def _two_digits(first: dict[int, float], second: int) -> np.ndarray:
    """A strip's output reading two digits: at step 1 the digits `first` (digit ->
    probability), at step 3 the digit `second`, surely; blanks elsewhere."""
    probs = _steps(ctc.BLANK, ctc.BLANK, ctc.BLANK, 1 + second, sure=0.999)
    probs[1] = 1e-4
    for digit, p in first.items():
        probs[1, 1 + digit] = p
    probs[1] /= probs[1].sum()
    return probs


def test_reconsider_keeps_the_string_more_probable_under_both():
    """The first model leans to 47, the second is sure of 97: 97 is the more probable under
    both; its confidence is the first model's probability of it, its digits the second's."""
    first, second = _two_digits({4: 0.55, 9: 0.40}, 7), _two_digits({4: 0.05, 9: 0.9}, 7)
    [mine], [theirs] = ctc.read(first[None]), ctc.read(second[None])
    assert (mine.text, theirs.text) == ("47", "97")
    kept = ctc.reconsider(first, second, mine, theirs)
    assert kept.text == "97" and kept.emissions == theirs.emissions
    assert kept.confidence == pytest.approx(np.exp(ctc.string_log_probs(first[None],
                                                                        [[10, 8]]))[0])
    assert kept.confidence < mine.confidence  # never surer than the first model was


def test_reconsider_keeps_the_first_reading_unless_both_prefer_the_other():
    first, second = _two_digits({4: 0.9, 9: 0.05}, 7), _two_digits({4: 0.4, 9: 0.5}, 7)
    [mine], [theirs] = ctc.read(first[None]), ctc.read(second[None])
    assert theirs.text == "97"
    assert ctc.reconsider(first, second, mine, theirs) is mine
    [nothing] = ctc.read(_steps()[None])  # the second reads no digit at all
    assert ctc.reconsider(first, _steps(), mine, nothing) is mine
