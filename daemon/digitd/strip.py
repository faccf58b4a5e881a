"""The number model's input contract: a line of ink -> one fixed-size strip.

THE STRIP CONTRACT (the one place it is written down; training and serving both call strip()):

    (HEIGHT, WIDTH) float32 in [0, 1], ink bright on a dark background: the line's ink
    cropped to its box, scaled (keeping the aspect ratio) so that it fits
    (HEIGHT - 2 MARGIN) x (WIDTH - 2 MARGIN), its strongest ink 1.0, placed MARGIN pixels
    from the left and centred vertically; the rest is 0.

Training builds the ink with digitd.synth, serving takes the ink map preprocess cuts out of
the PNG for the line (digitd.segment); both go through strip(), so the number model sees the
same normalisation. `Strip.to_input` maps strip columns back to the input's pixels, for the
digits' boxes.

Pure functions, no model, thread-safe (OpenCV releases the GIL).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

HEIGHT = 32
WIDTH = 256
MARGIN = 2
STRIDE = 4  # strip columns per step of the number model's output (its width is WIDTH / 4)


@dataclass(frozen=True)
class Strip:
    """A line of ink as the number model's input, and where its pixels came from."""

    pixels: np.ndarray  # (HEIGHT, WIDTH) float32
    scale: float  # strip pixels per pixel of the ink map it was made from
    origin: tuple[float, float]  # (x, y) of the ink's crop in the input's pixels
    step: float  # input pixels per pixel of the ink map
    top: int  # the strip row the crop's first row is at (it is centred vertically)
    extent: tuple[float, float]  # the crop's width and height in the input's pixels

    def to_input(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        """A box in strip pixels (corners) -> (x, y, width, height) in the input's pixels."""
        k = self.step / self.scale
        (ox, oy), (w, h) = self.origin, self.extent
        ix0 = min(max(ox + (x0 - MARGIN) * k, ox), ox + w)  # never past the crop's edges
        ix1 = min(max(ox + (x1 - MARGIN) * k, ox), ox + w)
        iy0 = min(max(oy + (y0 - self.top) * k, oy), oy + h)
        iy1 = min(max(oy + (y1 - self.top) * k, oy), oy + h)
        return (round(ix0), round(iy0), max(1, round(ix1 - ix0)), max(1, round(iy1 - iy0)))


def strip(ink: np.ndarray, origin: tuple[float, float] = (0.0, 0.0),
          step: float = 1.0) -> Strip:
    """An ink map (float, ink > 0, any size) -> the number model's input (the contract above).

    `origin` and `step`: where the ink map lies in the input (its top-left corner, and input
    pixels per ink-map pixel), so that boxes found on the strip map back (Strip.to_input).
    Raises ValueError when there is no ink.
    """
    ink = np.asarray(ink, np.float32)
    x, y, w, h = cv2.boundingRect(cv2.compare(ink, 0, cv2.CMP_GT))
    if w == 0 or h == 0:
        raise ValueError("no ink in the line")
    crop = ink[y : y + h, x : x + w]
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
    return Strip(out, scale, (origin[0] + x * step, origin[1] + y * step), step, oy,
                 (w * step, h * step))
