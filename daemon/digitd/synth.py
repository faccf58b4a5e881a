"""Synthetic numbers: handwritten digits (28x28 MNIST arrays) written along a line, as ink.

The one home of the string synthesis: `digitd train --arch numbers` (digitd.train_numbers)
composes its training strings from MNIST *training* digits with it, bench/number_scans.py its
test numbers from MNIST *test* digits (and puts them on paper with bench/scans.py's flavours).

Pure functions of their arguments and a numpy Generator (seeded: the same draws give the same
ink). An ink map is float32, 1 = full ink, 0 = paper.

    ink_from_mnist(digit28, height)             one digit enlarged, pen-like edges
    number_ink(digits, rng, decorations)        a line of digits with unlabelled decoration
    pick_decorations(rng, n)                    which decoration a number carries
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

DECORATIONS = ("thousands", "dash", "equals", "underline", "currency", "stray")
HEIGHTS = (28, 140)  # the digits' height in pixels, drawn log-uniform


def ink_from_mnist(digit28: np.ndarray, height: int) -> np.ndarray:
    """Enlarge an MNIST digit so that its ink is `height` px tall, with pen-like edges."""
    rows = np.flatnonzero(digit28.max(1))
    cols = np.flatnonzero(digit28.max(0))
    crop = digit28[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255
    crop = np.pad(crop, 1)
    scale = height / (rows[-1] - rows[0] + 1)
    size = (max(2, round(crop.shape[1] * scale)), max(2, round(crop.shape[0] * scale)))
    big = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
    return np.clip((big - 0.25) / 0.35, 0, 1)  # sharper edges than a plain enlargement


def rotate(ink: np.ndarray, degrees: float) -> np.ndarray:
    """The ink turned by `degrees` (counter-clockwise), on a canvas that holds all of it."""
    h, w = ink.shape
    rad = math.radians(abs(degrees))
    nw = int(math.ceil(w * math.cos(rad) + h * math.sin(rad))) + 2
    nh = int(math.ceil(h * math.cos(rad) + w * math.sin(rad))) + 2
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    return cv2.warpAffine(ink, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)


def _stroke_ink(shape: tuple[int, int], points, thickness: int) -> np.ndarray:
    ink = np.zeros(shape, np.uint8)
    pts = np.round(np.asarray(points, np.float32) * 16).astype(np.int32)
    cv2.polylines(ink, [pts.reshape(-1, 1, 2)], False, 255, thickness, cv2.LINE_AA, shift=4)
    return ink.astype(np.float32) / 255


def _paste(canvas: np.ndarray, ink: np.ndarray, x: int, y: int) -> None:
    """Ink over ink: the darker wins (np.maximum), clipped to the canvas."""
    h, w = ink.shape
    ch, cw = canvas.shape
    x0, y0, x1, y1 = max(0, x), max(0, y), min(cw, x + w), min(ch, y + h)
    if x1 > x0 and y1 > y0:
        region = canvas[y0:y1, x0:x1]
        np.maximum(region, ink[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def _glyph(text: str, height: int, thickness: int) -> np.ndarray:
    """A sign drawn with OpenCV's outline font, cropped, its ink `height` px tall."""
    size = int(height * 1.45)
    canvas = np.zeros((size * 2, size * 2), np.uint8)
    cv2.putText(canvas, text, (size // 2, size * 3 // 2), 255, cv2.FontFace("sans"), size,
                100 * max(3, min(6, thickness)))
    rows, cols = np.flatnonzero(canvas.max(1)), np.flatnonzero(canvas.max(0))
    glyph = canvas[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255
    scale = height / glyph.shape[0]
    return cv2.resize(glyph, (max(1, round(glyph.shape[1] * scale)), height),
                      interpolation=cv2.INTER_AREA)


def number_ink(digits: list[np.ndarray], rng: np.random.Generator,
               decorations: tuple[str, ...] = (), heights: tuple[int, int] = HEIGHTS
               ) -> np.ndarray:
    """The digits (28x28 MNIST arrays) written along a line, with the decorations, as an ink
    map (float32, 1 = full ink). The digits' height is drawn log-uniform from `heights`;
    each digit's size varies by +-10% and its baseline by up to 8% of the height, the gap
    between neighbours ranges from overlapping (-20% of the height) to wide (70%), and the
    whole line is slanted by up to +-4 degrees."""
    height = int(round(math.exp(rng.uniform(math.log(heights[0]), math.log(heights[1])))))
    pen = max(1, round(height * 0.11))
    inks = [ink_from_mnist(d, max(8, round(height * rng.uniform(0.9, 1.1))))
            for d in digits]
    n = len(inks)
    groups = "thousands" in decorations and n >= 4
    margin = 2 * height
    width = sum(i.shape[1] for i in inks) + int(height * 0.9 * n) + 2 * margin
    canvas = np.zeros((3 * height + 2 * margin, width), np.float32)
    base = margin + 2 * height  # the baseline's row
    x = margin
    if "currency" in decorations:
        sign = _glyph(str(rng.choice(["$", "\u20ac", "\u00a3"])), round(height * 1.05), pen)
        _paste(canvas, sign, x, base - sign.shape[0])
        x += sign.shape[1] + int(height * rng.uniform(0.1, 0.4))
    lefts, rights = [], []
    for k, ink in enumerate(inks):
        h, w = ink.shape
        y = base - h + int(round(rng.uniform(-0.08, 0.08) * height))
        _paste(canvas, ink, x, y)
        lefts.append(x)
        rights.append(x + w)
        gap = rng.uniform(-0.2, 0.7) * height
        if groups and (n - 1 - k) % 3 == 0 and k < n - 1:
            # a separator between groups of three: a dot or a comma on the baseline
            gap = max(gap, 0.15 * height)
            sx = x + w + int(gap * 0.5)
            r = max(1, round(pen * rng.uniform(0.6, 1.0)))
            if rng.random() < 0.5:
                dot = np.zeros((4 * r + 2, 4 * r + 2), np.uint8)
                cv2.circle(dot, (2 * r + 1, 2 * r + 1), r, 255, -1, cv2.LINE_AA)
                _paste(canvas, dot.astype(np.float32) / 255, sx - 2 * r, base - 3 * r)
            else:
                tail = height * 0.22
                comma = _stroke_ink(canvas.shape, [(sx, base - pen), (sx, base + tail * 0.4),
                                                   (sx - tail * 0.4, base + tail)], pen)
                np.maximum(canvas, comma, out=canvas)
            gap += pen * 2
        x += w + int(round(gap))
    x = max(x, rights[-1] + int(height * 0.15))
    if "dash" in decorations or "equals" in decorations:
        length = height * rng.uniform(0.35, 0.7)
        mid = base - height * rng.uniform(0.35, 0.55)
        rows = [mid] if "dash" in decorations else [mid - height * 0.14, mid + height * 0.14]
        for r in rows:
            line = _stroke_ink(canvas.shape, [(x, r), (x + length, r + rng.uniform(-2, 2))],
                               pen)
            np.maximum(canvas, line, out=canvas)
        x += int(length)
    if "underline" in decorations:
        y = base + height * rng.uniform(0.06, 0.25)
        x0 = lefts[0] - height * rng.uniform(0, 0.3)
        x1 = max(rights[-1], x) + height * rng.uniform(0, 0.3)
        line = _stroke_ink(canvas.shape, [(x0, y), (x1, y + rng.uniform(-0.05, 0.05) * height)],
                           pen)
        np.maximum(canvas, line, out=canvas)
    if "stray" in decorations:
        # a short thin stroke somewhere near the number (the pen slipping, a tick)
        length = height * rng.uniform(0.1, 0.25)
        sx = rng.uniform(lefts[0], max(rights[-1], x))
        sy = base + rng.choice([-1.35, 0.35]) * height
        angle = rng.uniform(0, math.pi)
        stroke = _stroke_ink(canvas.shape, [(sx, sy), (sx + length * math.cos(angle),
                                                       sy + length * math.sin(angle))],
                             max(1, pen // 2))
        np.maximum(canvas, stroke, out=canvas)
    rows, cols = np.flatnonzero(canvas.max(1) > 0.05), np.flatnonzero(canvas.max(0) > 0.05)
    ink = canvas[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return rotate(ink, rng.uniform(-4, 4))


@dataclass(frozen=True)
class DecorationRates:
    """How often a number carries each decoration: thousands separators (numbers of 4+ digits
    only), a trailing dash or else equals sign, an underline, a currency sign, a stray stroke."""

    thousands: float = 0.3
    dash: float = 0.08
    equals: float = 0.06
    underline: float = 0.15
    currency: float = 0.08
    stray: float = 0.08


def pick_decorations(rng: np.random.Generator, n: int,
                     rates: DecorationRates = DecorationRates()) -> tuple[str, ...]:
    """Which decorations a number of n digits carries; by default about half of the numbers
    carry some, some several."""
    chosen = []
    if n >= 4 and rng.random() < rates.thousands:
        chosen.append("thousands")
    end = rng.random()
    if end < rates.dash:
        chosen.append("dash")
    elif end < rates.dash + rates.equals:
        chosen.append("equals")
    for name in ("underline", "currency", "stray"):
        if rng.random() < getattr(rates, name):
            chosen.append(name)
    return tuple(chosen)
