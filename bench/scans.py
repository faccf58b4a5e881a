"""Realistic test scans of MNIST digits (and of digits in handwriting-like fonts) as PNG bytes.

Seeded and deterministic: `render_scan(digit28, i, seed)` always gives the same bytes for the
same inputs. Flavours cover what users drop into the inbox: dark or blue ink on noisy paper
under uneven light (gradient, vignetting, a soft shadow), rotated up to +-12 degrees, the digit
36-320 px tall somewhere off-centre on a larger canvas, blur and JPEG artefacts, transparent
RGBA and grey+alpha exports (ink on alpha, background fully transparent), 16-bit grey, palette
with and without transparency, Adam7-interlaced, white-on-black, specks and a scanner border.

Used by bench/accuracy.py (full MNIST test set) and tests/ (the committed sample).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from digitd.synth import ink_from_mnist as _ink_from_mnist  # one home for both generators
from digitd.synth import rotate as _rotate
from pngwrite import encode_png

FLAVOURS = (
    "mnist_png",  # the 28x28 MNIST digit itself, white on black: the control
    "paper_grey",  # dark ink on noisy paper, uneven light, 8-bit grey PNG
    "blue_ink",  # blue ink on tinted paper, RGB
    "photo_jpeg",  # a phone photo: shadow, blur, JPEG artefacts, saved as RGB PNG
    "rgba_transparent",  # paint-program export: ink on alpha, background fully transparent
    "la_transparent",  # the same as grey+alpha
    "grey16",  # a 16-bit grey scan
    "palette",  # a scan quantised to a 16-colour palette
    "palette_trns",  # a palette drawing whose background entry is transparent
    "interlaced",  # an Adam7-interlaced RGB scan
    "white_on_black",  # chalk on a dark board, left inverted
    "specks_border",  # dust specks and a scanner's dark border line at one edge
)

# OpenCV 5 draws text with its own outline fonts ("sans" and "italic" are variable-weight; the
# FONT_HERSHEY_* constants, SCRIPT ones included, now map onto them): (face, weight range).
FONTS = (("italic", (300, 650)), ("sans", (300, 650)), ("uni", (0, 0)))


def _rng(seed: int, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, salt, index])


# --------------------------------------------------------------------------------------------
# The digit as an ink map (float32, 1 = full ink), at its final size and angle


def _ink_from_font(digit: int, height: int, font: int, rng: np.random.Generator) -> np.ndarray:
    """A digit drawn in font number `font` of FONTS, its ink about `height` px tall."""
    name, (lo, hi) = FONTS[font]
    weight = int(rng.uniform(lo, hi)) if hi else 0
    size = int(height * 1.45)  # the font size is the line height, digits are ~70% of it
    canvas = np.zeros((size * 2, size * 2), np.uint8)
    cv2.putText(canvas, str(digit), (size // 2, size * 3 // 2), 255, cv2.FontFace(name), size,
                weight)
    rows, cols = np.flatnonzero(canvas.max(1)), np.flatnonzero(canvas.max(0))
    return canvas[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255


def _on_canvas(ink: np.ndarray, rng: np.random.Generator, spread=(1.3, 2.6),
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Put the ink somewhere off-centre on a larger canvas ((height, width) `size` if given)."""
    h, w = ink.shape
    side = max(h, w)
    if size is None:
        ch = int(side * rng.uniform(*spread)) + 8
        cw = int(ch * rng.uniform(0.75, 1.35))
    else:
        ch, cw = size
    ch, cw = max(ch, h + 8), max(cw, w + 8)
    y = int(rng.integers(4, ch - h - 3))
    x = int(rng.integers(4, cw - w - 3))
    canvas = np.zeros((ch, cw), np.float32)
    canvas[y : y + h, x : x + w] = ink
    return canvas


# --------------------------------------------------------------------------------------------
# Paper, light and the camera


