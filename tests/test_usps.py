"""The USPS loader and the shared split (digitd.dataset), on the committed 600-digit sample
and, when ../shared is beside the checkout, on the real file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from digitd.dataset import USPS_SHA256, DatasetError, load_usps, split_sha256, usps_page, usps_split
from digitd.preprocess import normalise

SAMPLE = Path(__file__).parent / "data" / "usps_sample.gz"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "usps" / "zip.train.gz"


def test_sample_loads():
    usps = load_usps(SAMPLE)
    assert usps.x.shape == (600, 16, 16) and usps.x.dtype == np.float32
    assert usps.y.shape == (600,) and set(np.unique(usps.y)) == set(range(10))
    assert usps.x.min() >= -1 and usps.x.max() <= 1


def test_split_is_fixed_disjoint_and_complete():
    parts = usps_split(7291)
    assert {k: len(v) for k, v in parts.items()} == {"train": 3645, "calibration": 1458,
                                                     "test": 2188}
    every = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(every), np.arange(7291))
    again = usps_split(7291)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    # pinned: the permutation of numpy's default_rng(20261130), the split every helper uses
    assert parts["train"][:3].tolist() == [5706, 1917, 411]
    assert parts["test"][:5].tolist() == [4289, 3122, 2747, 1093, 2074]
    assert split_sha256(parts["test"]).startswith("82f86ef17854b26b")


def test_wrong_checksum_under_the_official_name(tmp_path):
    fake = tmp_path / "zip.train.gz"
    fake.write_bytes(SAMPLE.read_bytes())
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        load_usps(tmp_path)
    assert len(load_usps(tmp_path, verify=False).y) == 600


def test_malformed_lines_are_one_error(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"3 0.5 0.5\n"))
    with pytest.raises(DatasetError, match="257"):
        load_usps(bad)
    bad.write_bytes(gzip.compress(b"12 " + b"-1 " * 256 + b"\n"))
    with pytest.raises(DatasetError, match="labels"):
        load_usps(bad)
    with pytest.raises(DatasetError, match="missing"):
        load_usps(tmp_path / "none.gz")


def test_page_goes_through_preprocessing_into_the_contract():
    usps = load_usps(SAMPLE)
    page = usps_page(usps.x[0])
    assert page.dtype == np.uint8 and page.shape == (88, 88)
    assert page[0, 0] == 255 and page.min() < 64  # white paper, dark ink
    x = normalise(page)
    assert x.shape == (28, 28) and x.max() == pytest.approx(1.0)
    rows, cols = np.flatnonzero(x.max(1)), np.flatnonzero(x.max(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20


@pytest.mark.skipif(not REAL.is_file(), reason="../shared/data/usps not beside the checkout")
def test_real_file():
    usps = load_usps(REAL)
    assert usps.sha256 == USPS_SHA256
    assert np.bincount(usps.y).tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    parts = usps.split()
    assert len(parts["test"]) == 2188
