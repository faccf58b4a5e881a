"""Realistic numbers (several handwritten digits in one PNG) made of MNIST *test* digits.

Seeded and deterministic: `render_number(x, y, index, seed)` always gives the same bytes.

Each number holds 2-8 digits drawn from the MNIST test set, 28-140 px tall (log-uniform),
written along a line: the gap between neighbours ranges from overlapping (-20% of the
height: strokes cross) to wide (70%), each digit's size varies by +-10% and its baseline
jitters by up to 8% of the height, the whole line is slanted by up to +-4 degrees. Decoration
that is not a digit is added as people write it: thousands separators (a dot or a comma
between groups of three), a trailing dash or equals sign, an underline, a currency sign
before the number, and a stray stroke. The line is then put on paper by bench/scans.py's
flavours (noisy paper under uneven light, blue ink, a phone photo with JPEG artefacts,
transparent exports, white on black...).

Used by bench/number_accuracy.py and tests/.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

import scans

FLAVOURS = (
    "paper_grey", "blue_ink", "photo_jpeg", "rgba_transparent", "grey16", "palette",
    "interlaced", "white_on_black", "specks_border", "la_transparent",
)  # fmt: skip
DECORATIONS = ("thousands", "dash", "equals", "underline", "currency", "stray")


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 13, index])


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
               decorations: tuple[str, ...] = ()) -> np.ndarray:
    """The digits (28x28 MNIST arrays) written along a line, with the decorations, as an ink
    map (float32, 1 = full ink)."""
    height = int(round(math.exp(rng.uniform(math.log(28), math.log(140)))))
    pen = max(1, round(height * 0.11))
    inks = [scans._ink_from_mnist(d, max(8, round(height * rng.uniform(0.9, 1.1))))
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
    return scans._rotate(ink, rng.uniform(-4, 4))


def pick_decorations(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    """About half of the numbers carry some decoration, some several."""
    chosen = []
    if n >= 4 and rng.random() < 0.3:
        chosen.append("thousands")
    end = rng.random()
    if end < 0.08:
        chosen.append("dash")
    elif end < 0.14:
        chosen.append("equals")
    if rng.random() < 0.15:
        chosen.append("underline")
    if rng.random() < 0.08:
        chosen.append("currency")
    if rng.random() < 0.08:
        chosen.append("stray")
    return tuple(chosen)


def render_number(images: np.ndarray, labels: np.ndarray, index: int, seed: int = 0,
                  flavour: str | None = None,
                  decorations: tuple[str, ...] | None = None) -> tuple[bytes, str, dict]:
    """Number `index`: 2-8 MNIST digits picked from (images, labels) by a seeded draw, as a
    PNG. Returns (bytes, the digits as a string, details: flavour, decorations, picks)."""
    rng = _rng(seed, index)
    n = int(rng.integers(2, 9))
    picks = rng.integers(0, len(images), n)
    decorations = pick_decorations(rng, n) if decorations is None else decorations
    ink = number_ink([images[i] for i in picks], rng, decorations)
    flavour = flavour or FLAVOURS[index % len(FLAVOURS)]
    h, w = ink.shape
    size = (int(h * rng.uniform(1.3, 2.5)) + 8, int(w * rng.uniform(1.05, 1.4)) + 8)
    data = scans.render_ink(ink, flavour, rng, canvas_size=size)
    text = "".join(str(int(labels[i])) for i in picks)
    return data, text, {"flavour": flavour, "decorations": list(decorations),
                        "picks": [int(i) for i in picks]}