def _lighting(shape, rng: np.random.Generator, shadow: bool) -> np.ndarray:
    """Multiplicative light: a gradient, vignetting and maybe a soft shadow."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / max(1, w - 1) - 0.5, yy / max(1, h - 1) - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    light = 1 - rng.uniform(0, 0.35) * (0.5 + u * np.cos(theta) + v * np.sin(theta))
    light *= 1 - rng.uniform(0, 0.45) * (u * u + v * v) * 2  # vignetting
    if shadow:
        phi = rng.uniform(0, 2 * np.pi)
        d = u * np.cos(phi) + v * np.sin(phi) - rng.uniform(0.1, 0.4)
        edge = rng.uniform(0.04, 0.12)
        light *= 1 - rng.uniform(0.2, 0.4) / (1 + np.exp(-d / edge))
    return light


def _paper_scan(ink: np.ndarray, rng: np.random.Generator, *, colour: bool, blue: bool = False,
                inverted: bool = False, shadow: bool | None = None, blur: float | None = None,
                noise: float | None = None,
                printed: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Render an ink map as a scan or photo: uint8 BGR (colour) or grey. `printed`: a form's
    ruling (its coverage map and BGR colour), printed on the paper under the ink."""
    h, w = ink.shape
    if inverted:
        paper = np.full(3, rng.uniform(15, 70), np.float32)
        pen = np.full(3, rng.uniform(185, 250), np.float32)
    else:
        paper = np.full(3, rng.uniform(190, 250), np.float32)
        if colour:
            paper = paper - np.array([rng.uniform(0, 35), rng.uniform(0, 15), 0], np.float32)
        if blue:
            pen = np.array([rng.uniform(120, 200), rng.uniform(30, 90), rng.uniform(0, 50)],
                           np.float32)
        else:
            pen = np.full(3, rng.uniform(10, 80), np.float32)
    opacity = rng.uniform(0.8, 1.0)
    a = (ink * opacity)[:, :, None]
    if printed is None:
        img = paper * (1 - a) + pen * a
    else:
        cover, tint = printed[0][:, :, None], np.asarray(printed[1], np.float32)
        img = (paper * (1 - cover) + tint * cover) * (1 - a) + pen * a
    if shadow is None:
        shadow = rng.random() < 0.3
    img *= _lighting((h, w), rng, shadow)[:, :, None]
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3) * 6
    sigma = rng.uniform(2, 8) if noise is None else noise
    img += (texture + rng.normal(0, sigma, (h, w)).astype(np.float32))[:, :, None]
    if blur is None:
        blur = rng.uniform(0, 1.2) * max(1.0, min(h, w) / 300)
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return img if colour else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


