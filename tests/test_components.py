"""digitd.components.label: the parts of a binary image, as OpenCV's default labels them."""

from __future__ import annotations

import cv2
import numpy as np

from digitd.components import label


def test_parts_their_boxes_and_areas():
    binary = np.zeros((20, 30), np.uint8)
    binary[2:5, 3:9] = 255  # a bar
    binary[10:18, 20:22] = 255  # a stroke
    binary[18, 22] = 255  # touching it diagonally: the same part (8-connected)
    n, labels, stats = label(binary)
    assert n == 3 and labels.dtype == np.int32
    assert stats[1].tolist() == [3, 2, 6, 3, 18]  # raster order: the bar first
    assert stats[2].tolist() == [20, 10, 3, 9, 17]
    assert (labels[binary == 0] == 0).all()


def test_the_same_labels_as_opencvs_default_algorithm():
    """The labels and statistics every caller relies on, on noisy blobs of many shapes."""
    rng = np.random.default_rng(0)
    before = cv2.getNumThreads()
    try:
        for threads in (1, 2):
            cv2.setNumThreads(threads)
            for k in range(40):
                noise = rng.random((40 + k, 90 + 3 * k))
                blobs = cv2.GaussianBlur(noise, (0, 0), 1 + k % 4) > 0.5
                binary = blobs.astype(np.uint8) * 255
                n, labels, stats = label(binary)
                m, expected, expected_stats, _ = cv2.connectedComponentsWithStats(
                    binary, connectivity=8)
                assert n == m and np.array_equal(labels, expected)
                assert np.array_equal(stats, expected_stats)
    finally:
        cv2.setNumThreads(before)
