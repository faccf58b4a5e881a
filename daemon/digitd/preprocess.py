"""PNG bytes -> the model's 28x28 input, normalised the way MNIST's digits were.

Pure functions (bytes or arrays in, arrays out): no file I/O, no global state, no TensorFlow,
safe to call from many threads at once (OpenCV releases the GIL). The daemon and
`digitd predict` call them through digitd.intake.

    prepare(data)      guards + decode + normalise -> Prepared(image, model_input)
    decode_png(data)   guards + decode -> 8-bit grey or BGR, alpha composited on white
    normalise(image)   any decoded array -> (28, 28) float32, ink 1.0 on 0.0

Failures raise Rejected with a reason code (digitd.codes, re-exported here with REASONS).

The normalisation is LeCun's for MNIST (crop the ink, scale it to fit 20x20 keeping the aspect
ratio with anti-aliasing, put its centre of mass at the centre of 28x28), made robust to paper:

1. Locate, on a copy at most LOCATE_SIZE pixels wide (so the cost does not grow with the
   scanner's resolution; a strip with printed ruling, a row of boxes, again on a copy of as
   many pixels as a square one's, so that its ruling is not shrunk to nothing). A digital
   drawing whose paper is one exact value (MNIST itself, a paint program's export on white)
   takes a short cut: ink is whatever differs from it. Paper otherwise: polarity from the skew
   of a high-pass copy (ink is the minority, so its tail is the long one); the paper's
   brightness, colour and uneven light estimated by a morphological closing on a coarser copy
   (extended past its edges by point reflection so vignetting is followed right to the corners)
   and subtracted per channel, so any ink colour on any paper counts by its strongest channel;
   a noise floor from the paper's statistics; a form's printed ruling taken out of the ink
   (digitd.ruling: lines, boxes, comb fields, underlines, squared and ruled paper, neighbouring
   boxes' edges; strokes crossing them kept; a field with nothing but ruling is no_ink);
   connected components with hysteresis (some part must be clearly dark), dropping specks
   (small relative to the largest part unless close to it: a 5's detached bar stays), scanner
   border lines (thin, along an edge) and shadows (wide along an edge and faint). Paper needs
   MIN_CONTRAST_PAPER of contrast to count as ink at all: a blank page is no_ink, never a
   guess.
2. Extract: the ink's box is cut from the full-resolution image and reduced only as far as
   needed (a small digit on a huge canvas keeps its detail); ink strength is mapped to MNIST's
   profile: paper 0, stroke cores saturated at 1.
3. MNIST: scale to fit 20x20 (INTER_AREA), place in 28x28 by an integer shift that puts the
   centre of mass nearest (14, 14) in pixel-index coordinates, as MNIST itself did (its digits'
   mean centre of mass is (13.99, 14.01) with a spread of 0.29 px: integer shifts).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from digitd.codes import REASONS, Rejected
from digitd.components import label, without
from digitd.pngcheck import check_png
from digitd.ruling import remove_ruling

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "REASONS",
    "Prepared",
    "Rejected",
    "decode_png",
    "normalise",
    "prepare",
]

DEFAULT_MAX_PIXELS = 40_000_000

SIZE = 28  # the model's input side
BOX = 20  # MNIST's digits are scaled to fit this box...
CENTRE = 14.0  # ...and shifted so that their centre of mass is here (pixel-index coordinates)

LOCATE_SIZE = 192  # longest side of the copy the ink is located on
STRIP = 2  # ...unless a ruled strip, one side this many times the other (see locate)
POOL, POOL_FROM = 4, 8  # pages reduced 8x or more: the last 4x keeps each block's darkest

COARSE_SIZE = 48  # longest side of the copy the paper's background is estimated on
WORK_SIZE = 96  # the digit's longest side when it is cut out for the final scaling
_SQUARE3 = np.ones((3, 3), np.uint8)  # a one-pixel dilation's kernel (read only)
_INDEX = np.arange(SIZE, dtype=np.float32)  # pixel indices, for the centre of mass
_BINCOUNT_BELOW = 2500  # pixels: bincount and calcHist cost alike there (_hist; one thread)


@dataclass(frozen=True)
class Prepared:
    """A decoded image (8-bit grey or BGR, alpha on white: for the preview) and the model input."""

    image: np.ndarray
    model_input: np.ndarray  # (28, 28) float32 in [0, 1], ink bright


def prepare(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
    """PNG bytes -> Prepared; raises Rejected (see REASONS)."""
    image = decode_png(data, max_pixels)
    return Prepared(image=image, model_input=normalise(image))


def decode_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check the PNG's structure before decoding, decode it, return 8-bit grey or BGR.

    Every flavour a user may drop: 1- to 16-bit grey, grey+alpha, RGB, RGBA, palette with or
    without transparency, interlaced. Alpha is composited over white (paint programs export
    dark ink on a transparent background).
    """
    check_png(bytes(data) if not isinstance(data, bytes) else data, max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise Rejected("corrupt", f"the PNG data cannot be decoded ({exc.msg.strip()})") from exc
    if image is None or image.size == 0:
        raise Rejected("corrupt", "the PNG data cannot be decoded")
    return _to_uint8(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Any dtype, 1-4 channels -> uint8 grey (H, W) or BGR (H, W, 3), alpha over white."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)):
        raise ValueError(f"not an image: shape {image.shape}")
    if image.dtype != np.uint8:
        image = _as_uint8(image)
    if image.ndim == 3 and image.shape[2] in (2, 4):
        image = _composite_on_white(image)
    return image


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=1 / 257)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        top = float(np.nanmax(image)) if image.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0
        return np.clip(np.nan_to_num(image) * scale + 0.5, 0, 255).astype(np.uint8)
    top = int(image.max()) if image.size else 0
    if top > 255:
        return np.clip(image.astype(np.float64) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _composite_on_white(image: np.ndarray) -> np.ndarray:
    """grey+alpha or BGRA -> grey or BGR, painted over a white page. Channel by channel: on
    the interleaved pixels (strided views, a merged alpha) the same arithmetic cost 4x."""
    *colour, alpha = cv2.split(image)
    if cv2.minMaxLoc(alpha)[0] != 255:  # not opaque: composite
        # white - (white - colour) * alpha: ink where opaque, white where transparent
        colour = [cv2.bitwise_not(cv2.multiply(cv2.bitwise_not(c), alpha, scale=1 / 255))
                  for c in colour]
    return colour[0] if len(colour) == 1 else cv2.merge(colour)


# --------------------------------------------------------------------------------------------
# Normalisation


def normalise(image: np.ndarray) -> np.ndarray:
    """A decoded image (any dtype, grey/BGR/with alpha) -> (28, 28) float32 model input.

    Raises Rejected("no_ink") for a blank, uniform or fully transparent image, or an empty
    form field (printed ruling only).
    """
    page = locate(image)
    mask, box = _digit_mask(page.ink, page.floor, page.top, page.level)
    return finish(extract(page, mask, box))


@dataclass(frozen=True)
class Located:
    """Step 1's outcome: the page as dark ink on light paper, and its ink on a small copy."""

    img: np.ndarray  # the full-resolution image, light ink inverted to dark
    background: np.ndarray  # the paper, on the small copy
    ink: np.ndarray  # uint8: how much darker than the paper each small pixel is
    floor: int  # residuals up to this are paper noise
    top: int  # the strongest ink
    level: int  # residuals above this are ink (_ink_level)
    f: int  # full-resolution pixels per small pixel
    ruling: np.ndarray | None  # a form's printed ruling on the small copy (digitd.ruling)


def locate(image: np.ndarray) -> Located:
    """Step 1: the paper and the ink (without a form's ruling) on a copy at most LOCATE_SIZE
    pixels wide. Raises Rejected("no_ink") when there is no ink, or only ruling.

    A strip (a form's field, a line of writing: one side at least STRIP times the other) on
    which printed ruling was found is located again on a copy of as many pixels as a square
    one's (LOCATE_SIZE squared), when that is finer: its ruling is then as long and thick in
    pixels as a square field's, and the walls of a row of boxes are lines, not 1s."""
    img = _to_uint8(image)
    height, width = img.shape[:2]
    # (On a strip of paper, never reduce the short side to nothing.)
    f = max(1, min(-(-max(height, width) // LOCATE_SIZE), height, width))
    page = _locate(img, f)
    if page.ruling is not None and max(height, width) >= STRIP * min(height, width):
        finer = max(1, math.ceil(math.sqrt(height * width) / LOCATE_SIZE))
        if finer < f:
            page = _locate(img, finer)
    return page


def _locate(img: np.ndarray, f: int) -> Located:
    """locate() with f full-resolution pixels to one pixel of the copy."""
    height, width = img.shape[:2]

    # 1. Locate the ink on a small copy, f full-resolution pixels to one small pixel. On huge
    # pages the last step down takes each block's darkest pixel (lightest for light ink), not
    # its mean: the thin strokes of a small digit keep their full contrast.
    pool = POOL if f >= POOL_FROM else 1
    area = -(-f // pool)
    if area * pool > min(height, width):
        pool, area = 1, f
    f = area * pool
    if f > 1:
        base = img[: height // f * f, : width // f * f]
        inter = cv2.resize(base, None, fx=1 / area, fy=1 / area, interpolation=cv2.INTER_AREA)
    else:
        inter = img
    look = inter if pool == 1 else cv2.resize(inter, None, fx=1 / pool, fy=1 / pool,
                                              interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(look, cv2.COLOR_BGR2GRAY) if look.ndim == 3 else look
    hist = _hist(grey)
    mode = int(hist.argmax())
    # Counts below, near and above the mode, from one running sum (whole numbers, exact in
    # float32 at LOCATE_SIZE's at most 36,864 pixels)
    upto = hist.cumsum()
    darker = upto[mode - 25] if mode >= 25 else 0.0  # hist[: mode - 24]
    near_mode = upto[min(mode + 24, 255)] - darker  # hist[mode - 24 : mode + 25]
    lighter = upto[255] - upto[min(mode + 24, 255)]  # hist[mode + 25 :]
    flat = hist[mode] >= 0.5 * grey.size and near_mode - hist[mode] < 0.1 * grey.size
    # A digital drawing (MNIST itself, a paint program's export) has paper of one flat value,
    # the ink is whatever differs from it: no lighting or noise to estimate (`flat` below).
    light = lighter > darker if flat else _light_ink(grey)
    if light:  # make it dark ink on light paper
        img = cv2.bitwise_not(img)
        inter = cv2.bitwise_not(inter) if f > 1 else img
    small = _min_pool(inter, pool) if pool > 1 else inter
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    if flat:
        if small.ndim == 3:
            mode = int(_hist(grey).argmax())
            paper = cv2.mean(small, cv2.compare(grey, mode, cv2.CMP_EQ))[:3]
            background = np.full_like(small, np.round(paper))
        else:
            if pool > 1:
                mode = int(_hist(grey).argmax())
            elif light:  # grey is the copy looked at, inverted: its histogram reversed
                mode = int(hist[::-1].argmax())
            background = np.empty(small.shape, np.uint8)
            background.fill(mode)
    else:
        background = _background(small)
    ink = _residual(background, small)
    floor = MIN_FLOOR if flat else _noise_floor(ink, grey)
    min_contrast = MIN_CONTRAST if flat else MIN_CONTRAST_PAPER
    top, level = _ink_level(ink, floor, min_contrast)
    ruling = remove_ruling(ink, level, faint=max(floor, level // 2))
    if ruling.mask is not None:  # a form's printed lines, boxes or squares: not the digit
        if ruling.empty:
            raise Rejected("no_ink", "only printed ruling (lines, boxes, squares) and no "
                                     "handwriting: an empty form field")
        ink = ruling.ink
        top, level = _ink_level(ink, floor, min_contrast)
    return Located(img=img, background=background, ink=ink, floor=floor, top=top, level=level,
                   f=f, ruling=ruling.mask)


@dataclass(frozen=True)
class Cut:
    """Step 2's outcome: ink cut out at a useful resolution, and where it came from."""

    ink: np.ndarray  # uint8 residual
    mask: np.ndarray  # the ink's parts, dilated by one pixel
    binary: np.ndarray  # the ink's parts themselves
    floor: int  # residuals up to this are paper noise
    origin: tuple[int, int]  # (x, y) of the cut's top-left corner in the input's pixels
    scale: int  # input pixels per pixel of the cut
    # Where the cut was labelled (_extract): the labelling and the specks then dropped from
    # it, from which `parts` gives label(binary) without labelling again (segment._line).
    labelled: tuple[int, np.ndarray, np.ndarray] | None = None
    dropped: np.ndarray | None = None  # a bool per part of `labelled`: a speck, dropped

    @property
    def parts(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """label(binary), where the cut was labelled; None where it was not."""
        if self.labelled is None or self.dropped is None:
            return self.labelled
        return without(self.labelled, self.dropped)


def extract(page: Located, mask: np.ndarray, box: tuple[int, int, int, int],
            side: int | None = None) -> Cut:
    """Step 2: the ink under `mask` within `box` (small-copy pixels) at a useful resolution.
    `side` (small pixels, default the box's longest side) is the length brought to about
    WORK_SIZE pixels when the full resolution allows it."""
    x, y, w, h = box
    if page.f == 1:
        x0, y0 = max(0, x - 1), max(0, y - 1)
        binary = mask[y0 : y + h + 1, x0 : x + w + 1]
        crop_mask = cv2.dilate(binary, _SQUARE3)
        return Cut(page.ink[y0 : y + h + 1, x0 : x + w + 1], crop_mask, binary, page.floor,
                   (x0, y0), 1)
    return _extract(page.img, page.background, mask, box, page.f, page.floor, page.ruling,
                    side)


def finish(cut: Cut) -> np.ndarray:
    """Step 3: ink strength mapped to MNIST's profile, fit 20x20, centre of mass at (14, 14)."""
    return _place(_ink_profile(cut.ink, cut.mask, cut.floor))


def _min_pool(image: np.ndarray, k: int) -> np.ndarray:
    """Each k x k block's minimum (per channel); the sides are multiples of k. (An erosion
    whose window starts at each pixel, every k-th pixel of it: numpy's min over the blocks'
    axes cost 70 times as much.)"""
    eroded = cv2.erode(image, np.ones((k, k), np.uint8), anchor=(0, 0))
    return np.ascontiguousarray(eroded[::k, ::k])


def _light_ink(grey: np.ndarray) -> bool:
    """True when the ink is lighter than the paper (white on black).

    Ink is the minority of the pixels, so after removing slow lighting changes (a high-pass:
    the image minus its local mean) the distribution has its long tail on the ink's side: its
    skewness is positive for light ink and negative for dark ink. A bold digit that fills a
    tight crop is no minority and leaves the skewness near 0 (-0.3 to 0.3 on bold form
    fields): a weakly positive one (below CLEAR_SKEW) is settled by what runs along the
    image's edges, the paper: the lighter or the darker of the two (Otsu's) classes of pixels.
    (Not a weakly negative one: uneven light, shadows and a scanner's border line along the
    edges are commoner on dark-ink pages, and the skew there was right.)
    """
    h, w = grey.shape
    k = max(3, min(h, w) // 3) | 1
    g = grey.astype(np.float32)
    high = (g - cv2.blur(g, (k, k), borderType=cv2.BORDER_REFLECT)).ravel()
    spread = float(np.dot(high, high)) / high.size
    if spread <= 0.0:
        return False
    skew = float(np.dot(high, high * high)) / high.size / spread**1.5
    if skew <= 0.0 or skew >= CLEAR_SKEW:
        return skew > 0.0
    split, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    edges = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    return np.count_nonzero(edges <= split) > edges.size // 2


def _background(small: np.ndarray) -> np.ndarray:
    """The paper without its (dark) ink: a closing on a coarse copy, smoothed and enlarged.

    The coarse copy is first extended beyond its edges by continuing its slope (point
    reflection, after a small closing so that a thin border line does not steer it): a closing
    against a replicated border would carry the bright middle of a vignetted page out to its
    darker edges and make them look like ink.
    """
    h, w = small.shape[:2]
    c = max(1, min(-(-max(h, w) // COARSE_SIZE), h, w))
    coarse = small if c == 1 else cv2.resize(small, None, fx=1 / c, fy=1 / c,
                                             interpolation=cv2.INTER_AREA)
    ch, cw = coarse.shape[:2]
    # Wider than any stroke: a stroke is at most ~1/6 of a digit, a digit at most the canvas
    # (per axis: on a long strip of paper the light still varies across the short side).
    k = (_odd(0.3 * cw), _odd(0.3 * ch))
    k_wide = (_odd(0.7 * cw), _odd(0.7 * ch))
    s = (_odd(k[0] / 2), _odd(k[1] / 2))
    rx, ry = k_wide[0] // 2 + s[0] // 2 + 1, k_wide[1] // 2 + s[1] // 2 + 1
    # Thin dark lines and dots (a scanner's border, dust) must not steer the extrapolation.
    page = _closing(coarse, (3, 3), cv2.BORDER_REFLECT_101).astype(np.float32)
    if min(ch, cw) >= 3:
        page = (2 * cv2.copyMakeBorder(page, ry, ry, rx, rx, cv2.BORDER_REPLICATE)
                - cv2.copyMakeBorder(page, ry, ry, rx, rx, cv2.BORDER_REFLECT_101))
    else:
        page = cv2.copyMakeBorder(page, ry, ry, rx, rx, cv2.BORDER_REPLICATE)
    paper = _closing(page, k)
    # A bold digit's solid parts can be wider than that: where a closing twice as wide finds
    # paper much brighter (ink is dark, a shadow only dims the page), it is ink, not paper.
    wide = _closing(page, k_wide)
    paper = np.where(paper < wide * 0.55, wide, paper)
    paper = cv2.blur(paper, s)[ry : ry + ch, rx : rx + cw]
    paper = np.clip(paper + 0.5, 0, 255).astype(np.uint8)
    # The closing keeps paper brighter than its neighbours; never let blur darken it below ink.
    paper = cv2.max(paper, coarse)
    if c > 1:
        paper = cv2.resize(paper, (w, h), interpolation=cv2.INTER_LINEAR)
    return paper


def _odd(x: float) -> int:
    return max(3, round(x)) | 1


def _closing(image: np.ndarray, k: tuple[int, int],
             border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, k)
    return cv2.morphologyEx(image, cv2.MORPH_CLOSE, kernel, borderType=border)


def _residual(paper: np.ndarray, image: np.ndarray) -> np.ndarray:
    """How much darker than the paper each pixel is, in its most-changed channel (uint8)."""
    diff = cv2.subtract(paper, image)
    if diff.ndim == 3:
        diff = cv2.max(cv2.max(diff[:, :, 0], diff[:, :, 1]), diff[:, :, 2])
    return diff


def _hist(ink: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The 256 counts of a uint8 map (under `mask`), as float32: calcHist's, which bincount
    gives unmasked for less on small maps (an MNIST digit's 28 x 28) and for more on larger
    ones (a number's located copy: 24 against 14 us at 68 x 161)."""
    if mask is None and ink.dtype == np.uint8 and ink.size < _BINCOUNT_BELOW:
        return np.bincount(ink.ravel(), minlength=256).astype(np.float32)
    return cv2.calcHist([ink], [0], mask, [256], [0, 256]).ravel()


def _percentile(hist: np.ndarray, q: float) -> int:
    cum = hist.cumsum()  # the methods: numpy's function wrappers cost as much again here
    if cum[-1] <= 0:
        return 0
    return int(cum.searchsorted(q * cum[-1]))


# Ink must be at least this much darker than the paper (of 255): on a flat digital page any
# clear difference is ink; on paper, uneven light leaves residuals of up to ~60 on blank pages
# (measured on 200 generated blank pages), while the faintest realistic scan's ink reaches ~86.
MIN_CONTRAST = 28
MIN_CONTRAST_PAPER = 64
MIN_FLOOR = 8  # residuals up to this are paper, even on a noiseless page
CLEAR_SKEW = 1.0  # the page's skewness says the ink's polarity beyond this (_light_ink)


def _noise_floor(ink: np.ndarray, grey: np.ndarray, base: float = 0.5) -> int:
    """The level below which the residual is paper noise.

    The paper is the majority of the pixels: its median residual is the background estimate's
    bias, and the noise's spread comes from neighbouring pixels' differences (their median is
    about sigma, and edges of ink are too few to move it).
    """
    step = cv2.absdiff(grey[:, 1:], grey[:, :-1]) if grey.shape[1] > 1 else grey[:, :0]
    sigma = _percentile(_hist(step), 0.5) if step.size else 0
    return max(MIN_FLOOR, _percentile(_hist(ink), base) + 4 * sigma)


def _ink_level(ink: np.ndarray, floor: int, min_contrast: int) -> tuple[int, int]:
    """(The strongest ink, the level above which a pixel is ink): Otsu between paper and ink,
    never below the noise floor. Raises no_ink when nothing is dark enough to be ink."""
    top = int(cv2.minMaxLoc(ink)[1])
    if top < max(min_contrast, floor + 8):
        raise Rejected("no_ink", "no ink found: the image is blank or uniform")
    otsu, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return top, max(floor, min(int(otsu), (floor + top) // 2))


@dataclass(frozen=True)
class Components:
    """The ink's connected components on the small copy (OpenCV's labels and stats, the
    background being label 0) and those that may be writing: they reach strong ink and are
    neither a scanner's border line nor a faint shadow along an edge."""

    binary: np.ndarray
    labels: np.ndarray
    stats: np.ndarray  # (n, 5): x, y, w, h, area; row 0 is the background
    candidates: list[int]  # labels (1..n-1)


def ink_components(ink: np.ndarray, floor: int, top: int, level: int) -> Components:
    """The small copy's ink parts, given the strongest ink and the ink level (_ink_level);
    Rejected("no_ink") if none."""
    binary = cv2.compare(ink, level, cv2.CMP_GT)
    n, labels, stats = label(binary)
    if n <= 1:
        raise Rejected("no_ink", "no ink found: the image is blank or uniform")
    # Hysteresis: a part of the digit reaches well above the paper somewhere; faint blobs
    # (quantised gradients, paper texture, the edge of a shadow) do not.
    if n == 2:
        strong = np.zeros(1, np.int64)  # the one component holds the maximum
    else:
        high = max(level, floor + (top - floor) * 2 // 5)
        # the labels present above `high`, in order (a count per label: no sort)
        strong = np.flatnonzero(np.bincount(labels[ink > high], minlength=n)[1:])
    candidates = _drop_edge_lines(stats[1:], labels, ink, strong)
    if not candidates:
        raise Rejected("no_ink", "no ink found: only specks or lines along the edges")
    return Components(binary, labels, stats, [i + 1 for i in candidates])


def mask_of(parts: Components, keep: list[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The pixels of the components `keep` (labels) and their bounding box."""
    stats = parts.stats
    if len(stats) == 2:
        mask = parts.binary
    else:
        lut = np.zeros(len(stats), np.uint8)
        lut[np.asarray(keep)] = 255
        mask = lut.take(parts.labels)
    if len(keep) == 1:  # nearly always: one stroke's component
        x, y, w, h = stats[keep[0], :4].tolist()
        return mask, (x, y, w, h)
    boxes = stats[keep, :4].tolist()  # x, y, w, h of each
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return mask, (x0, y0, x1 - x0, y1 - y0)


def _digit_mask(ink: np.ndarray, floor: int, top: int,
                level: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The digit's pixels (specks and border lines dropped) and their bounding box, given the
    strongest ink and the ink level (_ink_level)."""
    parts = ink_components(ink, floor, top, level)
    return mask_of(parts, _one_digit(parts.stats, parts.candidates))


def _drop_edge_lines(stats: np.ndarray, labels: np.ndarray, ink: np.ndarray,
                     strong: np.ndarray) -> list[int]:
    """Indices (into stats, background excluded) of the components that reach strong ink,
    without scanner border lines and faint shadows along the edges."""
    height, width = ink.shape
    n = len(stats) + 1
    if len(strong) > 1:
        # How much of each edge every component lies on.
        touch = np.maximum(
            np.maximum(np.bincount(labels[0], minlength=n), np.bincount(labels[-1], minlength=n))
            / width,
            np.maximum(np.bincount(labels[:, 0], minlength=n),
                       np.bincount(labels[:, -1], minlength=n)) / height,
        )[1:]
    candidates, hugging = [], []
    for i in strong.tolist():
        x, y, w, h, area = stats[i].tolist()
        if len(strong) > 1 and touch[i] >= 0.4:
            # Lies along an edge: a scanner's border line (thin), or a shadow (a faint wide band);
            # judged below against the rest. A tightly cropped digit touching edges is not thin.
            thin = min(w, h) <= 0.1 * (height if w > h else width)
            if thin:
                continue
            hugging.append(i)
            continue
        candidates.append(i)
    if hugging:
        if candidates:  # each component's mean darkness
            darkness = np.bincount(labels.ravel(), ink.ravel(), minlength=n)[1:] / stats[:, 4]
            best = max(darkness[i] for i in candidates)
            candidates += [i for i in hugging if darkness[i] >= 0.6 * best]
        else:
            candidates = hugging
    return candidates


def _one_digit(stats: np.ndarray, candidates: list[int]) -> list[int]:
    """The labels that make up one digit: the largest part, parts nearly as large, and
    smaller ones close to it (a 5's detached bar); far specks are dropped."""
    if len(candidates) == 1:
        return list(candidates)
    areas = stats[:, 4]
    main = max(candidates, key=lambda i: areas[i])
    mx, my, mw, mh, big = stats[main].tolist()
    reach = 0.25 * max(mw, mh)
    keep = [main]
    for i in candidates:
        if i == main:
            continue
        x, y, w, h, area = stats[i].tolist()
        gap_x = max(0, mx - (x + w), x - (mx + mw))
        gap_y = max(0, my - (y + h), y - (my + mh))
        near = gap_x <= reach and gap_y <= reach
        if area >= 0.3 * big or (near and area >= 0.04 * big):
            keep.append(i)
    return keep


def _extract(img, background, mask, box, f, floor, ruling=None, side=None) -> Cut:
    """Cut the digit's box (plus a margin) from the full-resolution image, reduced so that
    `side` (default the box's longest side) is about WORK_SIZE; with its ink residual, mask
    and noise floor. `ruling`: the printed ruling found on the small copy, kept out of the
    digit and of the paper's noise estimate."""
    x, y, w, h = box
    pad = 2  # small pixels: one for the mask's dilation, one of paper to measure the noise on
    sh, sw = mask.shape
    x0, y0 = max(0, x - pad), max(0, y - pad)
    x1, y1 = min(sw, x + w + pad), min(sh, y + h + pad)
    side = max(w, h) if side is None else side
    f2 = max(1, min(f, (side * f) // WORK_SIZE))  # full-res pixels per working pixel
    crop = img[y0 * f : y1 * f, x0 * f : x1 * f]
    ch, cw = crop.shape[:2]
    ch, cw = ch // f2 * f2, cw // f2 * f2
    crop = crop[:ch, :cw]
    if f2 > 1:
        crop = cv2.resize(crop, None, fx=1 / f2, fy=1 / f2, interpolation=cv2.INTER_AREA)
    size = (crop.shape[1], crop.shape[0])
    paper = cv2.resize(background[y0:y1, x0:x1], size, interpolation=cv2.INTER_LINEAR)
    ink = _residual(paper, crop)
    near = cv2.dilate(mask[y0:y1, x0:x1], _SQUARE3)
    near = cv2.resize(near, size, interpolation=cv2.INTER_NEAREST)
    paper_only = cv2.bitwise_not(near)
    if ruling is not None:
        printed = cv2.resize(ruling[y0:y1, x0:x1], size, interpolation=cv2.INTER_NEAREST)
        near = cv2.bitwise_and(near, cv2.bitwise_not(printed))
        paper_only = cv2.bitwise_and(paper_only, cv2.bitwise_not(printed))
    # The noise at this resolution (more than on the reduced copy): from the paper in the
    # margin, and from neighbouring pixels' differences.
    paper_hist = _hist(ink, paper_only)
    if paper_hist.sum() >= 50:
        p50, p98 = _percentile(paper_hist, 0.5), _percentile(paper_hist, 0.98)
        local = p98 + (p98 - p50) // 2
    else:  # no margin (the digit fills the page): the lowest residuals are paper
        grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
        local = _noise_floor(ink, grey, base=0.1)
    # Never so high that it wipes out the ink itself.
    floor = min(max(floor, local), int(cv2.minMaxLoc(ink)[1]) // 2)
    # Only the digit's own parts at this resolution: no stray noise at the mask's edges.
    binary = cv2.bitwise_and(cv2.compare(ink, floor, cv2.CMP_GT), near)
    labelled = label(binary)
    n, labels, stats = labelled
    dropped = None
    if n > 2:
        areas = stats[1:, 4]
        specks = areas < max(3, 0.02 * areas.max())
        if specks.any():  # (otherwise the parts are `binary` as it is)
            keep = np.zeros(n, np.uint8)
            keep[1:][~specks] = 255
            binary = keep.take(labels)
            dropped = specks
        near = cv2.dilate(binary, _SQUARE3)
    return Cut(ink, near, binary, floor, (x0 * f, y0 * f), f2, labelled, dropped)


def _ink_profile(ink: np.ndarray, mask: np.ndarray, floor: int) -> np.ndarray:
    """Residual -> float32 ink strength: 0 at the noise floor, 1 at the strokes' typical level,
    so stroke cores saturate like MNIST's; zero outside the digit's components."""
    ink = cv2.bitwise_and(ink, mask)
    hist = _hist(ink)
    hist[: floor + 1] = 0
    full = max(_percentile(hist, 0.6), floor + 8)
    return cv2.LUT(ink, _strength_table(floor, full))


@functools.lru_cache(maxsize=4096)
def _strength_table(floor: int, full: int) -> np.ndarray:
    """The residual -> ink strength lookup table of _ink_profile (read only: it is shared)."""
    levels = (np.arange(256, dtype=np.float32) - floor) * (1.0 / (full - floor))
    table = np.clip(levels, 0.0, 1.0)
    table.setflags(write=False)
    return table


def _place(digit: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit BOXxBOX keeping the aspect ratio, centre of mass to (14, 14)."""
    x, y, w, h = cv2.boundingRect(cv2.compare(digit, 0, cv2.CMP_GT))
    if w == 0 or h == 0:
        raise Rejected("no_ink", "no ink found: the image is blank or uniform")
    digit = digit[y : y + h, x : x + w]
    scale = BOX / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        shrinking = scale < 1
        digit = cv2.resize(digit, (nw, nh),
                           interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    # (the ufuncs' reduce: what .max() and .sum() run, without their Python wrappers)
    top = float(np.maximum.reduce(digit, axis=None))
    if top <= 0:
        raise Rejected("no_ink", "no ink found: the image is blank or uniform")
    if top < 1.0:
        digit = digit / top  # exactly 1.0 at the maximum, as in MNIST
    # (Not cv2.moments: it reads an N x 2 array, a one-pixel-wide stroke, as a contour.)
    total = float(np.add.reduce(digit, axis=None))
    cy = float(_INDEX[:nh] @ np.add.reduce(digit, axis=1)) / total
    cx = float(np.add.reduce(digit, axis=0) @ _INDEX[:nw]) / total
    ox = min(max(round(CENTRE - cx), 0), SIZE - nw)
    oy = min(max(round(CENTRE - cy), 0), SIZE - nh)
    out = np.zeros((SIZE, SIZE), np.float32)
    out[oy : oy + nh, ox : ox + nw] = digit
    return out
