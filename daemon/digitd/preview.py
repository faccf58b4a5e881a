"""The annotated preview: the input as the user drew it, the answer, and what the model saw.

    render_preview(image, model_input, digit, confidence, note="", parts=None) -> PNG bytes

A banner on top says the digit and the confidence (white on black when recognised, black on
light grey with the note, e.g. "low confidence" or "rejected: no_ink", otherwise); below it the
original, scaled to fit FIT pixels (nearest-neighbour when a tiny input is enlarged, so its
pixels stay visible), and the 28x28 model input enlarged twice as an inset on the right. For
a number the banner says its string, and the original (up to FIT_NUMBER pixels) shows each
digit's box with its value under it, "?" after a doubtful one, in place of the inset.

It is on the daemon's hot path, so it stays cheap: a small canvas, grey when the input is grey
(a BGR canvas costs 3x as much to encode), and PNG written without row filters (their search
was 3/4 of the time) by zlib-ng's fastest level (`_png`: a third of OpenCV's PNG encoder's
CPU, whose libpng and zlib took 0.08 ms of a 28x28 input's 0.11 ms; bench/file_budget.py).
The canvas is a view of the very rows that are deflated (no copy to encode), and each
banner's label is drawn once (`_banner`: putText was a tenth of a preview's CPU).
Pure: no file I/O, thread-safe.
"""

from __future__ import annotations

import functools
import struct

import cv2
import numpy as np
from zlib_ng import zlib_ng

from digitd.pngcheck import PNG_SIGNATURE
from digitd.preprocess import _to_uint8

FIT = 140  # the original's longest side in the preview
FIT_NUMBER = 320  # ...when it holds a number (drawn with each digit's box and value)
LABEL = 16  # the strip under a number that holds its digits' values
BANNER = 22  # the banner's height
INSET = 2  # the model input's enlargement (28 -> 56 px)
GAP = 4

DARK, LIGHT, FRAME = 30, 225, 150  # grey levels: banners and the inset's frame



