"""The number model's input contract: a line of ink -> one fixed-size strip.

THE STRIP CONTRACT (the one place it is written down; training and serving both call strip()):

    (HEIGHT, WIDTH) float32 in [0, 1], ink bright on a dark background: the line's ink
    cropped to its box, scaled (keeping the aspect ratio) so that it fits
    (HEIGHT - 2 MARGIN) x (WIDTH - 2 MARGIN), its strongest ink 1.0, placed MARGIN pixels
    from the left and centred vertically; the rest is 0.

    Levelled (`level=True`: serving's strips of lines not written into a form's printed
    ruling, digitd.segment): a line at least LEVEL_ASPECT times wider than tall whose ink's
    principal axis runs LEVEL_MIN_DEG to LEVEL_DEG degrees off horizontal is first turned
    about its box's centre until it runs level, and cropped again. A long line slanted 4
    degrees is half as tall again as its digits; levelled, they stand taller in the strip and
    the number models, trained on slanted lines as they come (training's strips are not
    levelled), read them better (docs/BENCHMARKS.md, "A slanted line levelled": number
    models trained on levelled strips read no better, and form fields lost a little).

Training builds the ink with digitd.synth, serving takes the ink map preprocess cuts out of
the PNG for the line (digitd.segment); both go through strip(), so the number model sees the
same normalisation (serving's levelling aside: a levelled line is one the models were
trained to read, a level one). `Strip.to_input` maps strip boxes back to the input's pixels,
through the turn if the line was levelled, for the digits' boxes.

Pure functions, no model, thread-safe (OpenCV releases the GIL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

HEIGHT = 32
WIDTH = 256
MARGIN = 2
STRIDE = 4  # strip columns per step of the number model's output (its width is WIDTH / 4)


LEVEL_DEG = 6.0  # a steeper principal axis is a short line's shape, not a slant
LEVEL_ASPECT = 2.5  # a line narrower than this (times its height) is not levelled
LEVEL_MIN_DEG = 0.5  # nor one this close to level


@dataclass(frozen=True)
class Strip:
    """A line of ink as the number model's input, and where its pixels came from."""

    pixels: np.ndarray  # (HEIGHT, WIDTH) float32
    scale: float  # strip pixels per pixel of the (levelled) ink map it was made from
    top: int  # the strip row the ink's first row is at (it is centred vertically)
    back: np.ndarray  # (2, 3) affine map: strip pixels -> the input's pixels
    bounds: tuple[float, float, float, float]  # the ink's box in the input (x0, y0, x1, y1)
    turn: float = 0.0  # degrees the line was turned to level it (0: not turned)

    def to_input(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        """A box in strip pixels (corners) -> (x, y, width, height) in the input's pixels:
        the same box, scaled, about its centre mapped back (a levelled line's digits were
        upright in the input), never past the ink's box."""
        cx, cy = self.back @ np.array([(x0 + x1) / 2, (y0 + y1) / 2, 1.0])
        k = float(np.hypot(*self.back[:, 0]))  # input pixels per strip pixel
        bx0, by0, bx1, by1 = self.bounds
        hw, hh = (x1 - x0) * k / 2, (y1 - y0) * k / 2
        ix0, ix1 = (min(max(float(v), bx0), bx1) for v in (cx - hw, cx + hw))
        iy0, iy1 = (min(max(float(v), by0), by1) for v in (cy - hh, cy + hh))
        return (round(ix0), round(iy0), max(1, round(ix1 - ix0)), max(1, round(iy1 - iy0)))


def strip(ink: np.ndarray, origin: tuple[float, float] = (0.0, 0.0), step: float = 1.0,
          level: bool = False) -> Strip:
    """An ink map (float, ink > 0, any size) -> the number model's input (the contract above).

    `origin` and `step`: where the ink map lies in the input (its top-left corner, and input
    pixels per ink-map pixel), so that boxes found on the strip map back (Strip.to_input).
    `level`: level a slanted line first (serving). Raises ValueError when there is no ink.
    """
    ink = np.asarray(ink, np.float32)
    x, y, w, h = cv2.boundingRect(cv2.compare(ink, 0, cv2.CMP_GT))
    if w == 0 or h == 0:
        raise ValueError("no ink in the line")
    crop = ink[y : y + h, x : x + w]
    # crop pixels -> the input's
    to_input = np.array([[step, 0, origin[0] + x * step], [0, step, origin[1] + y * step],
                         [0, 0, 1]])
    bounds = (float(to_input[0, 2]), float(to_input[1, 2]),
              float(to_input[0, 2] + w * step), float(to_input[1, 2] + h * step))
    turn = _slant(crop) if level and w >= LEVEL_ASPECT * h else 0.0
    if not LEVEL_MIN_DEG <= abs(turn) <= LEVEL_DEG:
        turn = 0.0
    if turn:
        crop, turned = _turned(crop, turn)
        to_input = to_input @ np.vstack([cv2.invertAffineTransform(turned), [0, 0, 1]])
        h, w = crop.shape
    scale = min((HEIGHT - 2 * MARGIN) / h, (WIDTH - 2 * MARGIN) / w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(crop, (nw, nh),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top = float(small.max())
    if top <= 0:
        raise ValueError("no ink in the line")
    out = np.zeros((HEIGHT, WIDTH), np.float32)
    oy = (HEIGHT - nh) // 2
    out[oy : oy + nh, MARGIN : MARGIN + nw] = np.minimum(small * (1.0 / top), 1.0)
    # strip pixels -> crop pixels -> the input's
    to_crop = np.array([[1 / scale, 0, -MARGIN / scale], [0, 1 / scale, -oy / scale], [0, 0, 1]])
    return Strip(out, scale, oy, (to_input @ to_crop)[:2], bounds, turn)


def _slant(ink: np.ndarray) -> float:
    """The angle of the ink's principal axis (its second moments, each pixel weighted by its
    ink), in degrees, positive where the line runs down to the right."""
    m = cv2.moments(ink)
    return math.degrees(0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"]))


def _turned(ink: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The ink turned by `degrees` (counter-clockwise) about its centre on a canvas that holds
    it all, cropped to its ink; and the (2, 3) map from the ink's pixels to the result's."""
    h, w = ink.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = math.ceil(w * cos + h * sin), math.ceil(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    turned = cv2.warpAffine(ink, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)
    x, y, tw, th = cv2.boundingRect(cv2.compare(turned, 0, cv2.CMP_GT))
    m[0, 2] -= x
    m[1, 2] -= y
    return turned[y : y + th, x : x + tw], m
