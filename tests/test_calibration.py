"""digitd.calibration: temperature, ECE, risk-coverage and operating points on known numbers."""

from __future__ import annotations

import numpy as np
import pytest

from digitd import calibration as cal


def _sampled(n: int, temperature: float, seed: int = 0):
    """Labels drawn from softmax(logits / temperature): T is the right temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 10))
    p = cal.softmax(logits, temperature)
    y = np.array([rng.choice(10, p=row) for row in p])
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(true_t):
    logits, y = _sampled(4000, true_t)
    assert cal.fit_temperature(logits, y) == pytest.approx(true_t, rel=0.12)


def test_calibrating_lowers_ece_and_nll():
    logits, y = _sampled(4000, 2.0, seed=1)
    t = cal.fit_temperature(logits, y)
    assert cal.nll(logits, y, t) < cal.nll(logits, y)
    assert cal.ece(cal.softmax(logits, t), y) < 0.5 * cal.ece(cal.softmax(logits), y)


def test_ece_of_a_hand_made_case():
    # two digits at confidence 0.9 (one right), two at 0.6 (both right)
    probs = np.full((4, 10), 0.0)
    probs[0, 0], probs[1, 0], probs[2, 1], probs[3, 1] = 0.9, 0.9, 0.6, 0.6
    y = np.array([0, 5, 1, 1])
    # bins: |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4
    assert cal.ece(probs, y) == pytest.approx(0.4)


def test_risk_coverage_and_operating_point():
    # 100 digits, confidence falling; the 3 least confident and the 11th are wrong
    conf = np.linspace(0.99, 0.30, 100)
    probs = np.repeat(((1 - conf) / 9)[:, None], 10, axis=1)
    probs[:, 0] = conf
    y = np.zeros(100, int)
    y[[10, 97, 98, 99]] = 1  # wrong where the model says 0
    coverage, risk = cal.risk_coverage(probs, y)
    assert coverage[-1] == 1.0 and risk[-1] == pytest.approx(0.04)
    assert risk[9] == 0 and risk[10] == pytest.approx(1 / 11)
    # both targets met from 0.0 (silent 4%) ... : the review budget is spent on safety
    point = cal.choose_threshold(probs, y, max_silent=0.04, max_review=0.05)
    assert point.review_share == pytest.approx(0.05) and point.silent_errors == 0.01
    roomy = cal.choose_threshold(probs, y, max_silent=0.04, max_review=0.5)
    assert roomy.review_share <= 0.5 and roomy.threshold == pytest.approx(0.64)
    # no threshold meets both: the promise on ok comes first, the review share says the cost
    strict = cal.choose_threshold(probs, y, max_silent=0.0, max_review=0.05)
    assert strict.silent_errors == 0 and strict.threshold > conf[10]
    assert strict.review_share > 0.8
    at = cal.at_threshold(probs, y, 0.5)
    assert at.accuracy == pytest.approx(0.96)
    assert at.review_share == pytest.approx((conf < 0.5).mean())
    assert at.silent_errors == pytest.approx(0.01)  # digit 10 only: 97-99 are below 0.5
