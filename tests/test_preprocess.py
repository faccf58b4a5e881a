"""Decoding every PNG flavour, the guards' reason codes, and the MNIST-style normalisation.

Real PNG bytes throughout (written by bench/pngwrite.py, which covers what OpenCV cannot
write: interlacing, palettes with tRNS, 1/2/4-bit, grey+alpha); no mocks.
"""

from __future__ import annotations

import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

import scans
from digitd.preprocess import (
    DEFAULT_MAX_PIXELS,
    REASONS,
    Prepared,
    Rejected,
    decode_png,
    normalise,
    prepare,
)
from pngwrite import bomb_png, chunk, encode_png


@pytest.fixture(scope="module")
def digit(sample) -> np.ndarray:
    """A '7' as MNIST has it: white ink on black, 28x28."""
    return sample[0][0]


def page(digit28: np.ndarray, scale: int = 4, pad: int = 30) -> np.ndarray:
    """The digit as dark ink on a white page, enlarged: 8-bit grey."""
    big = cv2.resize(digit28, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return np.pad(255 - big, pad, constant_values=255)


def similar(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two 28x28 model inputs (1.0 = identical up to brightness), the best over
    shifts of up to a pixel (the integer centring may round either way)."""
    return max(float(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b.ravel())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def assert_contract(x: np.ndarray) -> None:
    assert x.shape == (28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() == pytest.approx(1.0)
    assert x[0].max() == x[-1].max() == x[:, 0].max() == x[:, -1].max() == 0.0


def centre_of_mass(x: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:28, 0:28]
    return float((x * ys).sum() / x.sum()), float((x * xs).sum() / x.sum())


def reject_code(data: bytes, **kwargs) -> str:
    with pytest.raises(Rejected) as info:
        prepare(data, **kwargs)
    assert info.value.code in REASONS, info.value.code
    assert info.value.message
    return info.value.code


# --------------------------------------------------------------------------------------------
# Decoding every flavour


def flavours(digit28: np.ndarray) -> dict[str, bytes]:
    """The same digit, dark on a white page, in every PNG flavour a user may drop."""
    grey = page(digit28)
    ink = 255 - grey  # alpha for the transparent exports
    rgb = np.dstack([grey, grey, grey])
    pen = np.array([20, 40, 160])  # RGB: blue ink
    blue = (255 - ink[:, :, None] / 255 * (255 - pen)).astype(np.uint8)
    levels = np.round(ink / 255 * 15).astype(np.uint8)
    pal = np.array([[255 - 17 * i] * 3 for i in range(16)], np.uint8)
    zeros = np.zeros_like(grey)
    return {
        "grey 8-bit": encode_png(grey),
        "grey 16-bit": encode_png(grey.astype(np.uint16) * 257, bit_depth=16),
        "grey 1-bit": encode_png((grey > 127).astype(np.uint8), 0, bit_depth=1),
        "grey 4-bit interlaced": encode_png(grey // 17, 0, bit_depth=4, interlace=True),
        "grey+alpha": encode_png(np.dstack([zeros, ink])),
        "grey+alpha 16-bit": encode_png(np.dstack([zeros, ink]).astype(np.uint16) * 257,
                                        bit_depth=16),
        "RGB": encode_png(rgb),
        "RGB blue ink": encode_png(blue),
        "RGB 16-bit": encode_png(rgb.astype(np.uint16) * 257, bit_depth=16),
        "RGBA ink on transparent": encode_png(np.dstack([np.zeros_like(rgb), ink])),
        "RGBA opaque": encode_png(np.dstack([rgb, np.full_like(grey, 255)])),
        "palette": encode_png(levels, 3, palette=pal),
        "palette 4-bit": encode_png(levels, 3, bit_depth=4, palette=pal),
        "palette with tRNS": encode_png(
            levels, 3, palette=np.zeros((16, 3), np.uint8),
            transparency=bytes(17 * i for i in range(16))),
        "interlaced grey": encode_png(grey, interlace=True),
        "interlaced RGBA": encode_png(np.dstack([np.zeros_like(rgb), ink]), interlace=True),
        "OpenCV's own": cv2.imencode(".png", grey)[1].tobytes(),
    }


def test_every_flavour_decodes_to_the_same_digit(digit):
    reference = normalise(page(digit))
    for name, data in flavours(digit).items():
        image = decode_png(data)
        assert image.dtype == np.uint8, name
        assert image.ndim == 2 or image.shape[2] == 3, name  # alpha composited away
        assert image[0, 0].min() >= 250, f"{name}: the page is not white"
        prepared = prepare(data)
        assert isinstance(prepared, Prepared)
        assert_contract(prepared.model_input)
        assert similar(prepared.model_input, reference) > 0.93, name


def test_transparent_background_is_composited_on_white_not_black(digit):
    ink = 255 - page(digit)
    image = decode_png(encode_png(np.dstack([np.zeros_like(ink)] * 3 + [ink])))
    assert image.shape == ink.shape + (3,)
    assert (image[ink == 0] == 255).all()  # transparent -> white paper
    assert (image[ink == 255] == 0).all()  # opaque black ink stays black


def test_sixteen_bit_keeps_its_full_range():
    grey = np.full((40, 40), 65535, np.uint16)
    grey[10:30, 18:22] = 0
    image = decode_png(encode_png(grey, bit_depth=16))
    assert image.dtype == np.uint8 and image.max() == 255 and image.min() == 0


# --------------------------------------------------------------------------------------------
# Rejections, each with its reason code


def test_reason_table_has_every_code():
    for code in ("empty", "not_png", "truncated", "corrupt", "too_large", "no_ink",
                 "unreadable", "not_regular"):
        assert REASONS[code]


def test_empty():
    assert reject_code(b"") == "empty"


def test_text_and_jpeg_named_png_are_not_png(digit):
    assert reject_code(b"hello, this is not an image\n") == "not_png"
    jpeg = cv2.imencode(".jpg", page(digit))[1].tobytes()
    with pytest.raises(Rejected) as info:
        prepare(jpeg)
    assert info.value.code == "not_png" and "JPEG" in info.value.message


def test_truncated(digit):
    data = encode_png(page(digit))
    for cut in (4, 20, 40, len(data) // 2, len(data) - 5):
        assert reject_code(data[:cut]) == "truncated", cut


def test_bad_crc_is_corrupt(digit):
    data = bytearray(encode_png(page(digit)))
    data[45] ^= 0xFF  # inside the IDAT's compressed data: its CRC no longer matches
    assert reject_code(bytes(data)) == "corrupt"
    header = bytearray(encode_png(page(digit)))
    header[20] ^= 0x01  # the IHDR's height
    assert reject_code(bytes(header)) == "corrupt"


def test_undecodable_data_with_right_crcs_is_corrupt(digit):
    data = encode_png(page(digit))
    idat = data.index(b"IDAT") - 4
    garbage = b"this is no zlib stream at all" * 10
    broken = data[:idat] + chunk(b"IDAT", garbage) + chunk(b"IEND", b"")
    assert reject_code(broken) == "corrupt"


def test_bomb_is_refused_without_decoding_or_allocating():
    data = bomb_png(60000)  # 3.6 gigapixels declared
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(Rejected) as info:
        prepare(data)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.code == "too_large"
    assert "60000x60000" in info.value.message
    assert peak < 100_000, peak  # bytes: nothing proportional to the declared size
    assert elapsed < 0.05


def test_pixel_limit_is_configurable(digit):
    data = encode_png(page(digit))  # 172 x 172
    assert reject_code(data, max_pixels=10_000) == "too_large"
    assert prepare(data, max_pixels=172 * 172).model_input.shape == (28, 28)
    assert DEFAULT_MAX_PIXELS == 40_000_000


@pytest.mark.parametrize("image", [
    np.full((50, 60), 255, np.uint8),  # white
    np.zeros((50, 60), np.uint8),  # black
    np.full((50, 60, 3), (40, 120, 200), np.uint8),  # one colour
    np.full((1, 1), 0, np.uint8),  # 1x1
    np.dstack([np.zeros((30, 30, 3), np.uint8), np.zeros((30, 30), np.uint8)]),  # transparent
], ids=["white", "black", "colour", "1x1", "transparent"])
def test_blank_images_have_no_ink(image):
    channels = image.shape[2] if image.ndim == 3 else 1
    rgb = image[:, :, ::-1] if channels >= 3 else image
    if channels == 4:
        rgb = np.dstack([image[:, :, 2::-1], image[:, :, 3]])
    assert reject_code(encode_png(rgb)) == "no_ink"


def test_blank_paper_with_noise_and_uneven_light_has_no_ink():
    for i in range(8):
        assert reject_code(scans.blank_page(i)) == "no_ink", i


# --------------------------------------------------------------------------------------------
# Normalisation


def test_mnist_digits_come_back_as_themselves(sample):
    x = sample[0][:200]
    out = np.stack([normalise(d) for d in x])
    assert np.abs(out - x / 255).mean() < 0.02


def test_polarity_both_ways_gives_the_same_input(digit):
    dark_on_light = page(digit)
    light_on_dark = 255 - dark_on_light
    a, b = normalise(dark_on_light), normalise(light_on_dark)
    assert np.abs(a - b).max() < 1e-6
    noisy = np.random.default_rng(0).normal(0, 4, dark_on_light.shape)
    c = normalise(np.clip(dark_on_light + noisy + 0.5, 0, 255).astype(np.uint8))
    d = normalise(np.clip(light_on_dark + noisy + 0.5, 0, 255).astype(np.uint8))
    assert similar(c, d) > 0.98 and similar(a, c) > 0.97


@pytest.mark.parametrize(("label", "pen", "margin"), [(8, 9, 4), (3, 13, 6)])
def test_a_bold_marker_digit_filling_a_tight_crop_is_dark_ink(sample, label, pen, margin):
    """A marker digit nearly as large as the paper around it (a form field cut tightly)
    leaves no minority for the polarity test to find: the paper is what runs along the
    edges. Both were read as light ink on dark, the paper taken for the ink."""
    x, y = sample
    big = cv2.resize(x[int(np.flatnonzero(y == label)[0])], None, fx=5, fy=5,
                     interpolation=cv2.INTER_LINEAR)
    bold = cv2.dilate(big, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (pen, pen)))
    x0, y0, w, h = cv2.boundingRect(bold)
    bold = np.pad(bold[y0 : y0 + h, x0 : x0 + w], margin)
    ink = bold.astype(np.float32) / 255
    light = np.linspace(0.85, 1.0, ink.shape[1], dtype=np.float32)[None, :]
    noise = np.random.default_rng(0).normal(0, 3, ink.shape)
    scan = (200 * (1 - ink) + 80 * ink) * light + noise  # uneven light: not a flat page
    assert (ink > 0.5).mean() > 0.35
    scan = np.clip(scan + 0.5, 0, 255).astype(np.uint8)
    assert similar(normalise(scan), normalise(255 - bold)) > 0.98


def test_centre_of_mass_within_a_pixel_of_the_centre(sample):
    x = sample[0]
    for i in range(0, 120, 5):
        for data in (encode_png(x[i]), scans.render_scan(x[i], i)[0]):
            cy, cx = centre_of_mass(prepare(data).model_input)
            assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (i, cy, cx)


def bounding_box(x: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(x.max(1) > 0), np.flatnonzero(x.max(0) > 0)
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_aspect_ratio_is_kept():
    tall = np.full((300, 200), 255, np.uint8)
    tall[60:210, 90:100] = 0  # 150 x 10
    h, w = bounding_box(normalise(tall))
    assert h == 20 and w <= 3
    wide = np.full((200, 300), 255, np.uint8)
    wide[90:110, 50:250] = 0  # 20 x 200
    h, w = bounding_box(normalise(wide))
    assert w == 20 and h <= 3


def test_fits_twenty_pixels_and_keeps_mnists_intensity_profile(sample):
    inputs = []
    for i in range(0, 60, 5):
        x = prepare(scans.render_scan(sample[0][i], i)[0]).model_input
        assert_contract(x)
        assert max(bounding_box(x)) == 20
        inputs.append(x)
    inputs = np.stack(inputs)
    mnist = sample[0][:200] / 255
    # Saturated stroke cores and about as much ink as MNIST's digits (~5% at 1.0, sum ~96).
    assert (inputs >= 0.99).mean() > 0.5 * (mnist >= 0.99).mean()
    assert 0.8 < inputs.sum((1, 2)).mean() / mnist.sum((1, 2)).mean() < 1.25


@pytest.mark.parametrize("shape", [(800, 1000), (2000, 3000), (4000, 6000)])
def test_small_digit_on_a_huge_canvas_is_found(digit, shape):
    small = page(digit, scale=2, pad=0)  # a ~36 px digit, strokes ~4 px
    canvas = np.full(shape, 235, np.uint8)
    y, x = shape[0] * 3 // 4, shape[1] // 7
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = np.minimum(small, 235)
    noise = np.random.default_rng(1).normal(0, 3, (512, 512))
    canvas = np.clip(canvas + np.tile(noise, (shape[0] // 512 + 1, shape[1] // 512 + 1))
                     [: shape[0], : shape[1]], 0, 255).astype(np.uint8)
    assert similar(normalise(canvas), normalise(page(digit))) > 0.9


def test_specks_scanner_border_and_shadow_are_ignored(digit):
    clean = page(digit, scale=4, pad=100)
    dirty = clean.copy()
    dirty[:, :6] = 30  # the scanner's border at the left edge
    for x, y in ((20, 30), (300, 40), (330, 320), (40, 340), (200, 20)):
        cv2.circle(dirty, (x, y), 3, 60, -1)  # dust
    yy = np.mgrid[0 : dirty.shape[0], 0 : dirty.shape[1]][0]
    shadow = 1 - 0.3 / (1 + np.exp(-(yy - 0.85 * dirty.shape[0]) / 12))  # along the bottom
    dirty = (dirty * shadow).astype(np.uint8)
    assert similar(normalise(dirty), normalise(clean)) > 0.95


def test_a_detached_part_of_the_digit_is_kept():
    five = np.full((200, 200), 255, np.uint8)
    cv2.line(five, (70, 95), (70, 60), 0, 12)  # the 5's stem...
    cv2.ellipse(five, (95, 125), (35, 35), 0, -130, 150, 0, 12)  # ...its belly...
    cv2.line(five, (78, 45), (140, 45), 0, 12)  # ...and its top bar, not touching the stem
    out = normalise(five)
    h, w = bounding_box(out)
    assert h == 20  # the bar is included: the digit spans it
    assert out[4:8].max() > 0.9


def test_input_types_and_purity(digit):
    grey = page(digit)
    reference = normalise(grey)
    for image in (grey.astype(np.float32) / 255, grey.astype(np.float64),
                  grey.astype(np.uint16) * 257, grey[:, :, None], grey > 127,
                  np.dstack([grey, grey, grey]),
                  np.dstack([grey, grey, grey, np.full_like(grey, 255)])):
        before = image.copy()
        assert similar(normalise(image), reference) > 0.95, image.dtype
        assert np.array_equal(image, before)  # the input is not modified


def test_thread_safe(sample):
    datas = [scans.render_scan(sample[0][i], i)[0] for i in range(24)]
    serial = [prepare(d).model_input for d in datas]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda d: prepare(d).model_input, datas * 3))
    for i, x in enumerate(parallel):
        assert np.array_equal(x, serial[i % len(datas)])


def test_fonts_and_every_scan_flavour_give_an_input(sample):
    for i, flavour in enumerate(scans.FLAVOURS):
        assert_contract(prepare(scans.render_scan(sample[0][i], i, flavour=flavour)[0])
                        .model_input)
    for i in range(6):
        assert_contract(prepare(scans.render_font_digit(i, i)[0]).model_input)


@pytest.mark.parametrize("shape", [(1, 400), (5, 3000), (3000, 2), (200, 1), (2, 2), (10, 10)])
def test_strips_and_one_pixel_strokes_never_crash(shape):
    for width in (0, 1, 2):
        image = np.full(shape, 255, np.uint8)
        image[:, shape[1] // 3 : shape[1] // 3 + width] = 0
        try:
            assert_contract(normalise(image))
        except Rejected as exc:
            assert exc.code == "no_ink"


def test_one_pixel_wide_stroke_is_centred():
    image = np.full((10, 10), 255, np.uint8)
    image[:, 3] = 0  # N x 2 after scaling: cv2.moments would read it as a contour
    x = normalise(image)
    assert_contract(x)
    cy, cx = centre_of_mass(x)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
