"""`recognise: digit` against `auto` on labelled single-digit sets, through `digitd predict`.

    .venv/bin/python bench/evalsets.py --out /tmp/sets --sets mnist usps usps16 scans forms fonts
    .venv/bin/python bench/recognise_modes.py /tmp/sets/mnist /tmp/sets/forms ... \
        [--number-model DIR/digitd-numbers.keras]

For each set and mode: share right, silent errors (wrong yet ok), review share, and the share
read as a number (which, on single digits, is always a misreading); then the files whose
answer under `auto` is not the one under `digit` (the string, the status or the confidence
differ), with a few of them named. --number-model: a number model other than the shipped one
(`auto` only: `digit` reads no number), e.g. one fine-tuned on reviewed numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path


def answers(folder: Path, mode: str, options: tuple[str, ...] = ()) -> dict[str, dict]:
    """`digitd predict --json --recognise mode [options]` on every file of
    folder/labels.csv."""
    with open(folder / "labels.csv", newline="") as f:
        names = [row["file"] for row in csv.DictReader(f)]
    out = subprocess.run([sys.executable, "-m", "digitd", "predict", "--json",
                          "--recognise", mode, *options, *[str(folder / n) for n in names]],
                         capture_output=True, text=True).stdout
    return {Path(a["file"]).name: a for a in map(json.loads, out.splitlines())}


def measure(folder: Path, got: dict[str, dict]) -> dict[str, float]:
    with open(folder / "labels.csv", newline="") as f:
        labels = {row["file"]: row["label"] for row in csv.DictReader(f)}
    counts: Counter = Counter()
    for name, answer in got.items():
        right = (answer.get("digits") or "") == labels[name]
        counts["files"] += 1
        counts["right"] += right
        counts["silent"] += not right and answer.get("status") == "ok"
        counts["review"] += answer.get("status") == "low_confidence"
        counts["numbers"] += (answer.get("digit_count") or 1) > 1
    n = counts.pop("files")
    return {"files": n, **{k: 100 * v / n for k, v in counts.items()}}


def _key(answer: dict) -> tuple:
    return (answer.get("digits"), answer.get("status"), answer.get("confidence"),
            answer.get("probabilities"), answer.get("error"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="folders with labels.csv")
    parser.add_argument("--number-model", metavar="PATH", help="default: the shipped one")
    args = parser.parse_args()
    options = ("--number-model", args.number_model) if args.number_model else ()
    for folder in args.sets:
        got = {"digit": answers(folder, "digit"), "auto": answers(folder, "auto", options)}
        for mode, these in got.items():
            m = measure(folder, these)
            print(f"{folder.name:8} {mode:5} files={m['files']} right={m['right']:.2f}% "
                  f"silent={m['silent']:.2f}% review={m['review']:.2f}% "
                  f"numbers={m['numbers']:.2f}%")
        differ = sorted(n for n in got["digit"]
                        if _key(got["digit"][n]) != _key(got["auto"].get(n, {})))
        print(f"{folder.name:8} answers differ between digit and auto: {len(differ)} of "
              f"{len(got['digit'])}")
        for name in differ[:10]:
            print(f"  {name}: digit {_key(got['digit'][name])} auto "
                  f"{_key(got['auto'].get(name, {}))}")


if __name__ == "__main__":
    main()
