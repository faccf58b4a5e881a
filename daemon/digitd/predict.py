"""`digitd predict FILE... [--config PATH] [--model PATH] [--number-model PATH]
[--min-confidence P] [--recognise auto|digit|number] [--json] [--preview DIR]`

The daemon's answer for each file, without a daemon: one line per file, in the order given,
`FILE DIGITS CONFIDENCE` (the digit, or a number's string such as `4071`; with
` low_confidence` appended when the answer is unsure), or `FILE rejected CODE: MESSAGE` for a
file that cannot be recognised
(reason codes: digitd.codes.Reason); with --json one JSON object per line instead (formats:
digitd.result). Files are taken in exactly as the daemon takes them (digitd.intake: read
safely, a FIFO never blocks, a huge PNG header is refused before the rest is read), and the
status follows the same rule with the same settings: `min_confidence`, `recognise`, the model,
the number model and `max_pixels` come from --config (default: the built-in configuration),
--min-confidence, --recognise, --model and --number-model override them. A decoder that
crashes on one file makes that file `corrupt`; the other files still get their answers.

Exit code (digitd.codes.ExitCode): 1 if any file was rejected, 2 for a bad configuration or a
model that cannot be loaded, 0 otherwise. The model runs once per chunk of up to CHUNK good
files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from digitd import ctc
from digitd.codes import ExitCode, Status
from digitd.config import ConfigError, command_config
from digitd.fsutil import write_atomic
from digitd.intake import Intake, take_in
from digitd.model import ModelError, load_classifier
from digitd.reader import read_all
from digitd.result import Result

CHUNK = 512  # files read, prepared and recognised together; bounds memory on huge lists


def _take_in(file: str, max_pixels: int, recognise: str) -> Intake:
    intake = take_in(file, max_pixels, recognise)
    if intake.crash is not None:
        print(f"digitd predict: {file}: the decoder failed: {intake.crash!r}", file=sys.stderr)
    return intake


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


def _write_preview(directory: Path, name: str, result: Result, intake: Intake) -> None:
    from digitd.preview import render_preview

    note = f"rejected: {result.error}" if result.status == Status.REJECTED else ""
    png = render_preview(intake.image, None if result.parts else intake.whole, result.digits,
                         result.confidence, note, parts=result.parts)
    write_atomic(directory / name, png)


def _number_model(path):
    """The number model configured (None: the shipped one), or False (said on stderr) when
    the shipped one cannot be served: numbers are then read by segmentation alone. A
    configured one that cannot be loaded raises."""
    numbers, why = ctc.load_configured(path)
    if numbers is None:
        print(f"digitd predict: no number model ({why}); numbers are read by segmentation "
              "alone", file=sys.stderr)
        return False
    if numbers.fallback:
        print(f"digitd predict: running {numbers.served.name} with TensorFlow: "
              f"{numbers.fallback}", file=sys.stderr)
    return numbers


def predict_command(args) -> int:
    """Entry point of `digitd predict` (arguments from digitd.cli)."""
    try:
        config = command_config(args)
    except ConfigError as exc:
        print(f"digitd predict: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    preview_dir = Path(args.preview) if getattr(args, "preview", None) else None
    if preview_dir is not None:
        try:
            preview_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"digitd predict: cannot create {preview_dir}: {exc.strerror}", file=sys.stderr)
            return ExitCode.USAGE
    classifier = numbers = None
    rejected = 0
    used_names: set[str] = set()
    out = sys.stdout
    files = list(args.files)
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        intakes = [_take_in(f, config.max_pixels, config.recognise) for f in chunk]
        good = [i for i, intake in enumerate(intakes) if intake.ok]
        readings: list = [(None, None)] * len(intakes)
        if good:
            if classifier is None:
                try:
                    classifier = load_classifier(config.model)
                except (OSError, ValueError, ModelError) as exc:
                    print(f"digitd predict: cannot load the model: {exc}", file=sys.stderr)
                    return ExitCode.USAGE
                if classifier.fallback:
                    print(f"digitd predict: running {classifier.served.name} with TensorFlow: "
                          f"{classifier.fallback}", file=sys.stderr)
            if numbers is None and any(intakes[i].line is not None for i in good):
                try:
                    numbers = _number_model(config.number_model)
                except (OSError, ValueError, ModelError) as exc:
                    print(f"digitd predict: cannot load the number model: {exc}",
                          file=sys.stderr)
                    return ExitCode.USAGE
            answers = read_all([(intakes[i].model_input, intakes[i].line) for i in good],
                               classifier.predict, config.recognise,
                               numbers.predict if numbers else None,
                               sure=config.min_confidence, second=ctc.second_of(numbers))
            for i, answer in zip(good, answers, strict=True):
                readings[i] = answer
        for file, intake, (probs, number) in zip(chunk, intakes, readings, strict=True):
            if number is not None:
                result = Result.number(number, config.min_confidence, file=file,
                                       sha256=intake.sha256)
            elif intake.ok:
                result = Result.recognised(probs, config.min_confidence, file=file,
                                           sha256=intake.sha256)
            else:
                result = Result.rejected(intake.error, intake.message, file=file,
                                         sha256=intake.sha256)
                rejected += 1
            text = json.dumps(result.answer(), ensure_ascii=False) if args.json else result.line()
            out.write(text + "\n")
            if preview_dir is not None:
                try:
                    name = _preview_name(file, used_names)
                    _write_preview(preview_dir, name, result, intake)
                except OSError as exc:
                    print(f"digitd predict: cannot write a preview for {file}: "
                          f"{exc.strerror}", file=sys.stderr)
                    rejected += 1
        out.flush()
    return ExitCode.FAILURE if rejected else ExitCode.OK
