"""digitd.components.label: the parts of a binary image, as OpenCV's default labels them."""

from __future__ import annotations

import cv2
import numpy as np

from digitd.components import label, without


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


def test_without_is_labelling_again_without_the_parts_dropped():
    """without(): the labels and statistics label() gives once some parts are made
    background (the specks preprocess drops, the large parts too), on noisy blobs."""
    rng = np.random.default_rng(1)
    for k in range(40):
        noise = rng.random((40 + k, 90 + 3 * k))
        binary = (cv2.GaussianBlur(noise, (0, 0), 1 + k % 4) > 0.5).astype(np.uint8) * 255
        n, labels, stats = label(binary)
        drop = rng.random(n - 1) < (0.2 if k % 2 else 0.7)
        drop[0] = True  # at least one
        kept = np.zeros(n, np.uint8)
        kept[1:][~drop] = 255
        m, expected, expected_stats = label(kept[labels])
        got_n, got, got_stats = without((n, labels, stats), drop)
        assert got_n == m and np.array_equal(got, expected), k
        assert np.array_equal(got_stats, expected_stats), k