def _fit(image: np.ndarray, fit: int = FIT) -> np.ndarray:
    """Scale to fit fit x fit: integer nearest-neighbour enlargement, or area reduction."""
    h, w = image.shape[:2]
    side = max(h, w)
    if side <= fit:
        k = fit // side
        if k > 1:  # nearest neighbour: each pixel k times across, each row k times down
            image = np.repeat(np.repeat(image, k, axis=1), k, axis=0)  # 2.5x cv2.resize's speed
        return image
    size = (max(1, round(w * fit / side)), max(1, round(h * fit / side)))
    step = side // fit  # an integer area reduction is fast; the remaining <2x is linear
    if step >= 4:  # huge: sample every few pixels first (a preview needs no more)
        image = image[:: step // 2, :: step // 2]
        h, w = image.shape[:2]
        step = max(h, w) // fit
    if step > 1 and min(h, w) >= step:
        image = cv2.resize(image[: h // step * step, : w // step * step], None, fx=1 / step,
                           fy=1 / step, interpolation=cv2.INTER_AREA)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def _label(digit: int | str | None, confidence: float | None, note: str) -> str:
    parts = []
    if digit is not None and digit != "":
        parts.append(str(digit))
        if confidence is not None:
            parts.append(f"{confidence:.1%}")
    if note:
        parts.append(note)
    return "  ".join(parts) if parts else "?"


@functools.lru_cache(maxsize=512)
def _banner(label: str, ok: bool, width: int) -> np.ndarray:
    """The banner strip (BANNER x width, grey) with its label: a few hundred labels make up
    nearly every preview (a digit and a confidence near 100%), so each is drawn once (read
    only: it is shared)."""
    strip = np.full((BANNER, width), DARK if ok else LIGHT, np.uint8)
    cv2.putText(strip, label, (4, BANNER - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                255 if ok else 0, 1, cv2.LINE_AA)
    strip.setflags(write=False)
    return strip


def render_preview(image: np.ndarray | None, model_input: np.ndarray | None,
                   digit: int | str | None, confidence: float | None, note: str = "",
                   parts: list[dict] | None = None) -> bytes:
    """PNG bytes: banner with the answer, the original scaled to ~FIT px, the 28x28 inset.

    `digit` may be a number's string; `parts` (Result.parts) are its digits: each box is
    drawn on the original with its value under it (followed by "?" when doubtful), and the
    original is scaled to fit FIT_NUMBER pixels instead, without the inset.

    The canvas is drawn straight into the rows the PNG deflates (each row after its filter
    byte, colour as RGB), so that encoding copies nothing first.
    """
    number = bool(parts) and image is not None and np.asarray(image).size > 0
    if image is not None and np.asarray(image).size:
        original = _fit(_to_uint8(image), FIT_NUMBER if number else FIT)
    else:
        original = np.full((56, 56), 200, np.uint8)
    h, w = original.shape[:2]
    side = 28 * INSET
    if number:
        original = _draw_parts(original, parts, w / np.asarray(image).shape[1])
        h = original.shape[0]
        body, width = h, max(w, 120)
    else:
        body = max(h, side + 2)
        width = max(w + GAP + side + 2 + GAP, 120)
    colour = original.ndim == 3
    height = BANNER + body
    rows = np.full((height, 1 + width * (3 if colour else 1)), 255, np.uint8)
    rows[:, 0] = 0  # each row's filter byte: None
    canvas = rows[:, 1:].view()
    canvas.shape = (height, width) + original.shape[2:]  # a view (raises rather than copy)

    ok = digit is not None and digit != "" and not note
    banner = _banner(_label(digit, confidence, note), ok, width)
    canvas[:BANNER] = banner[:, :, None] if colour else banner
    canvas[BANNER : BANNER + h, :w] = original[:, :, ::-1] if colour else original  # BGR->RGB
    if number:
        return _png(rows, width, height, colour)

    x0, y0 = w + GAP, BANNER + 1
    cv2.rectangle(canvas, (x0, y0), (x0 + side + 1, y0 + side + 1), (FRAME,) * 3, 1)
    if model_input is not None:
        inset = cv2.convertScaleAbs(np.asarray(model_input, np.float32), alpha=255)  # rounded
        inset = cv2.resize(inset, (side, side), interpolation=cv2.INTER_NEAREST)
        if colour:
            inset = inset[:, :, None]
        canvas[y0 + 1 : y0 + 1 + side, x0 + 1 : x0 + 1 + side] = inset
    return _png(rows, width, height, colour)


def _draw_parts(original: np.ndarray, parts: list[dict], scale: float) -> np.ndarray:
    """The original with each digit's box and value (below the box, on a strip of paper
    added under the image so that no value covers the ink)."""
    h, w = original.shape[:2]
    strip = np.full((LABEL,) + original.shape[1:], 255, np.uint8)
    out = np.concatenate([original, strip])
    for part in parts:
        x, y, bw, bh = (round(v * scale) for v in part["box"])
        x1, y1 = min(w - 1, x + max(1, bw)), min(h - 1, y + max(1, bh))
        doubtful = part.get("doubtful", False)
        cv2.rectangle(out, (x, y), (x1, y1), (DARK,) * 3 if doubtful else (FRAME,) * 3,
                      2 if doubtful else 1)
        text = f"{part['digit']}?" if doubtful else str(part["digit"])
        cv2.putText(out, text, (x, h + LABEL - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0,) * 3, 1, cv2.LINE_AA)
    return out


def _encode(canvas: np.ndarray) -> bytes:
    """8-bit grey (H, W) or BGR (H, W, 3) -> PNG bytes (see _png)."""
    h, w = canvas.shape[:2]
    colour = canvas.ndim == 3
    rows = np.empty((h, 1 + w * (3 if colour else 1)), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = (canvas[:, :, ::-1] if colour else canvas).reshape(h, -1)  # BGR -> RGB
    return _png(rows, w, h, colour)


def _png(rows: np.ndarray, width: int, height: int, colour: bool) -> bytes:
    """PNG bytes of `rows`, each a filter byte 0 then the row's grey or RGB pixels: one IDAT
    deflated by zlib-ng at level 1 (its "quick" strategy: ~3x faster than zlib's level 1 on a
    preview, files ~15% larger)."""
    return b"".join((_header(width, height, colour),
                     _chunk(b"IDAT", zlib_ng.compress(rows, 1)), _IEND))


@functools.lru_cache(maxsize=64)
def _header(width: int, height: int, colour: bool) -> bytes:
    """The signature and IHDR chunk: 8-bit grey or RGB, no interlace."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr)


def _chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC-32 of type and data."""
    crc = zlib_ng.crc32(data, zlib_ng.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


_IEND = _chunk(b"IEND", b"")
