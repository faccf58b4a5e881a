"""A small pure-Python PNG encoder for test data: every colour type, 8/16-bit, palette with or
without tRNS, and Adam7 interlacing (which OpenCV cannot write); and the PNG chunk and the
"bomb" every test and bench builds its hostile PNGs from. Not used by digitd itself.

Arrays are in PNG channel order (grey, grey+alpha, RGB, RGBA), not OpenCV's BGR.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC over type and data."""
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def bomb_png(width: int = 60000, height: int | None = None, *, image_data: bool = True) -> bytes:
    """A PNG "bomb": a valid header declaring width x height 8-bit grey pixels (60000 x 60000
    is 3.6 gigapixels), every CRC right, and only a token IDAT and IEND (none with
    `image_data=False`: the signature and IHDR alone)."""
    ihdr = struct.pack(">IIBBBBB", width, width if height is None else height, 8, 0, 0, 0, 0)
    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr)]
    if image_data:
        out += [chunk(b"IDAT", zlib.compress(b"\0" * 64)), chunk(b"IEND", b"")]
    return b"".join(out)


def _scanlines(pixels: np.ndarray) -> bytes:
    """Filter type 0 (None) before every row."""
    rows = pixels.reshape(pixels.shape[0], -1)
    return np.hstack([np.zeros((rows.shape[0], 1), np.uint8), rows]).tobytes()


def _pack(px: np.ndarray, depth: int) -> np.ndarray:
    """Rows of 1/2/4-bit samples packed into bytes, most significant bits first."""
    per = 8 // depth
    h, w = px.shape
    padded = np.zeros((h, -(-w // per) * per), np.uint16)
    padded[:, :w] = px
    shifts = (8 - depth * (np.arange(per) + 1)).astype(np.uint16)
    return (padded.reshape(h, -1, per) << shifts).sum(axis=2).astype(np.uint8)


def encode_png(pixels: np.ndarray, colour_type: int | None = None, *, bit_depth: int = 8,
               palette: np.ndarray | None = None, transparency: bytes | None = None,
               interlace: bool = False, level: int = 6) -> bytes:
    """Encode `pixels` (H, W) or (H, W, C) as PNG bytes.

    colour_type: 0 grey, 2 RGB, 3 palette (pixels are indices, `palette` an (N, 3) uint8 RGB
    table, `transparency` the raw tRNS bytes: one alpha per palette entry), 4 grey+alpha,
    6 RGBA; by default guessed from the channel count. bit_depth 8 or 16 (16 wants uint16),
    or 1, 2, 4 for grey and palette (pixels are then the small integer samples).
    """
    pixels = np.asarray(pixels)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if colour_type is None:
        colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    if _CHANNELS[colour_type] != channels:
        raise ValueError(f"colour type {colour_type} wants {_CHANNELS[colour_type]} channels")
    height, width = pixels.shape[:2]
    if bit_depth == 16:
        raw = pixels.astype(">u2").view(np.uint8).reshape(height, width, -1)
    elif bit_depth == 8:
        raw = pixels.astype(np.uint8).reshape(height, width, -1)
    elif bit_depth in (1, 2, 4) and colour_type in (0, 3):
        raw = pixels.astype(np.uint8).reshape(height, width, 1)
    else:
        raise ValueError(f"bit depth {bit_depth} is not supported for colour type {colour_type}")

    def rows(px: np.ndarray) -> bytes:
        if bit_depth < 8:
            px = _pack(px[:, :, 0], bit_depth)
        return _scanlines(px)

    if interlace:
        data = b"".join(rows(raw[y0::dy, x0::dx]) for x0, y0, dx, dy in _ADAM7
                        if raw[y0::dy, x0::dx].size)
    else:
        data = rows(raw)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, int(interlace))
    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", ihdr)]
    if colour_type == 3:
        if palette is None:
            raise ValueError("a palette image needs a palette")
        out.append(chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes()))
        if transparency is not None:
            out.append(chunk(b"tRNS", bytes(transparency)))
    out.append(chunk(b"IDAT", zlib.compress(data, level)))
    out.append(chunk(b"IEND", b""))
    return b"".join(out)
