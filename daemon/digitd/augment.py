"""Training-time variation: the writers, pens and scanners MNIST's digits do not show.

Two kinds, both seeded so that `digitd train` is repeatable:

- `continental_forms(x, y, rng)` (NumPy, once before training): extra copies of some MNIST 7s
  with a bar across the stem and of some 1s with a long flag (and sometimes a foot), the
  forms written in much of Europe and Latin America.
- `mnist_batch(x, step, seed)` (TensorFlow, per batch): only what MNIST's own writers vary,
  for the second opinion (digitd.train): stroke width, rotation ±10°, zoom ±10%, shift ±2 px.
- `augment_batch(x, step, seed)` (TensorFlow, in the tf.data pipeline, per batch): elastic
  distortion, slant/shear up to ±20°, rotation, aspect changes, stroke width from hairline to
  marker, then the digit is put back into the model's input contract the way preprocessing
  does it (fit 20x20 keeping the aspect ratio, centre of mass at the centre, maximum 1.0),
  then low-resolution round trips (a 16-pixel scan enlarged), binarised or anti-aliased ink.

The saved model holds none of this: it is plain layers (see digitd.train).
"""

from __future__ import annotations

import math

import numpy as np

CANVAS = 40  # the digit is distorted on a larger canvas so that nothing is cut off
BOX = 20.0  # the input contract: the digit fits a 20x20 box ...
CENTRE = 14.0  # ... its centre of mass at (14, 14) of 28x28 (digitd.model, digitd.preprocess)
SHEAR_DEG = 20.0
ROTATE_DEG = 8.0
ASPECT = 0.25  # x scale between exp(-0.25) and exp(0.25)
ELASTIC_PX = 2.0  # typical displacement of the smooth random field, in pixels of 28
P_LOWRES, P_BINARY, P_BLUR = 0.15, 0.12, 0.1
P_MILD, MILD = 0.5, 0.3  # this share of digits gets only this fraction of the distortions


# --- continental forms (NumPy, once) ------------------------------------------------------


