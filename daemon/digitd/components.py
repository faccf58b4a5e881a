"""Connected components, labelled the one way digitd labels them (preprocess, segment, ruling).

    label(binary) -> (n, labels, stats)    8-connected; labels int32, 0 the background;
                                           stats (n, 5): x, y, width, height, area
    without((n, labels, stats), drop) -> (n, labels, stats)    the same with parts dropped

OpenCV's default for 8-connectivity (Spaghetti) and BBDT give the same labels and statistics
(equal on all 1,340 calls that segmenting 400 number images makes, on one thread and on
two), but on one thread, as the daemon's workers run, BBDT costs about 30% less: 141 -> 99
microseconds a call there (docs/BENCHMARKS.md, Numbers).

Callers paint a label image through a table of one value per label as `table.take(labels)`:
the same array as `table[labels]` for two to three times less (numpy's take skips the general
fancy-indexing machinery; 29 -> 11-14 microseconds at 68 x 161 labels).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["label", "without"]


def label(binary: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The 8-connected parts of a uint8 binary image: their count (the background
    included), the label image and each label's box and area."""
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        binary, 8, cv2.CV_32S, cv2.CCL_BBDT)
    return n, labels, stats


def without(parts: tuple[int, np.ndarray, np.ndarray],
            drop: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """What label() gives on the same image with the parts `drop` (a bool per part, the
    background excluded) made background, without labelling it again: the other parts keep
    their order (a part's label follows where the scan first meets it, which no other part
    changes) and are numbered on; the background's box and area take the dropped parts in."""
    n, labels, stats = parts
    kept = np.flatnonzero(~drop) + 1
    gone = np.flatnonzero(drop) + 1
    renumber = np.zeros(n, np.int32)
    renumber[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    out = stats[np.concatenate(([0], kept))]
    paper = stats[np.concatenate(([0], gone))]
    x0, y0 = paper[:, 0].min(), paper[:, 1].min()
    x1, y1 = (paper[:, 0] + paper[:, 2]).max(), (paper[:, 1] + paper[:, 3]).max()
    out[0] = (x0, y0, x1 - x0, y1 - y0, paper[:, 4].sum())
    return len(kept) + 1, renumber.take(labels), out
