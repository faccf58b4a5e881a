"""`digitd predict FILE... [--model PATH] [--json] [--preview DIR]`

One line per file, in the order given: `FILE DIGIT CONFIDENCE`, or `FILE rejected CODE: MESSAGE`
for a file that cannot be recognised (reason codes: digitd.preprocess.REASONS); with --json one
JSON object per line instead. The other files still get their answers; the exit code is 1 if
any file was rejected, 2 if the model cannot be loaded, 0 otherwise.

Files are read safely (digitd.fsutil.read_input_file): examined with lstat and fstat before
any read, so a symlink, directory, FIFO (never blocks), socket or device is `not_regular` without
being read, and the PNG header is checked before the rest of the file is read (a huge file
whose header declares too many pixels is not read further). The model runs once per chunk of
up to CHUNK good files.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitd.fsutil import read_input_file
from digitd.model import ModelError, load_classifier
from digitd.preprocess import DEFAULT_MAX_PIXELS, Rejected, decode_png, normalise

CHUNK = 512  # files read, prepared and recognised together; bounds memory on huge lists
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass
class Item:
    file: str
    image: np.ndarray | None = None
    model_input: np.ndarray | None = None
    error: Rejected | None = None
    digit: int | None = None
    confidence: float | None = None
    probabilities: list[float] | None = None


def _prepare(item: Item, max_pixels: int) -> None:
    try:
        data = read_input_file(item.file, max_pixels)
        item.image = decode_png(data, max_pixels)
        item.model_input = normalise(item.image)
    except Rejected as exc:
        item.error = exc


def _line(item: Item, as_json: bool) -> str:
    if as_json:
        return json.dumps({
            "file": item.file,
            "status": "rejected" if item.error else "ok",
            "digit": item.digit,
            "confidence": item.confidence,
            "probabilities": item.probabilities,
            "error": item.error.code if item.error else None,
            "message": item.error.message if item.error else None,
        }, ensure_ascii=False)
    if item.error:
        return f"{item.file} rejected {item.error.code}: {item.error.message}"
    return f"{item.file} {item.digit} {item.confidence:.4f}"


def _preview_name(file: str, used: set[str]) -> str:
    stem = Path(file).name
    if stem.lower().endswith(".png"):
        stem = stem[:-4]
    stem = stem or "preview"
    name, n = f"{stem}.preview.png", 1
    while name in used:  # a/x.png and b/x.png: x.preview.png, x-2.preview.png
        n += 1
        name = f"{stem}-{n}.preview.png"
    used.add(name)
    return name


def _write_preview(directory: Path, name: str, item: Item) -> None:
    from digitd.preview import render_preview

    note = f"rejected: {item.error.code}" if item.error else ""
    png = render_preview(item.image, item.model_input, item.digit, item.confidence, note)
    tmp = directory / f".{name}.tmp"
    tmp.write_bytes(png)
    os.replace(tmp, directory / name)


def predict_command(args) -> int:
    """Entry point of `digitd predict` (arguments from digitd.cli)."""
    max_pixels = getattr(args, "max_pixels", None) or DEFAULT_MAX_PIXELS
    preview_dir = Path(args.preview) if getattr(args, "preview", None) else None
    if preview_dir is not None:
        try:
            preview_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"digitd predict: cannot create {preview_dir}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    classifier = None
    rejected = 0
    used_names: set[str] = set()
    out = sys.stdout
    files = list(args.files)
    for start in range(0, len(files), CHUNK):
        items = [Item(file=f) for f in files[start : start + CHUNK]]
        for item in items:
            _prepare(item, max_pixels)
        good = [item for item in items if item.error is None]
        if good:
            if classifier is None:
                try:
                    classifier = load_classifier(args.model)
                except (OSError, ValueError, ModelError) as exc:
                    print(f"digitd predict: cannot load the model: {exc}", file=sys.stderr)
                    return EXIT_USAGE
                if classifier.fallback:
                    print(f"digitd predict: running {classifier.served.name} with TensorFlow: "
                          f"{classifier.fallback}", file=sys.stderr)
            probs = classifier.predict(np.stack([item.model_input for item in good]))
            for item, p in zip(good, probs, strict=True):
                item.digit = int(np.argmax(p))
                item.confidence = round(float(p[item.digit]), 6)
                item.probabilities = [round(float(v), 6) for v in p]
        for item in items:
            rejected += item.error is not None
            out.write(_line(item, args.json) + "\n")
            if preview_dir is not None:
                try:
                    _write_preview(preview_dir, _preview_name(item.file, used_names), item)
                except OSError as exc:
                    print(f"digitd predict: cannot write a preview for {item.file}: "
                          f"{exc.strerror}", file=sys.stderr)
                    rejected += 1
        out.flush()
    return EXIT_FAILURE if rejected else EXIT_OK
