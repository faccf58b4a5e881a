"""MNIST test digits whose given label human raters reject: what a bench counts as "wrong" when
a reader reads what is written.

Northcutt, Athalye and Mueller, "Pervasive Label Errors in Test Sets Destabilize Machine
Learning Benchmarks" (NeurIPS 2021 Datasets and Benchmarks; data in the repository
cleanlab/label-errors, mturk/mnist_mturk.json) showed five Mechanical Turk raters each of the
100 MNIST test digits confident learning flagged. These are the 15 whose given label fewer
than three of the five chose: the paper's MNIST label errors. Indices into MNIST's test set
in its published order (t10k-images-idx3-ubyte), with the given label and the raters' votes
(given, the flagged alternative, neither).

The benches report their figures on every digit as drawn; this list only adds the same
figure without the strings or images that hold one of these digits (bench/number_accuracy.py),
so that a reader of the figures can tell MNIST's label noise from the reader's errors. It was
not chosen by any digitd model: it is the raters' list as published.
"""

from __future__ import annotations

from collections.abc import Iterable

# index: (given label, the alternative shown to the raters, votes (given, alternative, neither))
MNIST_TEST: dict[int, tuple[int, int, tuple[int, int, int]]] = {
    947: (8, 9, (0, 5, 0)),
    1621: (0, 6, (2, 3, 0)),
    1901: (9, 4, (2, 3, 0)),
    2130: (4, 9, (2, 2, 1)),
    2462: (2, 0, (0, 4, 1)),
    2597: (5, 3, (0, 4, 1)),
    2654: (6, 1, (0, 2, 3)),
    3520: (6, 4, (2, 0, 3)),
    3558: (5, 0, (1, 4, 0)),
    5937: (5, 3, (1, 3, 1)),
    6651: (0, 6, (0, 5, 0)),
    6783: (1, 6, (2, 3, 0)),
    8527: (4, 9, (2, 2, 1)),
    9679: (6, 3, (2, 0, 3)),
    9729: (5, 6, (2, 3, 0)),
}


def disputed(picks: Iterable[int]) -> bool:
    """Does a number drawn from these MNIST test digits hold one the raters disputed?"""
    return any(int(i) in MNIST_TEST for i in picks)
