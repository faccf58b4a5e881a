"""Honest confidence: temperature scaling, calibration error, risk-coverage, operating points.

Pure NumPy on (N, 10) logits or probabilities and (N,) labels. `digitd train` fits the
temperature on the USPS calibration part (digitd.dataset's shared split, never MNIST's test
set) and bakes it into the saved model (logits / T before the softmax), so every runtime
gives the calibrated probabilities; the daemon's `min_confidence` is then chosen here from
a measured operating point.

Definitions used everywhere (digitd evaluate, the model card, docs/BENCHMARKS.md), for a
threshold t on the top probability and n digits:
    review share   digits with confidence < t (status low_confidence), / n
    silent errors  digits with confidence >= t whose answer is wrong (status ok), / n
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15
MAX_SILENT = 0.005  # the promise: at most 0.5% of answers wrong yet marked ok ...
MAX_REVIEW = 0.05  # ... with at most 5% sent to a person


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels."""
    p = softmax(logits, temperature)[np.arange(len(y)), y.astype(np.int64)]
    return float(-np.log(np.maximum(p, 1e-12)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL of softmax(logits / T): golden-section search on
    log T (the NLL is convex in 1/T, so unimodal in log T)."""
    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, y, math.exp(a)), nll(logits, y, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, y, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - mean confidence| over equal-width confidence
    bins, weighted by the share of digits in each."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for k in range(bins):
        sel = which == k
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def risk_coverage(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accepting the k most confident digits, k = 1..n: (share accepted, error among them)."""
    conf = probs.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    wrong = (probs.argmax(axis=1) != y)[order]
    k = np.arange(1, len(y) + 1)
    return k / len(y), np.cumsum(wrong) / k


@dataclass(frozen=True)
class OperatingPoint:
    """What a threshold gives on one set of digits (shares of all n digits)."""

    threshold: float
    n: int
    accuracy: float  # top answer right, whatever its status
    silent_errors: float  # wrong and confidence >= threshold (status ok)
    review_share: float  # confidence < threshold (status low_confidence)
    error_among_accepted: float

    def as_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def at_threshold(probs: np.ndarray, y: np.ndarray, threshold: float) -> OperatingPoint:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    accepted = conf >= threshold
    n = max(len(y), 1)
    return OperatingPoint(
        threshold=float(threshold), n=int(len(y)), accuracy=float(correct.mean()),
        silent_errors=float((accepted & ~correct).sum() / n),
        review_share=float((~accepted).sum() / n),
        error_among_accepted=float((accepted & ~correct).sum() / max(accepted.sum(), 1)))


def choose_threshold(probs: np.ndarray, y: np.ndarray, max_silent: float = MAX_SILENT,
                     max_review: float = MAX_REVIEW, step: float = 0.01) -> OperatingPoint:
    """The operating point for the daemon's min_confidence, on a grid of `step`.

    Thresholds from the lowest with silent errors <= max_silent up to the highest with review
    share <= max_review all meet both targets on these digits; the highest of them is chosen:
    the review budget is spent on safety, since the writers a user has are rarely as easy as
    a held-out set (issue 10 measured 0.9-6.8% silent errors at 0.80 on other populations).
    When no threshold meets both, the lowest one meeting max_silent is returned (the promise
    on `ok` comes first) and its review share says what that costs."""
    grid = [round(float(t), 4) for t in np.arange(0.0, 1.0 + step / 2, step)]
    points = [at_threshold(probs, y, t) for t in grid]
    both = [p for p in points if p.silent_errors <= max_silent and p.review_share <= max_review]
    if both:
        return both[-1]
    safe = [p for p in points if p.silent_errors <= max_silent]
    return safe[0] if safe else points[-1]
