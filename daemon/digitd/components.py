"""Connected components, labelled the one way digitd labels them (preprocess, segment, ruling).

    label(binary) -> (n, labels, stats)    8-connected; labels int32, 0 the background;
                                           stats (n, 5): x, y, width, height, area

OpenCV's default for 8-connectivity (Spaghetti) and BBDT give the same labels and statistics
(equal on all 1,340 calls that segmenting 400 number images makes, on one thread and on
two), but on one thread, as the daemon's workers run, BBDT costs about 30% less: 141 -> 99
microseconds a call there (docs/BENCHMARKS.md, Numbers).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["label"]


def label(binary: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The 8-connected parts of a uint8 binary image: their count (the background
    included), the label image and each label's box and area."""
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        binary, 8, cv2.CV_32S, cv2.CCL_BBDT)
    return n, labels, stats
