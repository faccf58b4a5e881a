"""`digitd evaluate`: measure a model the way the daemon would use it.

    digitd evaluate --set DIR [--model M] [--number-model N] [--config C | --min-confidence P]
                    [--recognise auto|digit|number] [--json]
    digitd evaluate --data MNIST_DIR [--model M] [--json]

--set: DIR holds PNG files and `labels.csv` (`file,label`; a header line `file,label` is
optional; file names are relative to DIR). A label is a digit 0-9, or a number: a string of
digits (`4071`) for a field of several digits. Every file goes through the daemon's own intake
(safe read, PNG checks, decode, normalisation) and readers (digitd.reader.read_all, with
`recognise` from --recognise, else --config, else the built-in default; a number needs `auto`
or `number`; the number model from --number-model, else --config's `number_model`, else the
shipped one) and gets the status the daemon would give it at `min_confidence` (from
--min-confidence, else --config, else the built-in default). Reported, as shares of the rows
evaluated (digitd.calibration's definitions): accuracy (the string read is the label, whatever
its status), silent errors (wrong yet `ok`), review share (`low_confidence`), rejected share
(the daemon would reject the file: no_ink, corrupt...); over the single-digit rows, per-class
accuracy and the confusion matrix (rows the true digit, columns the answer, a last column for
rejected files; a single digit read as a number is counted apart, `read_as_number`); and, when
some labels are numbers, the same four shares over those rows (`numbers`). Rows that cannot be
evaluated (a missing file, a label that is not digits, a malformed or duplicated line) are
listed with their line number and left out; they never stop the run.

--data: the model alone on the MNIST test arrays (no preprocessing), as before.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from digitd import calibration, ctc
from digitd.codes import ExitCode, Reason, Status
from digitd.config import ConfigError, command_config
from digitd.intake import take_in
from digitd.model import load_classifier
from digitd.reader import read_all
from digitd.result import Result

LABELS = "labels.csv"
CHUNK = 512  # files read and recognised together


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line of labels.csv
    file: str
    label: str  # the digit, or a number's digits


@dataclass(frozen=True)
class BadRow:
    line: int
    file: str | None
    reason: str


def read_labels(folder: Path) -> tuple[list[Row], list[BadRow]]:
    """labels.csv -> good rows and bad ones (with their line numbers). Raises OSError when the
    file itself cannot be read."""
    text = (folder / LABELS).read_bytes().decode("utf-8-sig", errors="replace")
    rows: list[Row] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    reader = csv.reader(text.splitlines())
    for index, fields in enumerate(reader, start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        if index == 1 and [f.strip().lower() for f in fields] == ["file", "label"]:
            continue
        if len(fields) != 2:
            bad.append(BadRow(index, fields[0] if fields else None,
                              f"expected 2 fields (file,label), got {len(fields)}"))
            continue
        name, label = fields[0].strip(), fields[1].strip()
        if not name:
            bad.append(BadRow(index, None, "empty file name"))
            continue
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts:
            bad.append(BadRow(index, name, "file name outside the set's folder"))
            continue
        if not label or not (label.isascii() and label.isdigit()):
            bad.append(BadRow(index, name, f"label {label!r} is not a digit 0-9 or a number "
                                           "(digits only)"))
            continue
        if name in seen:
            bad.append(BadRow(index, name, f"listed again (first on line {seen[name]})"))
            continue
        seen[name] = index
        rows.append(Row(index, name, label))
    return rows, bad


def run_set(folder: Path, classifier, config,
            numbers=None) -> tuple[list[tuple[Row, Result]], list[BadRow]]:
    """Take in, recognise and judge every good row of folder/labels.csv exactly as the daemon
    would (digitd.intake.take_in, digitd.reader.read_all with config.recognise and the number
    model `numbers` if any, Result.recognised or Result.number at config.min_confidence)."""
    rows, bad = read_labels(folder)
    judged: list[tuple[Row, Result]] = []
    for start in range(0, len(rows), CHUNK):
        taken = []
        for row in rows[start:start + CHUNK]:
            intake = take_in(folder / row.file, config.max_pixels, config.recognise)
            if intake.error == Reason.MISSING:
                bad.append(BadRow(row.line, row.file, "missing: no such file"))
            else:
                taken.append((row, intake))
        good = [(row, intake) for row, intake in taken if intake.ok]
        read = read_all([(i.model_input, i.line) for _, i in good], classifier.predict,
                        config.recognise, numbers.predict if numbers else None,
                        sure=config.min_confidence, second=ctc.second_of(numbers))
        answers = {id(intake): a for (_, intake), a in zip(good, read, strict=True)}
        for row, intake in taken:
            if not intake.ok:
                result = Result.rejected(intake.error, intake.message, file=row.file)
            elif (number := answers[id(intake)][1]) is not None:
                result = Result.number(number, config.min_confidence, file=row.file)
            else:
                result = Result.recognised(answers[id(intake)][0], config.min_confidence,
                                           file=row.file)
            judged.append((row, result))
    bad.sort(key=lambda b: b.line)
    return judged, bad


def _shares(labels: list[str], results: list[Result]) -> dict[str, Any]:
    """Accuracy, silent errors, review and rejected shares of some rows, and their counts."""
    n = len(labels)
    status = [result.status for result in results]
    answered = np.array([s != Status.REJECTED for s in status], bool)
    ok = np.array([s == Status.OK for s in status], bool)
    right = np.array([r.digits == label for r, label in zip(results, labels, strict=True)],
                     bool)

    def share(k) -> float | None:
        return round(float(k) / n, 6) if n else None

    return {
        "n": n,
        "accuracy": share((answered & right).sum()),
        "silent_errors": share((ok & ~right).sum()),
        "review_share": share((answered & ~ok).sum()),
        "rejected_share": share((~answered).sum()),
        "accuracy_of_ok": round(float(right[ok].mean()), 6) if ok.any() else None,
        "counts": {"ok": int(ok.sum()), "ok_wrong": int((ok & ~right).sum()),
                   "low_confidence": int((answered & ~ok).sum()),
                   "low_confidence_wrong": int((answered & ~ok & ~right).sum()),
                   "rejected": int((~answered).sum())},
    }


def summarise(judged: list[tuple[Row, Result]], min_confidence: float) -> dict[str, Any]:
    """The figures of one set, JSON-ready (shares of the rows evaluated)."""
    every = _shares([row.label for row, _ in judged], [result for _, result in judged])
    single = [(row, r) for row, r in judged if len(row.label) == 1]
    numbers = [(row, r) for row, r in judged if len(row.label) > 1]
    labels = np.array([int(row.label) for row, _ in single], np.int64)
    answered = np.array([r.status != Status.REJECTED for _, r in single], bool)
    as_digit = np.array([r.digit is not None for _, r in single], bool)
    digits = np.array([-1 if r.digit is None else r.digit for _, r in single], np.int64)
    counted = ~answered | as_digit  # a single digit read as a number is counted apart
    matrix = np.zeros((10, 11), np.int64)  # column 10: rejected
    np.add.at(matrix, (labels[counted], np.where(answered, digits, 10)[counted]), 1)
    totals = matrix.sum(axis=1)
    reasons: dict[str, int] = {}
    for _, result in judged:
        if result.error:
            reasons[str(result.error)] = reasons.get(str(result.error), 0) + 1

    summary: dict[str, Any] = {
        "n": every["n"],
        "min_confidence": min_confidence,
        **{k: v for k, v in every.items() if k != "n"},
        "rejected_reasons": reasons,
        "per_class_accuracy": {str(d): round(float(matrix[d, d] / totals[d]), 6)
                               for d in range(10) if totals[d]},
        "confusion_matrix": matrix.tolist(),
        "read_as_number": int((answered & ~as_digit).sum()),
    }
    if numbers:
        summary["numbers"] = _shares([row.label for row, _ in numbers], [r for _, r in numbers])
    scored = answered & as_digit
    if scored.any():
        probs = np.array([r.probabilities for (_, r), s in zip(single, scored, strict=True)
                          if s], np.float64)
        summary["ece"] = round(calibration.ece(probs, labels[scored]), 5)
    return summary


def _load(model: Path | str | None, prog: str):
    try:
        return load_classifier(model)
    except Exception as exc:  # missing, truncated or not a model: one line, exit 2
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{prog}: {model or 'shipped model'}: cannot load ({reason})", file=sys.stderr)
        return None


def evaluate_command(args) -> int:
    if getattr(args, "set", None):
        return set_command(args)
    return mnist_command(args)


def set_command(args) -> int:
    """`digitd evaluate --set DIR`."""
    prog = "digitd evaluate"
    folder = Path(args.set)
    try:
        config = command_config(args)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.min_confidence is not None:
        source = "--min-confidence"
    else:
        source = args.config or "built-in default"
    if not (folder / LABELS).is_file():
        print(f"{prog}: {folder / LABELS}: no such file (a set is PNGs plus labels.csv with "
              "file,label lines)", file=sys.stderr)
        return ExitCode.USAGE
    classifier = _load(config.model, prog)
    if classifier is None:
        return ExitCode.USAGE
    numbers = None
    if config.recognise != "digit":
        try:
            numbers = _load_numbers(config.number_model, prog)
        except Exception as exc:  # missing, truncated or not a model
            print(f"{prog}: cannot load the number model: {exc}", file=sys.stderr)
            return ExitCode.USAGE
    try:
        judged, bad = run_set(folder, classifier, config, numbers)
    except OSError as exc:
        print(f"{prog}: {folder / LABELS}: cannot read ({exc.strerror or exc})", file=sys.stderr)
        return ExitCode.USAGE
    if config.recognise == "digit" and any(len(row.label) > 1 for row, _ in judged):
        print(f"{prog}: some labels are numbers, but recognise is digit: each image is read "
              "as one digit (--recognise auto reads numbers)", file=sys.stderr)
    result = {"set": str(folder), "model": str(classifier.path),
              "model_id": classifier.model_id, "runtime": classifier.runtime,
              "recognise": config.recognise,
              "number_model": numbers.model_id if numbers else None,
              "second_number_model": (numbers.second_reading.model_id
                                      if numbers and numbers.second_reading else None),
              "min_confidence_from": source, **summarise(judged, config.min_confidence),
              "bad_rows": [{"line": b.line, "file": b.file, "reason": b.reason} for b in bad]}
    if args.json:
        print(json.dumps(result))
        return ExitCode.OK
    _print_set(result)
    return ExitCode.OK


def _load_numbers(path, prog: str):
    """The number model configured (None: the shipped one), or None (said on stderr) when
    the shipped one cannot be served: numbers are then read by segmentation alone, as the
    daemon would. A configured one that cannot be loaded raises."""
    numbers, why = ctc.load_configured(path)
    if numbers is None:
        print(f"{prog}: no number model ({why}); numbers are read by segmentation alone",
              file=sys.stderr)
    return numbers


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _print_set(r: dict[str, Any]) -> None:
    c = r["counts"]
    print(f"set            {r['set']} ({r['n']} files evaluated, {len(r['bad_rows'])} bad rows)")
    print(f"model          {r['model']} ({r['model_id'][:12]}, {r['runtime']})")
    print(f"recognise      {r['recognise']}" + (f" (number model {r['number_model'][:12]})"
                                                if r["number_model"] else ""))
    print(f"min_confidence {r['min_confidence']} ({r['min_confidence_from']})")
    print(f"accuracy       {_pct(r['accuracy'])}")
    print(f"silent errors  {_pct(r['silent_errors'])} ({c['ok_wrong']} wrong of {c['ok']} ok)")
    print(f"review share   {_pct(r['review_share'])} ({c['low_confidence']} low_confidence, "
          f"{c['low_confidence_wrong']} of them wrong)")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected_reasons"].items()))
    print(f"rejected       {_pct(r['rejected_share'])}" + (f" ({reasons})" if reasons else ""))
    if "ece" in r:
        print(f"ECE            {r['ece']:.4f}")
    if "numbers" in r:
        m = r["numbers"]
        print(f"numbers        {m['n']} rows: accuracy {_pct(m['accuracy'])}, silent errors "
              f"{_pct(m['silent_errors'])}, review share {_pct(m['review_share'])}, rejected "
              f"{_pct(m['rejected_share'])}")
    if r["read_as_number"]:
        print(f"single digits read as a number: {r['read_as_number']}")
    if any(map(sum, r["confusion_matrix"])):  # some single digits
        print("per class      "
              + "  ".join(f"{d}:{a:.4f}" for d, a in r["per_class_accuracy"].items()))
        print("confusion (rows true, columns answered; last column rejected)")
        print("     " + " ".join(f"{h:>5}" for h in [*map(str, range(10)), "rej"]))
        for digit, row in enumerate(r["confusion_matrix"]):
            print(f"  {digit}  " + " ".join(f"{v:5d}" for v in row))
    for b in r["bad_rows"]:
        print(f"bad row: line {b['line']}: {b['file'] or ''}: {b['reason']}")


def mnist_command(args) -> int:
    """`digitd evaluate --data`: accuracy, per-class accuracy and confusion matrix of the model
    alone on the MNIST test arrays."""
    from digitd.dataset import DatasetError, load_mnist
    from digitd.train import metrics, to_input

    try:
        data = load_mnist(args.data, verify=not getattr(args, "no_verify", False))
    except DatasetError as exc:
        print(f"digitd evaluate: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    classifier = _load(args.model, "digitd evaluate")
    if classifier is None:
        return ExitCode.USAGE
    probs = classifier.predict(to_input(data.x_test))
    result = {"model": str(classifier.path), "model_id": classifier.model_id,
              "runtime": classifier.runtime, "data": data.source,
              **metrics(data.y_test, probs)}
    if args.json:
        print(json.dumps(result))
        return ExitCode.OK
    print(f"model    {result['model']} ({result['model_id'][:12]})")
    print(f"data     {result['data']}")
    print(f"accuracy {result['accuracy']:.4%} ({result['errors']} errors / {result['n']})")
    print("per class " + "  ".join(f"{d}:{a:.4f}" for d, a in result["per_class_accuracy"].items()))
    print("confusion (rows true, columns predicted)")
    for digit, row in enumerate(result["confusion_matrix"]):
        print(f"  {digit} " + " ".join(f"{c:5d}" for c in row))
    return ExitCode.OK
