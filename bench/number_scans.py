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

Used by bench/number_accuracy.py and tests/.
"""

from __future__ import annotations

import numpy as np

import scans
from digitd.synth import DECORATIONS, number_ink, pick_decorations

FLAVOURS = (
    "paper_grey", "blue_ink", "photo_jpeg", "rgba_transparent", "grey16", "palette",
    "interlaced", "white_on_black", "specks_border", "la_transparent",
)  # fmt: skip
__all__ = ["DECORATIONS", "FLAVOURS", "render_number"]


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
