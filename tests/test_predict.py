"""`digitd predict` as users run it: a subprocess on real files, the shipped model, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import scans
from digitd.config import Config, command_config
from digitd.intake import read_input_file
from digitd.model import default_model_path
from digitd.preprocess import DEFAULT_MAX_PIXELS, REASONS, Rejected
from harness import run_cli
from pngwrite import bomb_png, encode_png

MODEL = default_model_path()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("predict", *args, cwd=cwd)


def bad_files(folder: Path) -> dict[str, str]:
    """name -> expected reason code; each a real file (or non-file) in `folder`."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image\n")
    jpeg = cv2.imencode(".jpg", np.full((20, 20), 200, np.uint8))[1].tobytes()
    (folder / "photo.png").write_bytes(jpeg)
    good = encode_png(np.full((40, 40), 255, np.uint8))
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "blank.png").write_bytes(good)
    os.mkfifo(folder / "fifo.png")
    (folder / "dir.png").mkdir()
    (folder / "link.png").symlink_to(folder / "blank.png")
    return {"empty.png": "empty", "notes.png": "not_png", "photo.png": "not_png",
            "cut.png": "truncated", "blank.png": "no_ink", "fifo.png": "not_regular",
            "dir.png": "not_regular", "link.png": "not_regular", "missing.png": "missing"}


def test_only_bad_files_exit_1_with_a_reason_each(tmp_path):
    expected = bad_files(tmp_path)
    start = time.monotonic()
    proc = run(*expected, cwd=tmp_path)  # the FIFO must not block
    assert time.monotonic() - start < 60
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(expected)
    for line, (name, code) in zip(lines, expected.items(), strict=True):
        assert line.startswith(f"{name} rejected {code}: "), line


@pytest.fixture(scope="module")
def answered(tmp_path_factory, sample):
    """One real `digitd predict --json --preview` run over realistic scans of every flavour,
    font digits, files with awkward names and every kind of bad file."""
    if not MODEL.is_file():
        pytest.skip(f"the shipped model {MODEL.name} is not there yet (issue 2)")
    x, y = sample
    folder = tmp_path_factory.mktemp("predict")
    expected = bad_files(folder)
    labels = {}
    for i in range(36):  # three of each flavour
        data, flavour = scans.render_scan(x[i + 100], i)
        name = f"{i:02d} {flavour}.png" if i % 5 else f"{i:02d}_{flavour}.PNG"
        (folder / name).write_bytes(data)
        labels[name] = int(y[i + 100])
    for i in range(12):  # digits in outline fonts
        name = f"font{i:02d}.png"
        (folder / name).write_bytes(scans.render_font_digit(i % 10, i)[0])
        labels[name] = i % 10
    names = list(labels) + list(expected)
    proc = run("--json", "--preview", "previews", *names, cwd=folder)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, rows, names, labels, expected, folder


def test_json_answers_every_file_in_order(answered):
    proc, rows, names, labels, expected, _ = answered
    assert proc.returncode == 1, proc.stderr  # some files were rejected
    assert [r["file"] for r in rows] == names
    for row in rows:
        assert set(row) == {"file", "digit", "confidence", "probabilities", "status", "error",
                            "message", "digits", "digit_count", "parts"}
        if row["file"] in labels:
            # recognised: ok at or above the default min_confidence, low_confidence below it
            ok = row["confidence"] >= Config().min_confidence
            assert row["status"] == ("ok" if ok else "low_confidence"), row
            assert row["error"] is None and row["message"] is None
            # one digit: `digits` is the same digit, and there are no parts
            assert row["digits"] == str(row["digit"]) and row["digit_count"] == 1
            assert row["parts"] is None
            assert len(row["probabilities"]) == 10
            assert abs(sum(row["probabilities"]) - 1) < 1e-3
            assert row["confidence"] == max(row["probabilities"])
            assert row["digit"] == row["probabilities"].index(row["confidence"])
        else:
            assert row["status"] == "rejected" and row["digit"] is None
            assert row["digits"] is None and row["digit_count"] is None
            assert row["error"] == expected[row["file"]] and row["error"] in REASONS
            assert row["message"]


def test_realistic_scans_are_recognised(answered):
    _, rows, _, labels, _, _ = answered
    right = sum(r["digit"] == labels[r["file"]] for r in rows if r["file"] in labels)
    assert right >= len(labels) - 2, f"{right}/{len(labels)}"


def test_previews_are_written_for_every_file(answered):
    _, _, names, _, _, folder = answered
    previews = sorted(p.name for p in (folder / "previews").iterdir())
    assert len(previews) == len(names)
    assert "00_mnist_png.preview.png" in previews  # .PNG upper case: the same stem rule
    image = cv2.imread(str(folder / "previews" / "01 paper_grey.preview.png"))
    assert image is not None and image.shape[0] > 100


