"""Would a second model's opinion on the doubtful digits lift accuracy? (Issue 10, measured only.)

    .venv/bin/python bench/second_opinion.py --second OLD.keras --data ../shared/data/mnist \
        --usps ../shared/data/usps [--model M.keras] [--doubtful 0.99] [--weight 0.5]

For the MNIST test set and the USPS calibration and test parts (digitd.dataset's split,
through `usps_page` and `preprocess.normalise` as in training): the shipped model's answers
(or --model's), and the answers when the digits it is unsure of (top probability below
--doubtful) take the weighted mean of both models' probabilities. Prints accuracy, and at the
default `min_confidence` the review share and silent errors (wrong yet at or above it).
Nothing in digitd does this: it is the measurement behind docs/BENCHMARKS.md's note on it.
"""

from __future__ import annotations

import argparse

import numpy as np

from digitd.config import Config
from digitd.dataset import load_mnist, load_usps, usps_page
from digitd.model import load_classifier
from digitd.preprocess import normalise


def combined(first: np.ndarray, second: np.ndarray, doubtful: float, weight: float) -> np.ndarray:
    """`first`'s probabilities, with its rows below `doubtful` mixed with `second`'s."""
    out = first.copy()
    low = first.max(1) < doubtful
    out[low] = (1 - weight) * first[low] + weight * second[low]
    return out


def figures(probs: np.ndarray, labels: np.ndarray, threshold: float) -> str:
    right = probs.argmax(1) == labels
    sure = probs.max(1) >= threshold
    return (f"accuracy {right.mean():.2%} ({np.count_nonzero(~right)} wrong), review "
            f"{1 - sure.mean():.2%}, silent errors {np.mean(sure & ~right):.2%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--second", required=True, help="the second model (.keras)")
    parser.add_argument("--model", help="the first model (default: the shipped one)")
    parser.add_argument("--data", required=True, help="MNIST IDX folder")
    parser.add_argument("--usps", required=True, help="USPS folder")
    parser.add_argument("--doubtful", type=float, default=0.99)
    parser.add_argument("--weight", type=float, default=0.5)
    args = parser.parse_args()

    first, second = load_classifier(args.model), load_classifier(args.second)
    threshold = Config().min_confidence
    mnist = load_mnist(args.data)
    usps = load_usps(args.usps)
    sets = {"MNIST test": (mnist.x_test.astype(np.float32) / 255, mnist.y_test)}
    for part in ("calibration", "test"):
        x, y = usps.part(part)
        sets[f"USPS {part}"] = (np.stack([normalise(usps_page(d)) for d in x]), y)
    print(f"min_confidence {threshold}; doubtful below {args.doubtful}, weight {args.weight}")
    for name, (x, y) in sets.items():
        a, b = first.predict(x), second.predict(x)
        both = combined(a, b, args.doubtful, args.weight)
        print(f"{name} ({len(y)}):\n  first alone:   {figures(a, y, threshold)}\n"
              f"  second alone:  {figures(b, y, threshold)}\n"
              f"  with opinion:  {figures(both, y, threshold)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
