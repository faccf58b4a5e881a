"""bench/disputed_labels.py: the raters' list of MNIST test digits whose label they reject."""

import numpy as np

from disputed_labels import MNIST_TEST, disputed
from harness import SAMPLE


def test_indices_name_mnist_test_digits_with_their_given_labels():
    """The committed sample holds MNIST's first 1,000 test digits in their published order:
    those of the list among them carry the label the raters were shown as given."""
    y = np.load(SAMPLE)["y_test"]
    within = [i for i in MNIST_TEST if i < len(y)]
    assert within == [947]  # the only one among the first 1,000
    assert all(int(y[i]) == MNIST_TEST[i][0] for i in within)
    assert all(sum(votes) == 5 and votes[0] < 3 for _, _, votes in MNIST_TEST.values())


def test_a_number_is_disputed_when_any_of_its_digits_is():
    assert disputed([3, 947, 12])
    assert disputed(np.array([9729]))
    assert not disputed([0, 1, 2, 946, 948])
    assert not disputed([])
