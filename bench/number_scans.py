"""Realistic numbers (several handwritten digits in one PNG) made of MNIST *test* digits.

Seeded and deterministic: `render_number(x, y, index, seed)` always gives the same bytes.

Each number holds 2-8 digits drawn from the MNIST test set, written along a line by
digitd.synth (the one home of the string synthesis, which `digitd train --arch numbers`
uses with MNIST *training* digits): 28-140 px tall (log-uniform), the gap between neighbours
from overlapping (-20% of the height: strokes cross) to wide (70%), each digit's size varying
by +-10% and its baseline jittering by up to 8% of the height, the whole line slanted by up
to +-4 degrees. Decoration that is not a digit is added as people write it: thousands
separators (a dot or a comma between groups of three), a trailing dash or equals sign, an
underline, a currency sign before the number, and a stray stroke. The line is then put on
paper by bench/scans.py's flavours (noisy paper under uneven light, blue ink, a phone photo
with JPEG artefacts, transparent exports, white on black...).

`render_number_form` writes a number into a printed form field instead (`FORM_FLAVOURS`:
a box around the field, a row of boxes or a comb with one digit per cell, a printed line to
write on, ruled paper), the ruling drawn and scanned by bench/scans.py's form fields (issue
10).

Used by bench/number_accuracy.py and tests/.
"""

from __future__ import annotations

import math

import numpy as np

import scans
from digitd.synth import DECORATIONS, ink_from_mnist, number_ink, pick_decorations, rotate

FLAVOURS = (
    "paper_grey", "blue_ink", "photo_jpeg", "rgba_transparent", "grey16", "palette",
    "interlaced", "white_on_black", "specks_border", "la_transparent",
)  # fmt: skip
FORM_FLAVOURS = (
    "form_box",  # a printed box around the whole field
    "form_cells",  # a row of boxes, one digit in each (a date, a ZIP code, an account number)
    "form_comb",  # a comb: a baseline and ticks between the cells, open at the top
    "form_underline",  # a printed line to write on, at, below or through the digits' feet
    "form_ruled",  # ruled paper, the number sitting on one of its lines
)
__all__ = ["DECORATIONS", "FLAVOURS", "FORM_FLAVOURS", "render_number", "render_number_form"]


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 13, index])


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


def render_number_form(images: np.ndarray, labels: np.ndarray, index: int, seed: int = 0,
                       flavour: str | None = None) -> tuple[bytes, str, dict]:
    """Number `index`: 2-8 digits drawn as render_number draws them, written into a printed
    form field of `flavour` (default: FORM_FLAVOURS in turn) and scanned: (PNG bytes, the
    digits, details). The digits 28-140 px tall. In a box, on a line or on ruled paper the
    number is written as render_number writes it (no decoration) and put into the field as
    bench/scans.py puts a single digit (scans.in_form_field: its geometry, ruling and colours);
    in cells one digit to a cell, each somewhere in its cell and one in five crossing its
    bottom or side, the ruling 1-5% of the digits' height thick. Scanned as scans' fields."""
    rng = np.random.default_rng([seed, 29, index])
    n = int(rng.integers(2, 9))
    picks = rng.integers(0, len(images), n)
    flavour = flavour or FORM_FLAVOURS[index % len(FORM_FLAVOURS)]
    height = int(round(math.exp(rng.uniform(math.log(28), math.log(140)))))
    if flavour in ("form_cells", "form_comb"):
        thickness = max(1.0, height * rng.uniform(0.01, 0.05))
        canvas, segs = _in_cells([images[i] for i in picks], height, flavour, rng)
        field = (canvas, *scans.printed_ruling(canvas.shape, segs, thickness, flavour, rng))
    else:
        ink = number_ink([images[i] for i in picks], rng, (), heights=(height, height + 1))
        field = scans.in_form_field(ink, flavour, rng)
    text = "".join(str(int(labels[i])) for i in picks)
    return scans.scan_form(*field, rng), text, {"flavour": flavour, "decorations": [],
                                                "picks": [int(i) for i in picks]}


def _in_cells(digits: list[np.ndarray], height: int, flavour: str, rng: np.random.Generator):
    """Each digit in a cell of its own, a row of boxes (form_cells) or a comb (form_comb):
    (canvas, the ruling's segments)."""
    inks = [rotate(ink_from_mnist(d, max(8, round(height * rng.uniform(0.9, 1.1)))),
                   rng.uniform(-6, 6)) for d in digits]
    bh = max(i.shape[0] for i in inks) * rng.uniform(1.1, 1.5)
    bw = max(max(i.shape[1] for i in inks) * rng.uniform(1.1, 1.4), bh * rng.uniform(0.6, 1.0))
    gap = 0.0 if flavour == "form_comb" or rng.random() < 0.5 else rng.uniform(0.05, 0.3) * bw
    outer = rng.uniform(0.05, 0.4) * bh
    n = len(inks)
    ch = int(bh + 2 * outer) + 1
    cw = int(n * bw + (n - 1) * gap + 2 * outer) + 1
    canvas = np.zeros((ch, cw), np.float32)
    segs: list[tuple[float, float, float, float]] = []
    if flavour == "form_comb":
        tooth = rng.uniform(0.2, 0.5) * bh
        segs.append((-cw, outer + bh, 2 * cw, outer + bh))
    for k, ink in enumerate(inks):
        bx = outer + k * (bw + gap)
        if flavour == "form_comb":
            segs.append((bx, outer + bh - tooth, bx, outer + bh))
            if k == n - 1:
                segs.append((bx + bw, outer + bh - tooth, bx + bw, outer + bh))
        else:
            segs += scans.rect(bx, outer, bw, bh)
        dh, dw = ink.shape
        x = bx + (bw - dw) / 2 + rng.uniform(-0.4, 0.4) * max(0.0, bw - dw)
        y = outer + (bh - dh) / 2 + rng.uniform(-0.4, 0.4) * max(0.0, bh - dh)
        if rng.random() < 0.2:  # the pen crosses the cell's bottom or its right side
            if rng.random() < 0.6:
                y = outer + bh - dh + rng.uniform(0.02, 0.15) * dh
            else:
                x = bx + bw - dw + rng.uniform(0.02, 0.12) * dw
        y, x = min(max(int(y), 0), ch - dh), min(max(int(x), 0), cw - dw)
        np.maximum(canvas[y : y + dh, x : x + dw], ink, out=canvas[y : y + dh, x : x + dw])
    return canvas, segs