def continental_forms(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                      share: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Crossed 7s and flagged 1s drawn onto copies of `share` of the 7s and of the 1s.

    x: (N, 28, 28) uint8 MNIST-like digits (ink bright). Returns only the new digits.
    """
    import cv2

    out, labels = [], []
    for digit, draw in ((7, _cross_seven), (1, _flag_one)):
        idx = np.flatnonzero(y == digit)
        idx = rng.choice(idx, size=int(len(idx) * share), replace=False)
        for i in idx:
            img = draw(x[i].copy(), rng, cv2)
            if img is not None:
                out.append(img)
                labels.append(digit)
    if not out:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)
    return np.stack(out), np.array(labels, np.uint8)


def _stroke_width(img: np.ndarray) -> int:
    """Typical stroke width in pixels: ink area over skeleton-ish length (area / height)."""
    ink = img > 127
    rows = np.flatnonzero(ink.any(1))
    if len(rows) == 0:
        return 2
    widths = ink[rows].sum(1)
    return int(np.clip(np.median(widths), 1, 5))


def _cross_seven(img: np.ndarray, rng: np.random.Generator, cv2) -> np.ndarray | None:
    """A horizontal bar through the 7's stem at about mid-height."""
    ink = img > 127
    rows = np.flatnonzero(ink.any(1))
    if len(rows) < 8:
        return None
    top, bottom = rows[0], rows[-1]
    r = int(round(top + (bottom - top) * rng.uniform(0.45, 0.6)))
    cols = np.flatnonzero(ink[r])
    if len(cols) == 0:
        return None
    cx = float(cols.mean())
    half = (bottom - top) * rng.uniform(0.18, 0.3)
    tilt = rng.uniform(-1.5, 1.5)
    thick = max(1, min(3, _stroke_width(img) - int(rng.integers(0, 2))))
    p0 = (int(round(cx - half)), int(round(r + tilt)))
    p1 = (int(round(cx + half)), int(round(r - tilt)))
    cv2.line(img, p0, p1, 255, thick, cv2.LINE_AA)
    return img


def _flag_one(img: np.ndarray, rng: np.random.Generator, cv2) -> np.ndarray | None:
    """A long flag down-left from the 1's top (and in a third of them a foot)."""
    ink = img > 127
    rows = np.flatnonzero(ink.any(1))
    if len(rows) < 10:
        return None
    top, bottom = rows[0], rows[-1]
    height = bottom - top
    cols = np.flatnonzero(ink[top])
    tx = float(cols.mean())
    length = height * rng.uniform(0.3, 0.5)
    angle = math.radians(rng.uniform(20, 55))  # below the horizontal
    thick = max(1, min(3, _stroke_width(img)))
    end = (int(round(tx - length * math.cos(angle))), int(round(top + length * math.sin(angle))))
    cv2.line(img, (int(round(tx)), int(top)), end, 255, thick, cv2.LINE_AA)
    if rng.random() < 0.33:
        bcols = np.flatnonzero(ink[bottom])
        bx = float(bcols.mean()) if len(bcols) else tx
        half = height * rng.uniform(0.15, 0.25)
        cv2.line(img, (int(round(bx - half)), int(bottom)), (int(round(bx + half)), int(bottom)),
                 255, thick, cv2.LINE_AA)
    return img


# --- per batch (TensorFlow) ----------------------------------------------------------------


def mnist_batch(x, step, seed: int):
    """x: (B, 28, 28) float32 in [0, 1] -> the same with random stroke width, rotation (±10°),
    zoom (±10%) and shift (±2 px): the variation the issue-2 network (MNIST only, 99.66%) was
    trained with. Stateless random ops seeded by (seed, step)."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    rnd = [tf.random.stateless_uniform([n], seed=[seed, step * 8 + i], minval=-1.0, maxval=1.0)
           for i in range(5)]
    img = x[..., None]
    # stroke width: blend toward a 3x3 dilation (thicker) or erosion (thinner)
    dilated = tf.nn.max_pool2d(img, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-img, 3, 1, "SAME")
    w = rnd[0][:, None, None, None]
    img = tf.where(w > 0, img + 0.7 * w * (dilated - img), img - 0.5 * w * (eroded - img))
    # affine: output pixel p maps to input pixel c + R^-1 (p - c - t) / s
    angle = rnd[1] * (10.0 * math.pi / 180.0)
    k = 1.0 / (1.0 + 0.1 * rnd[2])
    tx, ty = 2.0 * rnd[3], 2.0 * rnd[4]
    c = 13.5
    cos, sin = tf.cos(angle) * k, tf.sin(angle) * k
    transforms = tf.stack([
        cos, sin, c - cos * (c + tx) - sin * (c + ty),
        -sin, cos, c + sin * (c + tx) - cos * (c + ty),
        tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    img = tf.raw_ops.ImageProjectiveTransformV3(
        images=img, transforms=transforms, output_shape=tf.constant([28, 28]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.clip_by_value(img[..., 0], 0.0, 1.0)


def augment_batch(x, step, seed: int):
    """x: (B, 28, 28) float32 in [0, 1], ink bright -> the same, varied; stateless random ops
    seeded by (seed, step), so a run is repeatable whatever the threading.

    The geometry (elastic field, slant, rotation, aspect, and the return to the input
    contract) is composed into one sampling of the source, so the ink is interpolated once.
    """
    import tensorflow as tf

    n = tf.shape(x)[0]
    counter = [0]

    def uniform(shape, lo=-1.0, hi=1.0):
        counter[0] += 1
        return tf.random.stateless_uniform(shape, seed=[seed, step * 32 + counter[0]],
                                           minval=lo, maxval=hi)

    pad = (CANVAS - 28) // 2
    # Some digits stay close to MNIST's own (its test set must stay as well read as before).
    amount = tf.where(uniform(tf.stack([n]), 0.0, 1.0) < P_MILD, MILD, 1.0)
    src = tf.pad(x, [[0, 0], [pad, pad], [pad, pad]])[..., None]
    src = _stroke(src, uniform(tf.stack([n])) * amount)
    to_source = _distortion(uniform, n, amount)
    grid = tf.range(CANVAS, dtype=tf.float32)
    gy, gx = tf.meshgrid(grid, grid, indexing="ij")
    gy, gx = tf.tile(gy[None], [n, 1, 1]), tf.tile(gx[None], [n, 1, 1])
    warped = _sample(src, *to_source(gy, gx, on_grid=True))  # to find its box and mass
    oy, ox = _contract_grid(warped[..., 0], uniform, n)
    img = _scanner(_ink_profile(_sample(src, *to_source(oy, ox))), uniform, n)
    return _ink_profile(img)[..., 0]


def _ink_profile(img):
    """Stroke cores saturated like preprocessing leaves them: each digit divided by the level
    that 40% of its ink pixels reach (digitd.preprocess maps its ink's 60th percentile to 1)."""
    import tensorflow as tf

    flat = tf.reshape(img, [tf.shape(img)[0], -1])
    ranked = tf.sort(flat, axis=1, direction="DESCENDING")
    count = tf.reduce_sum(tf.cast(flat > 0.05, tf.int32), axis=1)
    level = tf.gather(ranked, (count * 2) // 5, batch_dims=1)
    return tf.clip_by_value(img / tf.maximum(level, 1e-3)[:, None, None, None], 0.0, 1.0)


def _distortion(uniform, n, amount):
    """A function (y, x) on the canvas -> where to read the source: slant (shear ±20°),
    rotation (±8°) and aspect (x scale e^±0.25) about the centre, plus a smooth elastic field
    (a 4x4 grid of random vectors, bicubically interpolated; its strength drawn per digit)."""
    import tensorflow as tf

    shear = tf.tan(uniform(tf.stack([n])) * amount * math.radians(SHEAR_DEG))
    angle = uniform(tf.stack([n])) * amount * math.radians(ROTATE_DEG)
    sx = tf.exp(uniform(tf.stack([n])) * amount * ASPECT)
    strength = ELASTIC_PX * (uniform(tf.stack([n]), 0.0, 1.0) ** 2 * amount)[:, None, None, None]
    coarse = uniform(tf.stack([n, 4, 4, 2]))
    field = tf.image.resize(coarse, [CANVAS, CANVAS], method="bicubic") * strength
    cos, sin = tf.cos(angle), tf.sin(angle)
    # forward p' = R S H p (H: x += shear * y; S: x *= sx); inverse = H^-1 S^-1 R^-1
    a, b = cos / sx, sin / sx
    c, d = -sin, cos
    a, b = a - shear * c, b - shear * d
    centre = (CANVAS - 1) / 2.0
    a, b, c, d = (v[:, None, None] for v in (a, b, c, d))

    def to_source(y, x, on_grid=False):
        ry, rx = y - centre, x - centre
        if on_grid:  # the canvas's own pixels: the field is defined there
            fy, fx = field[..., 0], field[..., 1]
        else:
            both = _sample(field, y, x)
            fy, fx = both[..., 0], both[..., 1]
        return (c * rx + d * ry + centre + fy), (a * rx + b * ry + centre + fx)

    return to_source


def _sample(img, sy, sx):
    """Bilinear sampling of img (B, H, W, C) at the points (sy, sx) (B, h, w) -> (B, h, w, C);
    zero outside."""
    import tensorflow as tf

    h, w, ch = img.shape[1], img.shape[2], img.shape[3]
    y0, x0 = tf.floor(sy), tf.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    flat = tf.reshape(img, [-1, h * w, ch])
    b = tf.shape(img)[0]
    out_shape = tf.concat([tf.shape(sy), [ch]], 0)

    def tap(yy, xx):
        inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        index = tf.cast(tf.clip_by_value(yy, 0, h - 1) * w + tf.clip_by_value(xx, 0, w - 1),
                        tf.int32)
        vals = tf.gather(flat, tf.reshape(index, [b, -1]), batch_dims=1)
        return tf.reshape(vals, out_shape) * tf.cast(inside, tf.float32)[..., None]

    return ((1 - fy) * (1 - fx) * tap(y0, x0) + (1 - fy) * fx * tap(y0, x0 + 1)
            + fy * (1 - fx) * tap(y0 + 1, x0) + fy * fx * tap(y0 + 1, x0 + 1))


def _stroke(img, w):
    """Stroke width: w < 0 thins toward a 3x3 erosion (hairline), 0 < w <= 0.8 thickens toward a
    3x3 dilation, beyond that toward a 5x5 dilation (a marker)."""
    import tensorflow as tf

    w = w[:, None, None, None]
    d3 = tf.nn.max_pool2d(img, 3, 1, "SAME")
    d5 = tf.nn.max_pool2d(d3, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-img, 3, 1, "SAME")
    thin = img + (-w) * 0.8 * (eroded - img)
    thick = tf.where(w <= 0.8, img + (w / 0.8) * (d3 - img), d3 + ((w - 0.8) / 0.2) * (d5 - d3))
    return tf.where(w < 0, thin, thick)


def _contract_grid(g, uniform, n):
    """Where on the canvas each pixel of the 28x28 output reads from, so that the ink's box
    fits 20x20 keeping its aspect ratio and its centre of mass lands on (14, 14) give or take
    half a pixel (preprocessing's integer shift): (oy, ox), each (B, 28, 28)."""
    import tensorflow as tf

    ink = tf.cast(g > 0.1, tf.float32)
    idx = tf.range(CANVAS, dtype=tf.float32)
    rows, cols = tf.reduce_max(ink, axis=2), tf.reduce_max(ink, axis=1)
    big = float(CANVAS)
    top = tf.reduce_min(tf.where(rows > 0, idx, big), axis=1)
    bottom = tf.reduce_max(tf.where(rows > 0, idx, -1.0), axis=1)
    left = tf.reduce_min(tf.where(cols > 0, idx, big), axis=1)
    right = tf.reduce_max(tf.where(cols > 0, idx, -1.0), axis=1)
    extent = tf.maximum(tf.maximum(bottom - top, right - left) + 1.0, 1.0)
    inv = extent / BOX  # canvas pixels per output pixel
    mass = g * ink
    total = tf.maximum(tf.reduce_sum(mass, axis=[1, 2]), 1e-6)
    cy = tf.reduce_sum(mass * idx[None, :, None], axis=[1, 2]) / total
    cx = tf.reduce_sum(mass * idx[None, None, :], axis=[1, 2]) / total
    jy, jx = uniform(tf.stack([n])) * 0.5, uniform(tf.stack([n])) * 0.5
    out = tf.range(28, dtype=tf.float32)
    oy = cy[:, None] + (out[None] - CENTRE - jy[:, None]) * inv[:, None]
    ox = cx[:, None] + (out[None] - CENTRE - jx[:, None]) * inv[:, None]
    return (tf.tile(oy[:, :, None], [1, 1, 28]), tf.tile(ox[:, None, :], [1, 28, 1]))


def _scanner(img, uniform, n):
    """Some digits through a low-resolution scan (down to 16-24 px and back), some binarised
    (hard-edged ink), some softened (anti-aliased, a slightly blurred scan)."""
    import tensorflow as tf

    pick = uniform(tf.stack([n]), 0.0, 1.0)[:, None, None, None]
    coarse = uniform(tf.stack([n]), 0.0, 1.0)[:, None, None, None]

    def round_trip(size):  # the 28x28 frame at `size` px: the 20 px digit at 20 * size / 28
        small = tf.image.resize(img, [size, size], method="area")
        return tf.image.resize(small, [28, 28], method="bilinear")

    low = tf.where(coarse < 0.5, round_trip(16), round_trip(22))  # a digit 11 or 16 px tall
    binary = tf.cast(img > 0.45, tf.float32)
    soft = tf.nn.avg_pool2d(img, 3, 1, "SAME") * 0.5 + img * 0.5
    img = tf.where(pick < P_LOWRES, low, img)
    img = tf.where((pick >= P_LOWRES) & (pick < P_LOWRES + P_BINARY), binary, img)
    lo = P_LOWRES + P_BINARY
    return tf.where((pick >= lo) & (pick < lo + P_BLUR), soft, img)
