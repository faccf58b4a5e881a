"""Printed form ruling is not ink: find it in an ink map and take it out.

    remove_ruling(ink, level) -> Ruling(ink, mask, lines, empty)

`ink` is an ink-strength map: uint8, 0 for paper, larger for more ink (for dark ink on white
paper `255 - grey`; digitd.preprocess passes the residual it computes against the paper's
estimate, so any paper, light and ink colour look alike). `level` is the strength from which a
pixel counts as ink (default: Otsu's threshold). The result's `ink` is the same map with the
ruling set to 0 but the handwriting kept, also where a stroke crosses a line; `mask` (uint8
0/255, None if nothing was removed) marks the pixels taken out; `empty` is True when ruling was
found and nothing the size of a handwritten mark is left: an empty form field.

Pure functions on arrays (numpy + OpenCV): no state, safe from many threads. digitd.preprocess
calls it on its located copy (at most 192 px a side; a ruled strip again on one of at most
192 x 192 pixels in all) before it looks for the digit; another caller (several digits on an
underline) can call it on any ink map.

What counts as ruling:

1. Candidates: straight lines at most 2.5 degrees off horizontal or vertical (a crooked scan),
   found by a Hough transform restricted to those angles, at least LONG of the image's side;
   along each, the thickness (the run of ink across the line) is measured at every position.
   A candidate is line-like when it is thin for its length (THIN of it: ruling is a few
   percent of a digit's height thick and at least about as long as the digit is high; a
   digit's bar or stem is 10-20%), covered along most of its length, with a steady thickness.
   On squared or ruled paper (three or more evenly spaced parallel lines, or the other
   direction's pitch) a line of the grid that a stroke runs along for much of its length is
   looked for where the pitch puts it, and needs only GRID_COVER of its extent to be its own.
2. A line-like candidate is ruling when it is clearly thinner than the remaining strokes, or
   spans the image (underlines, a line through the digit, ruled and squared paper, the edges
   of neighbouring boxes; a lone vertical line across the middle is left alone: it may be a
   1), or meets another candidate at a corner (a box's sides). A spanning line as thick as a
   stroke (`bold`: a neighbouring box's edge, often two lines a gap apart) is ruling only near
   the image's side and across two perpendicular lines, with a steady thickness all along.
   An upright one shorter than the image, inside it and touching no other line is not ruling
   however thin: a 1 written with a finer pen than the other digits of a number.
3. Removal keeps the strokes: at each position along a line the run of ink across it is taken
   out only where it is the line's own thickness (and a pixel of fringe); where a stroke
   crosses the line, touches it or runs along it, the run is longer and stays whole (a
   stroke standing on a line keeps a sliver of the line under its foot, no stroke is cut).
   Horizontal lines go first, then vertical ones are found again on what is left, so the
   crossings of squared paper go with the second pass.
4. Stubs: short straight pieces, as thin as the ruling, standing on a removed line (the ticks
   of a comb field, a box's sides too short to be candidates) go too, unless they are as thick
   as the handwriting, or not straight (thin digits standing on a thick underline). Beside
   several written marks, a stub as tall as the digits stays (a 1 on an underline) unless it
   is one of COMB_TICKS or more alike and evenly spaced: a comb's ticks, however tall (or
   of three such around two written marks, one in each cell, thinner than the handwriting:
   a comb of two cells).
5. Walls: in a row of boxes (two horizontal lines and two upright sides found), upright
   bands of ink running its whole height that, with the upright lines found between the
   sides, divide it into ROW_CELLS or more equal cells are its walls and go as lines do
   (strokes crossing them kept): two boxes a pixel apart make a wall as thick as a stroke.

A plain digit costs little: with no ink run long enough to be a line in any band of rows or
columns, the Hough transform is never run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from digitd.components import label

__all__ = ["Line", "Ruling", "remove_ruling"]

LONG = 0.4  # a candidate line is at least this share of the image's side long...
MIN_LENGTH = 20  # ...and this many pixels (shorter straight runs are a small digit's)
MIN_SIDE = 32  # smaller images (MNIST's 28x28) hold no ruling, and cost nothing
THIN = 0.09  # ...and at most this share of its own length thick
SPAN = 0.85  # a line this share of the side long spans the image (edge to edge)
THIN_ACROSS = 0.06  # a spanning line may be this share of the image's other side thick
BOLD_ACROSS = 0.1  # ...or this share if it is a neighbouring box's edge (_is_ruling)
BOLD_COVER = 0.85  # ...and nearly all of its extent is its own (a steady printed line)
EDGE_BAND = 0.2  # a neighbouring box's edge lies within this share of the image's side
THINNER = 0.7  # ruling clearly thinner than the strokes: at most this share of their width
SKEW_DEG = 2.5  # how far off horizontal/vertical a printed line may run
STEP_DEG = 0.25
MAX_TRIES = 40  # Hough lines looked at per direction (a grid has a dozen, a stroke many)
COVER = 0.5  # a line's own runs (no stroke across) cover at least this share of its extent...
GRID_COVER = 0.3  # ...or this share where a grid of such lines says that one must be
MARK = 0.15  # a handwritten mark spans at least this share of the image's shorter side
COMB_TICKS = 4  # upright stubs alike in height and evenly spaced, at least this many: a comb
TWO_CELL_TICKS = 3  # ...or this many around two digits (a comb of two cells), if they are
TICK_THINNER = 0.8  # ...thinner than this share of the handwriting's strokes
ROW_CELLS = 3  # a row of at least this many equal boxes: its walls are ruling (_walls)


@dataclass(frozen=True)
class Line:
    """A straight printed line: `vertical` or not; its centre runs through (`start`, `offset`)
    with `slope` pixels across per pixel along; it covers `start`..`stop` along its axis."""

    vertical: bool
    offset: float  # across-coordinate of the centre at along-coordinate 0
    slope: float
    start: int
    stop: int
    thickness: float


@dataclass(frozen=True)
class Ruling:
    ink: np.ndarray  # the ink map without the ruling (the input itself when none was found)
    mask: np.ndarray | None  # uint8 0/255: the pixels removed; None when nothing was
    lines: tuple[Line, ...] = ()
    empty: bool = False  # ruling found and nothing handwritten left: an empty form field


@dataclass
class _Candidate:
    line: Line
    covered: int  # positions with the line's own thickness
    bold: bool = False  # spans the image but is too thick for that alone (see _is_ruling)


def remove_ruling(ink: np.ndarray, level: int | None = None,
                  faint: int | None = None) -> Ruling:
    """The ink map without its printed ruling (see the module's docstring). Lines are traced
    down to `faint` (default: half of `level`), so that pale ruling near `level` is found whole;
    `empty` is judged on the pixels above `level`."""
    if ink.ndim != 2 or ink.dtype != np.uint8:
        raise ValueError(f"an ink map is 2-D uint8, not {ink.dtype} {ink.shape}")
    if max(ink.shape) < MIN_SIDE:
        return Ruling(ink, None)
    if level is None:
        level = int(cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0])
    faint = max(1, level // 2) if faint is None else min(faint, level)
    # The work map: the ink above `faint`, 0 elsewhere; lines found are cleared from it.
    work = cv2.threshold(ink, faint, 255, cv2.THRESH_TOZERO)[1]
    h, w = work.shape
    if min(h, w) < 8 or not (_may_hold_line(work) or _may_hold_line(work.T)):
        return Ruling(ink, None)

    # Candidates in both directions, the vertical ones on what the horizontal ones leave.
    horiz = _candidates(work)
    work_t = np.ascontiguousarray(work.T)
    vert = [_transposed(c) for c in _candidates(work_t, _pitch([c.line for c in horiz]))]
    if not horiz and not vert:
        return Ruling(ink, None)

    stroke = _stroke_width(cv2.compare(work_t.T, level, cv2.CMP_GT))
    ruling = [c for c in horiz + vert if _is_ruling(c, horiz + vert, stroke, (h, w))]
    accepted = [c.line for c in ruling]
    if not accepted:
        return Ruling(ink, None)

    # The removal itself, horizontal lines first, vertical ones profiled again afterwards.
    work = cv2.threshold(ink, faint, 255, cv2.THRESH_TOZERO)[1]
    removed = np.zeros_like(work)
    for line in sorted(accepted, key=lambda line: line.vertical):
        removed |= _erase(work, line)
    kept = cv2.compare(work, level, cv2.CMP_GT)
    printed = [c.line for c in ruling if not c.bold]  # what walls and stubs are measured by
    walls = _walls(kept, printed)
    if walls:
        for line in walls:
            removed |= _erase(work, line)
        kept = cv2.compare(work, level, cv2.CMP_GT)
        accepted += walls
    stubs = _stubs(kept, removed, printed, stroke)
    if stubs is not None:
        removed |= stubs
    out = cv2.bitwise_and(ink, cv2.bitwise_not(removed))
    return Ruling(out, removed, tuple(accepted),
                  empty=not _has_mark(cv2.compare(out, level, cv2.CMP_GT)))


# --------------------------------------------------------------------------------------------
# Finding candidates


def _long(side: int) -> float:
    """The shortest line worth the name across a side this long."""
    return max(LONG * side, MIN_LENGTH)


def _may_hold_line(work: np.ndarray) -> bool:
    """Cheap test: does some band of rows hold ink over LONG of the width? (A band a few rows
    high, so that a thin line skewed by up to SKEW_DEG still fills it.)"""
    w = work.shape[1]
    band = math.ceil(w * math.tan(math.radians(SKEW_DEG)) / 2)
    hit = work if band <= 1 else cv2.dilate(work, np.ones((band, 1), np.uint8))
    return int(np.count_nonzero(hit, axis=1).max()) >= _long(w)


def _candidates(work: np.ndarray, spacing: float | None = None) -> list[_Candidate]:
    """Line-like horizontal lines in the work map, each cleared from it (crossing strokes
    kept) once found, so that a line is not found twice nor a line at a wrong angle through
    it."""
    h, w = work.shape
    votes = int(_long(w) * 0.8)
    step = math.radians(STEP_DEG)
    k = round(SKEW_DEG / STEP_DEG)
    found = cv2.HoughLines(work, 1, step, votes, min_theta=math.pi / 2 - k * step,
                           max_theta=math.pi / 2 + k * step + step / 2)
    if found is None:
        return []
    out: list[_Candidate] = []
    seen: list[tuple[float, float, float]] = []  # (y at x=0, y at x=w-1, half-width)
    for rho, theta in found[:MAX_TRIES, 0, :2]:  # the best-voted first
        # rho = x cos(theta) + y sin(theta): y = rho / sin - x cot
        offset, slope = rho / math.sin(theta), -1 / math.tan(theta)
        y0, y1 = offset, offset + slope * (w - 1)
        if any(abs(y0 - a) <= r and abs(y1 - b) <= r for a, b, r in seen):
            continue
        c, t = _measure(work, Line(False, offset, slope, 0, w - 1, 0.0))
        seen.append((y0, y1, t / 2 + 2))
        if c is not None:
            out.append(c)
            _erase(work, c.line)
    for line in _grid_gaps([c.line for c in out], spacing, h):
        c, _ = _measure(work, line, cover=GRID_COVER)
        alike = c is not None and abs(c.line.thickness - line.thickness) <= max(
            1.0, 0.35 * line.thickness)
        if alike:
            out.append(c)
            _erase(work, c.line)
    return out


def _pitch(lines: list[Line]) -> float | None:
    """The spacing of three or more parallel lines, if they form a regular grid."""
    if len(lines) < 3:
        return None
    gaps = np.diff(sorted(line.offset for line in lines))
    pitch = float(gaps.min())
    return pitch if pitch >= 8 and _on_pitch(gaps, pitch) else None


def _on_pitch(gaps: np.ndarray, pitch: float) -> bool:
    """Is every gap between neighbouring lines a whole number of pitches (within 2 px + 5%)?"""
    return not np.any(np.abs(gaps / pitch - np.rint(gaps / pitch)) * pitch > 2 + 0.05 * gaps)


def _grid_gaps(lines: list[Line], spacing: float | None, side: int) -> list[Line]:
    """Where a regular grid of parallel lines (squared or ruled paper) misses one: the lines a
    digit's stroke runs along for much of their length, too covered to pass as lines on their
    own. `spacing`: the grid's pitch if known (from the other direction of squared paper)."""
    pitch = spacing if spacing is not None else _pitch(lines)
    if not lines or pitch is None:  # a box's sides are no grid
        return []
    lines = sorted(lines, key=lambda line: line.offset)
    offsets = [line.offset for line in lines]
    gaps = np.diff(offsets)
    if np.ptp([line.thickness for line in lines]) > max(1.0, 0.5 * min(
            line.thickness for line in lines)):
        return []  # lines of different kinds
    if not _on_pitch(gaps, pitch):
        return []  # lines off the other direction's pitch
    slope = float(np.median([line.slope for line in lines]))
    t = float(np.median([line.thickness for line in lines]))
    wanted = []
    for a, gap in zip(offsets, gaps, strict=False):  # gaps inside the grid
        n = round(gap / pitch)
        wanted += [a + gap * j / n for j in range(1, n)]
    before, after = offsets[0] - pitch, offsets[-1] + pitch  # and beyond its outer lines
    while before >= 2:
        wanted.append(before)
        before -= pitch
    while after <= side - 3:
        wanted.append(after)
        after += pitch
    return [Line(False, o, slope, 0, 0, t) for o in wanted]


def _profile(work: np.ndarray, line: Line):
    """Runs of ink across a horizontal `line` at every x: (centre row, run above, run below,
    thickness, ink at the centre, hits the strip's edge), each an array over x. A run is the
    ink above half the strength found at the line's centre in that column: the full width at
    half maximum, so that pale and dark lines measure alike and two lines a pixel apart do
    not merge into one thick one."""
    h, w = work.shape
    reach = max(5, math.ceil(0.05 * h) + 2)
    n, mid = 2 * reach + 1, reach
    xs = np.arange(w)
    centre = np.rint(line.offset + line.slope * xs).astype(np.int64)
    # Rows off the map read as paper: gather from a padded copy through flat indices (one
    # `take`, no clipping and masking). The centre runs straight: its ends are its extremes.
    lo, hi = sorted((int(centre[0]), int(centre[-1])))
    top = reach + max(0, -lo)
    bottom = reach + max(0, hi - (h - 1))
    padded = np.zeros((h + top + bottom, w), work.dtype)
    padded[top : top + h] = work
    values = padded.ravel().take((centre + (top - reach)) * w + xs + (np.arange(n) * w)[:, None])
    # The centre snapped to the strongest ink within a pixel (the fit is to a pixel).
    near = values[mid - 1 : mid + 2]
    at = np.argmax(near, axis=0)  # 0, 1, 2: rows mid - 1, mid, mid + 1
    peak = near.max(axis=0)
    has = peak > 0
    # Pad with a row of paper at both ends: every run ends (strip row r + 1 is row r).
    strip = np.zeros((n + 2, w), bool)
    np.greater(values, (peak // 2)[None, :], out=strip[1:-1])
    # The run through `at`: the run through row mid with mid counted as ink, cut back to
    # `at`'s side where mid is not ink (`at`, the strongest of the three rows, then lies
    # beside mid; where mid is ink, `at` is in mid's run): one scan up and one down from a
    # fixed row, instead of gathering each column's rows around its own `at`.
    gap = ~strip[mid + 1]
    strip[mid + 1] = True
    first = mid + 1 - np.argmin(strip[mid + 1 :: -1], axis=0)
    last = mid - 1 + np.argmin(strip[mid + 1 :], axis=0)
    at += mid - 1
    first = np.where(gap & (at > mid), mid + 1, first)
    last = np.where(gap & (at < mid), mid - 1, last)
    above = np.where(has, at - first, 0)
    below = np.where(has, last - at, 0)
    thick = np.where(has, above + below + 1, 0)
    edge = has & ((first <= 0) | (last >= n - 1))
    return centre + np.where(has, at - mid, 0), above, below, thick, has, edge


def _measure(work: np.ndarray, line: Line,
             cover: float = COVER) -> tuple[_Candidate | None, float]:
    """The candidate's thickness and extent, or None when it is not line-like (its own runs
    cover less than `cover` of its extent, ...); and the thickness measured along it."""
    h, w = work.shape
    centre, above, below, thick, has, edge = _profile(work, line)
    clean = has & ~edge
    if np.count_nonzero(clean) < _long(w) * 0.5:
        return None, 1.0
    low = _percentile(thick[clean], 30)  # the line's own runs: crossings add to it
    own = clean & (thick <= low + max(1.0, 0.5 * low))
    idx = np.flatnonzero(own)
    if len(idx) < 2:
        return None, low
    t = _percentile(thick[own], 50)
    start, stop = int(idx[0]), int(idx[-1])
    length = stop - start + 1
    spans = length >= SPAN * w
    thin = t <= max(THIN * length, 3) or (spans and t <= THIN_ACROSS * h)
    bold = not thin and spans and t <= BOLD_ACROSS * h and len(idx) >= BOLD_COVER * length
    if (length < _long(w) or not (thin or bold) or len(idx) < cover * length
            or np.count_nonzero(has[start : stop + 1]) < 0.7 * length):
        return None, t
    # Fit the centre to the line's own runs (Hough's line is to a pixel and a quarter degree).
    mids = (centre + (below - above) / 2)[own]
    slope, offset = np.polyfit(idx, mids, 1)
    good = np.abs(mids - (offset + slope * idx)) <= 1.0
    if np.count_nonzero(good) >= 2:
        slope, offset = np.polyfit(idx[good], mids[good], 1)
    # Not a printed line when the fit leaves the angles a crooked scan gives, or the angle
    # Hough found within the line's thickness (a stroke running on along the line).
    if (abs(slope) > math.tan(math.radians(SKEW_DEG + 0.5))
            or abs(slope - line.slope) > math.radians(1.0) + (t + 2) / length):
        return None, t
    refined = Line(line.vertical, float(offset), float(slope), start, stop, t)
    return _Candidate(refined, len(idx), bold), t


def _percentile(values: np.ndarray, q: int) -> float:
    """np.percentile(values, q) (linear interpolation, the same float), from a partial sort:
    numpy's general quantile machinery cost more than the rest of _measure."""
    n = len(values)
    at = q / 100 * (n - 1)
    lo = math.floor(at)
    hi = min(lo + 1, n - 1)
    part = np.partition(values, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    gamma = at - lo
    return b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma


def _transposed(c: _Candidate) -> _Candidate:
    line = c.line
    return _Candidate(Line(True, line.offset, line.slope, line.start, line.stop,
                           line.thickness), c.covered, c.bold)


# --------------------------------------------------------------------------------------------
# Judging and removing


def _stroke_width(binary: np.ndarray) -> float | None:
    """The handwriting's typical stroke width: twice the area over the boundary of the marks
    left (a stroke w wide and L long has area wL and about 2L boundary pixels). None when no
    mark is left: the fringes of removed lines say nothing about strokes."""
    n, labels, stats = label(binary)
    side = MARK * min(binary.shape)
    marks = [i for i in range(1, n) if max(stats[i, 2], stats[i, 3]) >= side]
    if not marks:
        return None
    lut = np.zeros(n, np.uint8)
    lut[marks] = 255
    ink = lut.take(labels)
    area = cv2.countNonZero(ink)
    inner = cv2.countNonZero(cv2.erode(ink, None))
    return 2.0 * area / max(1, area - inner)


def _is_ruling(c: _Candidate, everyone: list[_Candidate], stroke: float | None,
               shape: tuple[int, int]) -> bool:
    line = c.line
    h, w = shape
    side = h if line.vertical else w
    length = line.stop - line.start + 1
    perpendicular = [o.line for o in everyone if o.line.vertical != line.vertical and not o.bold]
    if c.bold:  # as thick as a stroke: ruling only as the edge of a neighbouring box in a row
        across = line.offset + line.slope * (line.start + line.stop) / 2
        other = w if line.vertical else h
        return (min(across, other - 1 - across) < EDGE_BAND * other
                and sum(_crosses(line, o) for o in perpendicular) >= 2)
    if (line.vertical and length < SPAN * side and line.start > 2 and line.stop < side - 3
            and not any(_crosses(line, o) for o in perpendicular)):
        return False  # a lone upright stroke inside the image, touching no line: may be a 1
    if stroke is not None and line.thickness <= THINNER * stroke:
        return True
    if length >= SPAN * side:
        if not line.vertical or len(everyone) > 1 or stroke is not None:
            return True
        across = line.offset + line.slope * (line.start + line.stop) / 2
        return min(across, w - 1 - across) < 0.2 * w  # a box's edge, not a lone 1
    # A box's side: both ends on perpendicular lines, or a corner (an end on an end), or one
    # end on a line and the other cut by the image's edge if it is as thick as that line
    # (lines printed together are alike; a 1 on a line of the grid is thicker).
    ends = [_meets(line, o) for o in perpendicular]
    if (any(e[0] for e in ends) and any(e[1] for e in ends)) or any(
            (e[0] or e[1]) and e[2] for e in ends):
        return True
    alike = [e for e, o in zip(ends, perpendicular, strict=True)
             if abs(o.thickness - line.thickness) <= max(1.0, 0.35 * o.thickness)]
    return ((line.start <= 2 and any(e[1] for e in alike))
            or (line.stop >= side - 3 and any(e[0] for e in alike)))


def _meets(a: Line, b: Line) -> tuple[bool, bool, bool]:
    """Where perpendicular lines cross, within b's extent: is that at a's start, at a's stop,
    and at an end of b (a corner)?"""
    h_line, v_line = (a, b) if not a.vertical else (b, a)
    # Where they cross: y = oh + sh x and x = ov + sv y.
    y = (h_line.offset + h_line.slope * v_line.offset) / (1 - h_line.slope * v_line.slope)
    x = v_line.offset + v_line.slope * y
    tol = 3 + max(h_line.thickness, v_line.thickness)
    along_a, along_b = (x, y) if not a.vertical else (y, x)
    if not b.start - tol <= along_b <= b.stop + tol:
        return False, False, False
    corner = min(abs(along_b - b.start), abs(along_b - b.stop)) <= tol
    return abs(along_a - a.start) <= tol, abs(along_a - a.stop) <= tol, corner


def _crosses(a: Line, b: Line) -> bool:
    """Do perpendicular lines cross (or meet) within both their extents?"""
    h_line, v_line = (a, b) if not a.vertical else (b, a)
    y = (h_line.offset + h_line.slope * v_line.offset) / (1 - h_line.slope * v_line.slope)
    x = v_line.offset + v_line.slope * y
    tol = 3 + max(h_line.thickness, v_line.thickness)
    return (h_line.start - tol <= x <= h_line.stop + tol
            and v_line.start - tol <= y <= v_line.stop + tol)


def _erase(work: np.ndarray, line: Line) -> np.ndarray:
    """Clear `line` from the work map; return the pixels cleared (uint8 0/255). Only the
    runs across it that are the line's own are cleared: strokes crossing or touching it
    stay whole."""
    if line.vertical:
        flat = Line(False, line.offset, line.slope, line.start, line.stop, line.thickness)
        work_t = np.ascontiguousarray(work.T)
        mask = np.ascontiguousarray(_erase(work_t, flat).T)
        work &= cv2.bitwise_not(mask)
        return mask
    h, w = work.shape
    centre, above, below, _, has, _ = _profile(work, line)
    t = line.thickness
    # The run of ink across the line at each x, and the line's own band within it: where
    # the run goes on past the band by 2 px or more, a stroke is there and the run stays.
    top, bottom = centre - above, centre + below
    mid = line.offset + line.slope * np.arange(w)
    stroke = ((np.rint(mid - (t - 1) / 2) - top >= 2)
              | (bottom - np.rint(mid + (t - 1) / 2) >= 2))
    lo, hi = top - 1, bottom + 1  # and a pixel of fringe
    span = np.zeros(w, bool)
    span[max(0, line.start - 2) : line.stop + 3] = True
    go = span & has & ~stroke
    mask = np.zeros_like(work)
    reach = int(max(np.max(np.where(go, hi - lo, 0), initial=0), 0)) + 1
    for d in range(reach):
        rows = lo + d
        sel = go & (rows <= hi) & (rows >= 0) & (rows < h)
        mask[rows[sel], np.flatnonzero(sel)] = 255
    work &= cv2.bitwise_not(mask)
    return mask


def _stubs(kept: np.ndarray, removed: np.ndarray, lines: list[Line],
           stroke: float | None) -> np.ndarray | None:
    """Short straight pieces as thin as the ruling, standing on a removed line (a comb's
    ticks), unless as thick as the handwriting or as long as its longest part."""
    n, labels, stats = label(kept)
    if n <= 1:
        return None
    near = cv2.dilate(removed, np.ones((5, 5), np.uint8))
    touching = set(np.unique(labels[(near > 0) & (kept > 0)]).tolist()) - {0}
    t_h = max((line.thickness for line in lines if not line.vertical), default=0)
    t_v = max((line.thickness for line in lines if line.vertical), default=0)
    h, w = kept.shape
    stubs = []
    for i in touching:
        x, y, bw, bh, area = stats[i].tolist()
        long = max(bw, bh)
        thin = area / long  # not the box's width: a skewed tick's box is wider
        ruling_t = t_h if bh > bw else t_v  # a tick on a horizontal line is as thin as it
        if ruling_t == 0 or thin > ruling_t + 3 or long < 3 * thin:
            continue
        if min(bw, bh) > thin + 2 + 0.1 * long:  # not straight: a written stroke (a 7, a 4)
            continue
        if stroke is not None and thin > THINNER * stroke + 1 and thin > ruling_t + 1:
            continue
        stubs.append(i)
    if not stubs:
        return None
    others = [i for i in range(1, n) if i not in stubs]
    longest = max((max(stats[i, 2], stats[i, 3]) for i in others), default=0)
    marks = [i for i in others if max(stats[i, 2], stats[i, 3]) >= MARK * min(h, w)]
    if len(marks) > 1:  # several written marks (a number): a stub shorter than the digits
        # along its own axis (a 1 standing on an underline is as tall as the digits, whose
        # touching pairs or signs are wider; digits side by side: as tall as most of them),
        # or one of a comb's evenly spaced ticks, however tall
        tall = _usual_height(stats, marks)
        widest = max(stats[i, 2] for i in marks)
        comb = _comb(stats, [i for i in stubs if stats[i, 3] > stats[i, 2]  # upright...
                             and stats[i, 4] / stats[i, 3] <= t_h + 1],  # ...as thin as lines
                     marks, stroke)
        stubs = [i for i in stubs if i in comb or max(stats[i, 2], stats[i, 3])
                 < 0.8 * (tall if stats[i, 3] > stats[i, 2] else widest)]
    elif longest >= MARK * min(h, w):  # one mark: shorter than it is long (a box's ticks)
        stubs = [i for i in stubs if max(stats[i, 2], stats[i, 3]) < 0.8 * longest]
    else:  # nothing else written: ticks are short, a lone stroke (a 1 on a line) is not
        stubs = [i for i in stubs
                 if max(stats[i, 2], stats[i, 3]) <= 0.55 * (h if stats[i, 3] > stats[i, 2] else w)]
    if not stubs:
        return None
    lut = np.zeros(n, np.uint8)
    lut[stubs] = 255
    return lut.take(labels)


def _walls(kept: np.ndarray, lines: list[Line]) -> list[Line]:
    """The inner walls of a row of boxes that were not found as lines (two boxes a gap apart
    make a double wall as thick as a stroke; a short row's walls are shorter than a line):
    between the row's top and bottom lines and its two outer sides, upright bands of ink
    running the whole height of the row and dividing it into ROW_CELLS or more equal cells.
    All of them or none: a 1 touching both lines is off the cells' pitch, and then nothing
    goes."""
    horiz = sorted((line for line in lines if not line.vertical), key=lambda line: line.offset)
    sides = sorted((line for line in lines if line.vertical), key=lambda line: line.offset)
    if len(horiz) < 2 or len(sides) < 2:
        return []
    top, bottom, left, right = horiz[0], horiz[-1], sides[0], sides[-1]
    if not all(_crosses(v, o) for v in (left, right) for o in (top, bottom)):
        return []
    h, w = kept.shape
    xs = np.arange(w)
    y0 = top.offset + top.slope * xs + top.thickness / 2 + 2  # the row's inside, per column
    y1 = bottom.offset + bottom.slope * xs - bottom.thickness / 2 - 2
    height = float(np.median(y1 - y0))
    if height < MIN_LENGTH / 2:
        return []
    band = (np.arange(h)[:, None] >= y0) & (np.arange(h)[:, None] <= y1)
    ink = cv2.dilate(kept, np.ones((1, 3), np.uint8)) > 0  # a wall skewed by a pixel
    full = np.count_nonzero(ink & band, axis=0) >= 0.95 * np.maximum(
        np.count_nonzero(band, axis=0), 1)
    mid_y = float(np.median(y0 + y1) / 2)
    x_left = left.offset + left.slope * mid_y
    x_right = right.offset + right.slope * mid_y
    t_side = max(left.thickness, right.thickness)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], full.view(np.int8), [0]))))
    runs = [((a + b - 1) / 2, b - a - 2) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    inner = [(c, width) for c, width in runs if x_left + t_side + 2 < c < x_right - t_side - 2]
    if not inner or any(width > 2 * t_side + 3 for _, width in inner):
        return []
    # Every wall, found as a line or not; a double wall (two boxes a gap apart) is one.
    found = [v.offset + v.slope * mid_y for v in sides[1:-1]]
    at = sorted([c for c, _ in inner] + found)
    walls = [[at[0]]]
    for x in at[1:]:
        if x - walls[-1][-1] <= max(2 * t_side + 4, 0.2 * height):
            walls[-1].append(x)
        else:
            walls.append([x])
    n = len(walls) + 1
    pitch = (x_right - x_left) / n
    expected = x_left + pitch * np.arange(1, n)
    if (n < ROW_CELLS or pitch < 0.4 * height
            or np.any(np.abs([np.mean(x) for x in walls] - expected) > 2 + 0.15 * pitch)):
        return []
    slope = (left.slope + right.slope) / 2
    start, stop = int(math.floor(y0.min())) - 2, int(math.ceil(y1.max())) + 2
    return [Line(True, float(c - slope * mid_y), slope, start, stop, float(max(width, 1) + 1))
            for c, width in inner]


def _comb(stats: np.ndarray, upright: list[int], marks: list[int],
          stroke: float | None) -> set[int]:
    """Of the upright stubs, those alike in height (a speck or a short stroke aside), if
    there are at least COMB_TICKS of them and they are evenly spaced (every gap a whole
    number of pitches: a tick a digit stands on may be missing): a comb's ticks; else none.
    Handwritten 1s on an underline are rarely four and evenly spaced (three were, once in
    2,000 numbers on ruled paper: docs/BENCHMARKS.md, "Numbers written into form fields"),
    and a 1 among the ticks makes the gaps uneven: then none go, as before. TWO_CELL_TICKS
    (three) are a comb of two cells only when the two written marks stand one in each cell,
    none outside, and the ticks are thinner than the handwriting (TICK_THINNER of its
    strokes: a 1 is as thick as the other digits)."""
    if len(upright) < TWO_CELL_TICKS:
        return set()
    typical = float(np.median([stats[i, 3] for i in upright]))
    alike = [i for i in upright if abs(stats[i, 3] - typical) <= 0.2 * typical + 1]
    if len(alike) < TWO_CELL_TICKS:
        return set()
    centres = sorted(stats[i, 0] + stats[i, 2] / 2 for i in alike)
    gaps = np.diff(centres)
    pitch = float(np.median(gaps))
    if pitch < 0.5 * typical:  # ticks are further apart than a fraction of their height
        return set()
    steps = np.maximum(np.rint(gaps / pitch), 1)
    if not np.all(np.abs(gaps - steps * pitch) <= 0.1 * steps * pitch + 2):
        return set()
    if len(alike) >= COMB_TICKS:
        return set(alike)
    if (stroke is None or len(marks) != 2 or np.any(steps != 1)
            or any(stats[i, 4] / stats[i, 3] > TICK_THINNER * stroke for i in alike)):
        return set()
    at = sorted(stats[i, 0] + stats[i, 2] / 2 for i in marks)
    one_in_each = centres[0] < at[0] < centres[1] < at[1] < centres[2]
    return set(alike) if one_in_each else set()


def _usual_height(stats: np.ndarray, marks: list[int]) -> float:
    """The marks' tallest height or, where three or more of them stand side by side (digits
    of a number, not one digit's broken strokes), the median of those at least half as
    tall: a number's digits differ in height, and a 1 as tall as its 7s is no tick beside a
    taller 8."""
    tallest = float(max(stats[i, 3] for i in marks))
    digits = sorted((i for i in marks if stats[i, 3] >= 0.5 * tallest),
                    key=lambda i: stats[i, 0])
    gaps = sum(stats[i, 0] + stats[i, 2] <= stats[j, 0]
               for i, j in zip(digits, digits[1:], strict=False))
    if gaps < 2:  # one digit's pieces, or two marks: the tallest, as before
        return tallest
    return float(np.median([stats[i, 3] for i in digits]))


def _has_mark(binary: np.ndarray) -> bool:
    """Is anything left the size of a handwritten mark?"""
    n, _, stats = label(binary)
    if n <= 1:
        return False
    side = MARK * min(binary.shape)
    return bool(np.any(np.maximum(stats[1:, 2], stats[1:, 3]) >= side))