def test_text_output_and_exit_0_when_all_are_good(tmp_path, sample, capsys):
    if not MODEL.is_file():
        pytest.skip(f"the shipped model {MODEL.name} is not there yet (issue 2)")
    from argparse import Namespace

    from digitd.predict import predict_command

    x, y = sample
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.png"))
        Path(files[-1]).write_bytes(encode_png(x[i]))
    code = predict_command(Namespace(files=files, model=None, json=False, preview=None))
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    for line, f, label in zip(lines, files, y[:3], strict=True):
        name, digit, confidence = line.split(" ")
        assert name == f and int(digit) == label and 0.5 < float(confidence) <= 1


# --------------------------------------------------------------------------------------------
# Reading files safely (in-process)


def test_fifo_directory_and_symlink_are_not_read(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "real.png").write_bytes(encode_png(np.zeros((5, 5), np.uint8)))
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    for name, words in (("fifo.png", "FIFO"), ("dir.png", "directory"),
                        ("link.png", "symbolic link")):
        with pytest.raises(Rejected) as info:
            read_input_file(tmp_path / name, DEFAULT_MAX_PIXELS)
        assert info.value.code == "not_regular" and words in info.value.message
    assert read_input_file(tmp_path / "real.png", DEFAULT_MAX_PIXELS).startswith(b"\x89PNG")


def test_a_small_file_takes_one_read_and_a_large_one_is_read_whole(tmp_path, monkeypatch):
    """The daemon reads every dropped file: one read(2) for a small one (the header is
    checked on its first bytes), a larger one to its end."""
    import digitd.intake

    sizes: list[int] = []
    real_read = os.read

    def counted(fd: int, n: int) -> bytes:  # the real read, counted
        data = real_read(fd, n)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(digitd.intake.os, "read", counted)
    small = encode_png(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    large = encode_png(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8))
    assert len(small) < 1 << 16 < len(large)
    for name, data in (("small.png", small), ("large.png", large)):
        (tmp_path / name).write_bytes(data)
        sizes.clear()
        assert read_input_file(tmp_path / name, DEFAULT_MAX_PIXELS) == data
        assert sum(sizes) == len(data)
        assert len(sizes) == 1 or name == "large.png"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(b"\x89PNG")
    path.chmod(0)
    with pytest.raises(Rejected) as info:
        read_input_file(path, DEFAULT_MAX_PIXELS)
    assert info.value.code == "unreadable"


