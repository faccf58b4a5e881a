"""`recognise: digit` against `auto` on labelled single-digit sets, through `digitd predict`.

    .venv/bin/python bench/evalsets.py --out /tmp/sets --sets forms scans --n 2000
    .venv/bin/python bench/recognise_modes.py /tmp/sets/forms /tmp/sets/scans

For each set and mode: share right, silent errors (wrong yet ok), review share, and the share
read as a number (which, on single digits, is always a misreading).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path


def measure(folder: Path, mode: str) -> dict[str, float]:
    with open(folder / "labels.csv", newline="") as f:
        labels = {row["file"]: row["label"] for row in csv.DictReader(f)}
    files = [str(folder / name) for name in labels]
    out = subprocess.run([sys.executable, "-m", "digitd", "predict", "--json",
                          "--recognise", mode, *files], capture_output=True, text=True).stdout
    counts: Counter = Counter()
    for line in out.splitlines():
        answer = json.loads(line)
        right = (answer.get("digits") or "") == labels[Path(answer["file"]).name]
        counts["files"] += 1
        counts["right"] += right
        counts["silent"] += not right and answer.get("status") == "ok"
        counts["review"] += answer.get("status") == "low_confidence"
        counts["numbers"] += (answer.get("digit_count") or 1) > 1
    n = counts.pop("files")
    return {"files": n, **{k: 100 * v / n for k, v in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="folders with labels.csv")
    for folder in parser.parse_args().sets:
        for mode in ("digit", "auto"):
            m = measure(folder, mode)
            print(f"{folder.name:8} {mode:5} files={m['files']} right={m['right']:.2f}% "
                  f"silent={m['silent']:.2f}% review={m['review']:.2f}% "
                  f"numbers={m['numbers']:.2f}%")


if __name__ == "__main__":
    main()
