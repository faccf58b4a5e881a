"""MNIST loading: IDX (gzip, raw, both name forms), npz, checksums, and the CLI's exit code 2."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from digitd.dataset import IDX_SHA256, NPZ_NAME, DatasetError, load_mnist
from harness import run_cli

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"
REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x08 = ubyte, then big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(directory: Path, gz: bool = True, dotted: bool = False) -> dict[str, np.ndarray]:
    """Write the sample as four IDX files under the official names; return what was written."""
    with np.load(SAMPLE) as npz:
        arrays = {
            "train-images-idx3-ubyte": npz["x_train"], "train-labels-idx1-ubyte": npz["y_train"],
            "t10k-images-idx3-ubyte": npz["x_test"], "t10k-labels-idx1-ubyte": npz["y_test"],
        }
    for stem, array in arrays.items():
        name = stem.replace("-idx", ".idx") if dotted else stem
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (directory / name).write_bytes(idx_bytes(array))
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("dotted", [False, True], ids=["dash-name", "dot-name"])
def test_idx_round_trip(tmp_path, gz, dotted):
    written = write_idx(tmp_path, gz=gz, dotted=dotted)
    data = load_mnist(tmp_path, verify=False)
    assert np.array_equal(data.x_train, written["train-images-idx3-ubyte"])
    assert np.array_equal(data.y_test, written["t10k-labels-idx1-ubyte"])
    assert data.x_train.shape == (3000, 28, 28) and data.x_train.dtype == np.uint8
    assert set(data.sha256) == set(IDX_SHA256)


def test_idx_under_official_names_must_match_official_checksums(tmp_path):
    write_idx(tmp_path)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: SHA-256 mismatch"):
        load_mnist(tmp_path)


def test_checksum_failure_is_exit_2_with_one_line(tmp_path):
    write_idx(tmp_path)
    result = run_cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "train-images-idx3-ubyte.gz" in lines[0] and "SHA-256 mismatch" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_file_names_it(tmp_path):
    write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.*missing"):
        load_mnist(tmp_path, verify=False)
    result = run_cli("evaluate", "--data", str(tmp_path), "--no-verify")
    assert result.returncode == 2
    assert "t10k-labels-idx1-ubyte" in result.stderr and "Traceback" not in result.stderr


def test_missing_directory(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nowhere" in result.stderr


def test_truncated_gzip(tmp_path):
    write_idx(tmp_path)
    file = tmp_path / "train-images-idx3-ubyte.gz"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: truncated"):
        load_mnist(tmp_path, verify=False)


def test_truncated_raw(tmp_path):
    write_idx(tmp_path, gz=False)
    file = tmp_path / "t10k-images-idx3-ubyte"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path, verify=False)


def test_not_an_idx_file(tmp_path):
    write_idx(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"<html>404</html>")
    with pytest.raises(DatasetError, match="bad magic number"):
        load_mnist(tmp_path, verify=False)


def test_npz_file(tmp_path):
    data = load_mnist(SAMPLE)
    assert (len(data.x_train), len(data.x_test)) == (3000, 1000)
    assert data.y_train.max() == 9


def test_npz_in_directory_named_mnist_npz_is_checksummed(tmp_path):
    (tmp_path / NPZ_NAME).write_bytes(SAMPLE.read_bytes())
    with pytest.raises(DatasetError, match=r"mnist\.npz: SHA-256 mismatch"):
        load_mnist(tmp_path)
    assert len(load_mnist(tmp_path, verify=False).x_test) == 1000


def test_npz_with_wrong_shapes(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((5, 32, 32), np.uint8), y_train=np.zeros(5, np.uint8),
             x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match=r"bad\.npz: images are uint8 \(5, 32, 32\)"):
        load_mnist(bad)


def test_npz_truncated(tmp_path):
    bad = tmp_path / "cut.npz"
    bad.write_bytes(SAMPLE.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"cut\.npz: not a readable npz"):
        load_mnist(bad)


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="the full MNIST is not on this machine")
def test_real_mnist_checksums():
    data = load_mnist(REAL_MNIST)
    assert data.x_train.shape == (60000, 28, 28) and data.x_test.shape == (10000, 28, 28)
    assert data.sha256 == IDX_SHA256
    assert np.bincount(data.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                 974, 1009]