def bytes_read() -> int:
    """Bytes this process has read so far (the kernel's count: /proc/self/io rchar)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_a_huge_file_is_refused_from_its_header_alone(tmp_path):
    path = tmp_path / "bomb.png"
    with open(path, "wb") as f:
        f.write(bomb_png(60000, image_data=False))
        f.truncate(200 * 1024 * 1024)  # sparse: 200 MB that must not be read
    before = bytes_read()
    with pytest.raises(Rejected) as info:
        read_input_file(path, DEFAULT_MAX_PIXELS)
    assert info.value.code == "too_large"
    assert bytes_read() - before < 1 << 20  # the header, not the 200 MB
    with pytest.raises(Rejected) as info:
        read_input_file(path, max_pixels=1000)  # and by its size, before any read
    assert info.value.code == "too_large"


# --------------------------------------------------------------------------------------------
# The preview (shared with the daemon)


def test_preview_layout(sample):
    """What the preview shows; its cost is measured in bench/file_budget.py, not here."""
    from digitd.preprocess import prepare
    from digitd.preview import render_preview

    prepared = prepare(encode_png(sample[0][0]))
    png = render_preview(prepared.image, prepared.model_input, 7, 0.9987)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2  # a grey input gives a grey (cheaper) preview
    banner, body = image[:22], image[22:]
    assert banner.mean() < 80  # recognised: light text on a dark banner
    # The 28x28 original enlarged 5x by nearest neighbour: blocks of 5x5 equal pixels.
    original = body[:140, :140]
    assert np.array_equal(original, np.kron(prepared.image, np.ones((5, 5), np.uint8)))
    inset = body[2:58, 145:201]  # the model input, 2x
    assert np.array_equal(inset[::2, ::2], np.round(prepared.model_input * 255).astype(np.uint8))


@pytest.mark.parametrize("shape", [(162, 206), (57, 31), (1, 1), (40, 61, 3)])
def test_preview_png_encoder_round_trips_exactly(shape):
    """digitd's own PNG writer (zlib-ng deflate): every pixel back, colour in the right order,
    and a file our own structure check (chunk lengths, CRCs, IEND) accepts."""
    from digitd.pngcheck import check_png
    from digitd.preview import _encode

    rng = np.random.default_rng(sum(shape))
    canvas = rng.integers(0, 256, shape, dtype=np.uint8)
    canvas[: shape[0] // 2] = 255  # some runs, as a preview's paper has
    png = _encode(canvas)
    header = check_png(png, DEFAULT_MAX_PIXELS)
    assert (header.width, header.height) == (shape[1], shape[0])
    assert header.colour_type == (2 if len(shape) == 3 else 0)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == canvas.shape and np.array_equal(decoded, canvas)  # BGR kept


def test_preview_of_colour_huge_and_rejected_inputs():
    from digitd.preview import render_preview

    for image, model_input, digit, note in (
        (np.full((4000, 6000, 3), (200, 180, 160), np.uint8), np.zeros((28, 28), np.float32),
         3, "low confidence"),
        (np.full((1, 1), 255, np.uint8), None, None, "rejected: no_ink"),
        (None, None, None, "rejected: not_png"),
    ):
        png = render_preview(image, model_input, digit, 0.5 if digit is not None else None, note)
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and max(decoded.shape[:2]) <= 240
        assert decoded[:22].mean() > 150  # a note: dark text on a light banner


# --------------------------------------------------------------------------------------------
# The same truth as the daemon: min_confidence, and a decoder crash costs one file


def strip_and_digits(folder: Path, x: np.ndarray) -> list[str]:
    """A strip of four digits in one PNG (the model is unsure of it) and five single digits."""
    names = []
    strip = np.hstack(list(x[20:24]))
    (folder / "strip.png").write_bytes(encode_png(255 - strip))
    names.append("strip.png")
    for i in range(5):
        names.append(f"d{i}.png")
        (folder / names[-1]).write_bytes(encode_png(255 - x[30 + i]))
    return names


def test_low_confidence_follows_min_confidence_from_config_and_option(
    tmp_path, sample, capsys, monkeypatch
):
    """The command line in-process (digitd.cli.main): one TensorFlow start for five runs."""
    if not MODEL.is_file():
        pytest.skip(f"the shipped model {MODEL.name} is not there yet (issue 2)")
    from digitd.cli import main
    from digitd.config import Config

    monkeypatch.chdir(tmp_path)
    names = strip_and_digits(tmp_path, sample[0])
    names.append("notes.png")
    (tmp_path / "notes.png").write_text("not an image\n")

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        try:
            code = main(["predict", *args])
        except SystemExit as exc:  # argparse refusing an argument
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    def answers(*options: str) -> dict[str, dict]:
        proc = run("--json", *options, *names, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr  # notes.png is rejected
        return {r["file"]: r for r in map(json.loads, proc.stdout.splitlines())}

    # The built-in min_confidence, as the daemon's.
    default = answers()
    confidences = sorted({r["confidence"] for r in default.values() if r["digit"] is not None})
    assert len(confidences) >= 2, confidences
    for name, r in default.items():
        if name == "notes.png":
            assert r["status"] == "rejected" and r["error"] == "not_png"
            continue
        low = r["confidence"] < Config().min_confidence
        assert r["status"] == ("low_confidence" if low else "ok"), r
    # A threshold between the answers' confidences, from a config file: both statuses occur.
    threshold = (confidences[0] + confidences[-1]) / 2
    config = tmp_path / "digitd.yaml"
    config.write_text(f"min_confidence: {threshold}\n")
    configured = answers("--config", str(config))
    statuses = set()
    for name, r in configured.items():
        if name != "notes.png":
            expected = "low_confidence" if r["confidence"] < threshold else "ok"
            assert r["status"] == expected, (threshold, r)
            assert (r["digit"], r["confidence"]) == (default[name]["digit"],
                                                      default[name]["confidence"])
            statuses.add(r["status"])
    assert statuses == {"ok", "low_confidence"}
    # --min-confidence overrides the file; the text line says low_confidence too.
    assert all(r["status"] == "ok" for n, r in answers("--config", str(config),
                                                        "--min-confidence", "0").items()
               if n != "notes.png")
    proc = run("--config", str(config), *names, cwd=tmp_path)
    for line in proc.stdout.splitlines():
        name = line.split(" ")[0]
        if name != "notes.png":
            assert line.endswith(" low_confidence") == (configured[name]["status"]
                                                        == "low_confidence"), line
    # A bad value or a bad file is a usage error, as for the daemon.
    assert run("--min-confidence", "1.5", *names, cwd=tmp_path).returncode == 2
    config.write_text("min_confidence: high\n")
    proc = run("--config", str(config), *names, cwd=tmp_path)
    assert proc.returncode == 2 and "min_confidence" in proc.stderr


def test_a_decoder_crash_costs_that_file_only(tmp_path, sample, capsys, monkeypatch):
    """An unexpected exception from the decoder (not a Rejected) on one file: that file is
    `corrupt`, as in the daemon; the files before and after it still get their answers."""
    if not MODEL.is_file():
        pytest.skip(f"the shipped model {MODEL.name} is not there yet (issue 2)")
    from argparse import Namespace

    import digitd.intake
    from digitd.predict import predict_command

    x, y = sample
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.png"))
        Path(files[-1]).write_bytes(encode_png(x[i]))
    poison = Path(files[1]).read_bytes()
    real_prepare, real_decode = digitd.intake.prepare, digitd.intake.decode_png

    def prepare(data: bytes, max_pixels: int):  # recognise: digit
        if data == poison:
            raise IndexError("a decoder bug")
        return real_prepare(data, max_pixels)

    def decode_png(data: bytes, max_pixels: int):  # recognise: auto, number
        if data == poison:
            raise IndexError("a decoder bug")
        return real_decode(data, max_pixels)

    monkeypatch.setattr(digitd.intake, "prepare", prepare)
    monkeypatch.setattr(digitd.intake, "decode_png", decode_png)
    code = predict_command(Namespace(files=files, model=None, json=True, preview=None))
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert [r["file"] for r in rows] == files
    assert rows[1]["status"] == "rejected" and rows[1]["error"] == "corrupt"
    assert "a decoder bug" in rows[1]["message"] and "a decoder bug" in err
    for row, label in ((rows[0], y[0]), (rows[2], y[2])):
        assert row["status"] in ("ok", "low_confidence") and row["digit"] == label


def test_numbers_print_their_string(tmp_path, sample):
    """A PNG holding a number prints its string (`--recognise auto`, the default); `digit`
    reads all its ink as one digit as before; --json gives each digit's box and top-3; the
    preview shows the string and the boxes, wider than a single digit's."""
    import number_scans

    x, y = sample
    truths = {}
    for i in range(4):
        data, truth, _ = number_scans.render_number(x, y, i, seed=11, flavour="paper_grey",
                                                    decorations=())
        (tmp_path / f"n{i}.png").write_bytes(data)
        truths[f"n{i}.png"] = truth
    (tmp_path / "one.png").write_bytes(encode_png(x[0]))
    names = [*truths, "one.png"]
    text = run("--recognise", "auto", *names, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    read = dict(line.split()[:2] for line in text.stdout.splitlines())
    assert sum(read[name] == truth for name, truth in truths.items()) >= 3
    assert read["one.png"] == str(y[0])

    assert run(*names, cwd=tmp_path).stdout == text.stdout  # the default: auto
    one_digit = run("--recognise", "digit", *names, cwd=tmp_path)
    assert all(len(line.split()[1]) == 1 for line in one_digit.stdout.splitlines())

    proc = run("--recognise", "auto", "--json", "--preview", "previews", *names,
               cwd=tmp_path)
    rows = {row["file"]: row for row in map(json.loads, proc.stdout.splitlines())}
    for name in truths:
        row = rows[name]
        assert row["digit"] is None and row["probabilities"] is None
        assert row["digit_count"] == len(row["digits"]) == len(row["parts"]) >= 2
        image = cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)
        h, w = image.shape[:2]
        for part in row["parts"]:
            bx, by, bw, bh = part["box"]
            assert bx >= 0 and by >= 0 and bx + bw <= w and by + bh <= h
            assert part["top"][0][0] == part["digit"]
        preview = cv2.imread(str(tmp_path / "previews" / f"{name[:-4]}.preview.png"))
        single = cv2.imread(str(tmp_path / "previews" / "one.preview.png"))
        assert preview.shape[1] > single.shape[1]  # the number is shown larger, boxes drawn


def test_command_config_puts_only_the_options_given_over_the_file(tmp_path):
    """predict's and evaluate's settings: --config (else built in), then their own options."""
    file = tmp_path / "digitd.yaml"
    file.write_text("min_confidence: 0.5\nrecognise: number\nnumber_model: n/numbers.keras\n")
    given = argparse.Namespace(config=str(file), model=None, min_confidence=None, recognise=None)
    config = command_config(given)
    assert (config.min_confidence, config.recognise) == (0.5, "number")
    assert config.number_model == tmp_path / "n" / "numbers.keras"  # beside the file
    given = argparse.Namespace(config=str(file), model="m.keras", min_confidence=0.9,
                               recognise="digit", number_model="o.keras")
    config = command_config(given)
    assert (config.model, config.min_confidence, config.recognise, config.number_model) == (
        Path("m.keras"), 0.9, "digit", Path("o.keras"))
    assert command_config(argparse.Namespace()) == Config()