def _specks_and_border(img: np.ndarray, rng: np.random.Generator, digit_h: int) -> np.ndarray:
    img = img.copy()
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(5, 30))):
        r = max(1, int(rng.uniform(0.5, 0.025 * digit_h + 1)))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), r,
                   int(rng.uniform(20, 110)), -1, cv2.LINE_AA)
    t = int(rng.integers(3, max(4, min(h, w) // 40) + 3))
    level = int(rng.uniform(10, 70))
    edge = int(rng.integers(4))
    if edge == 0:
        img[:t, :] = level
    elif edge == 1:
        img[h - t :, :] = level
    elif edge == 2:
        img[:, :t] = level
    else:
        img[:, w - t :] = level
    return img


def _jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    quality = int(rng.integers(35, 85))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _rgb(bgr: np.ndarray) -> np.ndarray:
    return bgr[:, :, ::-1]


def _png(img: np.ndarray) -> bytes:
    """OpenCV's encoder for the plain flavours (BGR or grey in, PNG out)."""
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes()


# --------------------------------------------------------------------------------------------
# Public


def render_ink(ink: np.ndarray, flavour: str, rng: np.random.Generator,
               canvas_size: tuple[int, int] | None = None) -> bytes:
    """An ink map (already at its size and angle) rendered as `flavour`, as PNG bytes, on a
    canvas of (height, width) `canvas_size` (default: 1.3-2.6 times the digit, random)."""
    digit_h = ink.shape[0]
    if flavour in ("rgba_transparent", "la_transparent", "palette_trns"):
        canvas = _on_canvas(ink, rng, size=canvas_size)
        alpha = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
        if flavour == "la_transparent":
            return encode_png(np.dstack([np.zeros_like(alpha), alpha]))
        if flavour == "rgba_transparent":
            pen = [(20, 20, 20), (30, 60, 180), (200, 30, 30)][int(rng.integers(3))]  # RGB
            rgb = np.empty(alpha.shape + (3,), np.uint8)
            rgb[:] = pen
            rgb[alpha == 0] = 0  # exporters often store black under transparent pixels
            return encode_png(np.dstack([rgb, alpha]))
        levels = np.round(canvas * 15).astype(np.uint8)  # 0 = transparent background
        pen = np.array([30, 50, 160], np.float32)
        palette = np.array([pen for _ in range(16)], np.uint8)
        trns = bytes(round(255 * i / 15) for i in range(16))
        return encode_png(levels, 3, palette=palette, transparency=trns)

    canvas = _on_canvas(ink, rng, size=canvas_size)
    if flavour == "paper_grey":
        return _png(_paper_scan(canvas, rng, colour=False))
    if flavour == "blue_ink":
        return _png(_paper_scan(canvas, rng, colour=True, blue=True))
    if flavour == "photo_jpeg":
        img = _paper_scan(canvas, rng, colour=True, blue=rng.random() < 0.5, shadow=True,
                          blur=rng.uniform(0.6, 1.6) * max(1.0, digit_h / 150))
        return _png(_jpeg(img, rng))
    if flavour == "grey16":
        img = _paper_scan(canvas, rng, colour=False).astype(np.uint16) * 257
        img += rng.integers(0, 257, img.shape, dtype=np.uint16)  # use the low byte too
        return encode_png(img, bit_depth=16)
    if flavour == "palette":
        img = _paper_scan(canvas, rng, colour=True, blue=rng.random() < 0.5)
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        index = np.clip(np.round(grey / 17), 0, 15).astype(np.uint8)  # 16 grey bins
        # Each entry the mean colour of its bin's pixels, as a quantiser would choose.
        palette = np.zeros((16, 3), np.uint8)
        for i in range(16):
            members = img[index == i]
            palette[i] = members.mean(0)[::-1] if len(members) else (17 * i,) * 3
        return encode_png(index, 3, palette=palette)
    if flavour == "interlaced":
        img = _paper_scan(canvas, rng, colour=True, blue=rng.random() < 0.5)
        return encode_png(_rgb(img), interlace=True, level=1)
    if flavour == "white_on_black":
        return _png(_paper_scan(canvas, rng, colour=False, inverted=True))
    if flavour == "specks_border":
        return _png(_specks_and_border(_paper_scan(canvas, rng, colour=False), rng, digit_h))
    raise ValueError(f"unknown flavour {flavour!r}")


def flavour_of(index: int) -> str:
    return FLAVOURS[index % len(FLAVOURS)]


def render_scan(digit28: np.ndarray, index: int, seed: int = 0, flavour: str | None = None,
                canvas_size: tuple[int, int] | None = None,
                height: int | None = None) -> tuple[bytes, str]:
    """MNIST digit number `index` as a realistic PNG: (bytes, flavour). The digit's height
    (default: 36-320 px, log-uniform) and the canvas's size can be forced (for benchmarks)."""
    flavour = flavour or flavour_of(index)
    if flavour == "mnist_png":
        return encode_png(np.asarray(digit28, np.uint8)), flavour
    rng = _rng(seed, index)
    drawn = int(round(math.exp(rng.uniform(math.log(36), math.log(320)))))
    ink = _rotate(_ink_from_mnist(digit28, height or drawn), rng.uniform(-12, 12))
    return render_ink(ink, flavour, rng, canvas_size), flavour


def render_font_digit(digit: int, index: int, seed: int = 0) -> tuple[bytes, str]:
    """`digit` in one of the FONTS on paper (the flavours' paper treatments)."""
    rng = _rng(seed, index, salt=1)
    font = index % len(FONTS)
    height = int(round(math.exp(rng.uniform(math.log(36), math.log(240)))))
    ink = _rotate(_ink_from_font(digit, height, font, rng), rng.uniform(-12, 12))
    flavour = ("paper_grey", "blue_ink", "photo_jpeg", "rgba_transparent", "white_on_black",
               "specks_border")[int(rng.integers(6))]
    return render_ink(ink, flavour, rng), flavour


def blank_page(index: int, seed: int = 0) -> bytes:
    """Noisy, unevenly lit paper with no ink: must be rejected as no_ink."""
    rng = _rng(seed, index, salt=2)
    h, w = int(rng.integers(60, 600)), int(rng.integers(60, 600))
    return _png(_paper_scan(np.zeros((h, w), np.float32), rng, colour=bool(rng.random() < 0.5)))


# --------------------------------------------------------------------------------------------
# Form fields: one digit written into printed ruling (issue 10)

FORM_FLAVOURS = (
    "form_box",  # a printed box around the digit (the pen sometimes crosses its edge)
    "form_comb",  # a comb field: a baseline and short ticks at the cell's sides, open at the top
    "form_underline",  # a line under the digit across the crop, at, below or through its foot
    "form_strike",  # a printed line across the crop running through the digit
    "form_squared",  # squared paper
    "form_ruled",  # ruled paper, the digit sitting on a line
    "form_neighbours",  # one box of a row cut out loosely: the neighbours' edges in the crop
)


def _ruling_ink(rng: np.random.Generator, paper_kind: bool) -> tuple[str, np.ndarray]:
    """Printed ruling's colour (BGR): black, grey or blue; paper ruling more often pale."""
    kind = rng.choice(["black", "grey", "blue"], p=[0.2, 0.4, 0.4] if paper_kind
                      else [0.35, 0.3, 0.35])
    if kind == "black":
        return kind, np.full(3, rng.uniform(20, 70), np.float32)
    if kind == "grey":
        return kind, np.full(3, rng.uniform(110, 170), np.float32)
    if rng.random() < 0.5:  # dark blue
        return kind, np.array([rng.uniform(150, 200), rng.uniform(60, 110), rng.uniform(10, 50)],
                              np.float32)
    return kind, np.array([rng.uniform(215, 245), rng.uniform(160, 200), rng.uniform(100, 150)],
                          np.float32)


def _ruling_layer(shape: tuple[int, int], segments, thickness: float,
                  skew: float) -> np.ndarray:
    """Coverage (0..1) of straight printed lines `thickness` px wide, drawn at twice the size
    with anti-aliasing, turned by `skew` degrees about the canvas's centre."""
    h, w = shape
    big = np.zeros((h * 2, w * 2), np.uint8)
    t = max(2, round(thickness * 2))
    for x0, y0, x1, y1 in segments:
        cv2.line(big, (round(x0 * 2), round(y0 * 2)), (round(x1 * 2), round(y1 * 2)), 255, t,
                 cv2.LINE_AA)
    layer = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    if skew:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), skew, 1.0)
        layer = cv2.warpAffine(layer, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    return layer


def rect(x: float, y: float, w: float, h: float) -> list[tuple[float, float, float, float]]:
    """A printed box's four sides as segments (x0, y0, x1, y1): top, bottom, left, right."""
    return [(x, y, x + w, y), (x, y + h, x + w, y + h), (x, y, x, y + h), (x + w, y, x + w, y + h)]


def _form_geometry(flavour: str, dh: int, dw: int, rng: np.random.Generator):
    """(canvas (h, w), the digit's top-left, the ruling's segments, its thickness) for a digit
    whose ink is dh x dw px."""
    thickness = max(1.0, dh * rng.uniform(0.01, 0.05))
    segs: list[tuple[float, float, float, float]] = []
    if flavour in ("form_box", "form_comb", "form_neighbours"):
        bh = dh * rng.uniform(1.15, 1.6)
        bw = max(dw * rng.uniform(1.15, 1.6), bh * rng.uniform(0.7, 1.2))
        if flavour == "form_box":
            ml, mr, mt, mb = (rng.uniform(0.03, 0.3) * bh for _ in range(4))
        elif flavour == "form_comb":
            ml, mr = (rng.uniform(0.03, 0.25) * bw for _ in range(2))
            mt, mb = (rng.uniform(0.05, 0.3) * bh for _ in range(2))
        else:
            gap = rng.uniform(0, 0.3) * bw
            ml, mr = (gap + rng.uniform(0.05, 0.35) * bw for _ in range(2))
            mt, mb = (rng.uniform(-0.04, 0.2) * bh for _ in range(2))
        ch, cw = int(mt + bh + mb) + 1, int(ml + bw + mr) + 1
        bx, by = ml, mt
        if flavour == "form_box":
            segs = rect(bx, by, bw, bh)
        elif flavour == "form_comb":
            tooth = rng.uniform(0.2, 0.5) * bh
            segs = [(-cw, by + bh, 2 * cw, by + bh)]
            segs += [(x, by + bh - tooth, x, by + bh) for x in (bx - bw, bx, bx + bw, bx + 2 * bw)]
        else:
            for k in (-1, 0, 1):
                segs += rect(bx + k * (bw + gap), by, bw, bh)
        # The digit somewhere in its cell; one in four crosses the cell's bottom or a side.
        x = bx + (bw - dw) / 2 + rng.uniform(-0.45, 0.45) * max(0.0, bw - dw)
        y = by + (bh - dh) / 2 + rng.uniform(-0.45, 0.45) * max(0.0, bh - dh)
        if rng.random() < 0.25:
            if rng.random() < 0.6:
                y = by + bh - dh + rng.uniform(0.02, 0.15) * dh
            else:
                x = bx + bw - dw + rng.uniform(0.02, 0.12) * dw
        return (ch, cw), (int(y), int(x)), segs, thickness
    if flavour in ("form_squared", "form_ruled"):
        thickness = max(1.0, dh * rng.uniform(0.01, 0.03))
        ml, mr, mt, mb = (rng.uniform(0.2, 0.7) * dh for _ in range(4))
    else:
        ml, mr, mt, mb = (rng.uniform(0.1, 0.5) * dh for _ in range(4))
    ch, cw = int(mt + dh + mb) + 1, int(ml + dw + mr) + 1
    y, x = mt, ml
    across = lambda yy: (-cw, yy, 2 * cw, yy)  # noqa: E731
    if flavour == "form_underline":
        segs = [across(y + dh + rng.uniform(-0.15, 0.12) * dh)]
    elif flavour == "form_strike":
        segs = [across(y + rng.uniform(0.2, 0.9) * dh)]
    elif flavour == "form_squared":
        step = dh * rng.uniform(0.45, 1.0)
        oy, ox = rng.uniform(0, step), rng.uniform(0, step)
        segs = [across(oy + k * step) for k in range(-2, int(ch / step) + 3)]
        segs += [(ox + k * step, -ch, ox + k * step, 2 * ch)
                 for k in range(-2, int(cw / step) + 3)]
    elif flavour == "form_ruled":
        step = dh * rng.uniform(0.9, 1.5)
        base = y + dh + rng.uniform(-0.1, 0.05) * dh
        segs = [across(base + k * step) for k in range(-int(base / step) - 2,
                                                         int((ch - base) / step) + 3)]
    else:
        raise ValueError(f"unknown form flavour {flavour!r}")
    return (ch, cw), (int(y), int(x)), segs, thickness


def _form(digit28: np.ndarray | None, index: int, seed: int, flavour: str):
    """The field drawn as coverage maps: (digit's ink or None, ruling, ruling's kind and
    colour, the generator to go on with)."""
    rng = _rng(seed, index, salt=3)
    height = int(round(math.exp(rng.uniform(math.log(36), math.log(200)))))
    angle = rng.uniform(-10, 10)
    if digit28 is None:
        dh, dw = height, int(height * rng.uniform(0.4, 0.9))
        shape, _, segs, thickness = _form_geometry(flavour, dh, dw, rng)
        return (None, *printed_ruling(shape, segs, thickness, flavour, rng), rng)
    ink = _rotate(_ink_from_mnist(digit28, height), angle)
    rows, cols = np.flatnonzero(ink.max(1) > 0.2), np.flatnonzero(ink.max(0) > 0.2)
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return (*in_form_field(ink, flavour, rng), rng)


def in_form_field(ink: np.ndarray, flavour: str, rng: np.random.Generator):
    """Ink (a digit's, or a whole number's) written into a field of `flavour` (FORM_FLAVOURS):
    (canvas with the ink, the printed ruling's coverage, its kind, its colour)."""
    dh, dw = ink.shape
    shape, (y, x), segs, thickness = _form_geometry(flavour, dh, dw, rng)
    canvas = np.zeros(shape, np.float32)
    y, x = min(max(y, 0), shape[0] - dh), min(max(x, 0), shape[1] - dw)
    canvas[y : y + dh, x : x + dw] = ink
    return (canvas, *printed_ruling(shape, segs, thickness, flavour, rng))


def printed_ruling(shape: tuple[int, int], segs, thickness: float, flavour: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, str, np.ndarray]:
    """A field's printed lines `segs` on a canvas of `shape`: (coverage, kind, BGR colour),
    coloured as printed forms are (paler on squared and ruled paper) and skewed up to +-1.5
    degrees."""
    kind, tint = _ruling_ink(rng, flavour in ("form_squared", "form_ruled"))
    return _ruling_layer(shape, segs, thickness, rng.uniform(-1.5, 1.5)), kind, tint


def scan_form(canvas: np.ndarray, layer: np.ndarray, kind: str, tint: np.ndarray,
              rng: np.random.Generator) -> bytes:
    """A field's handwriting (`canvas`) on paper printed with its ruling, scanned: PNG bytes."""
    colour = kind == "blue" or rng.random() < 0.3
    img = _paper_scan(canvas, rng, colour=colour, blue=colour and rng.random() < 0.4,
                      printed=(layer, tint))
    return _png(img)


def form_maps(digit28: np.ndarray | None, index: int, seed: int = 0,
              flavour: str | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """The geometry of render_form's field, before paper, light and scanning: the digit's ink
    (None for an empty field) and the printed ruling, as float32 coverage maps (1 = full ink)
    on the same canvas. For tests that compare a digit with and without its ruling."""
    canvas, layer, *_ = _form(digit28, index, seed,
                              flavour or FORM_FLAVOURS[index % len(FORM_FLAVOURS)])
    return canvas, layer


def render_form(digit28: np.ndarray | None, index: int, seed: int = 0,
                flavour: str | None = None) -> tuple[bytes, str]:
    """MNIST digit number `index` written into a form field of `flavour` (default: one of
    FORM_FLAVOURS in turn), scanned: (PNG bytes, flavour). `digit28` None: the field is empty
    (must be no_ink). The digit 36-200 px tall, turned up to +-10 degrees; the ruling 1-5% of
    its height thick (1-3% on squared and ruled paper), black, grey or blue, skewed up to
    +-1.5 degrees; paper, light, noise and blur as the scans above."""
    flavour = flavour or FORM_FLAVOURS[index % len(FORM_FLAVOURS)]
    canvas, layer, kind, tint, rng = _form(digit28, index, seed, flavour)
    if canvas is None:
        canvas = np.zeros(layer.shape, np.float32)
    return scan_form(canvas, layer, kind, tint, rng), flavour
