"""Load MNIST from the original IDX files (gzip or raw) or a Keras `mnist.npz`, and verify it.

Every failure is a `DatasetError` whose message is one line naming the file and what is wrong;
the CLI turns it into exit code 2. Only numpy and the standard library are imported here.

Checksums: a file with an official name (`train-images-idx3-ubyte`, `mnist.npz`, ...) must have
the official SHA-256, so a corrupt or substituted download is caught. Custom data under other
names is checked for shape and dtype only; `verify=False` (CLI `--no-verify`) skips checksums
for custom data that keeps the official names.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# SHA-256 of the *uncompressed* IDX files (../shared/data/mnist/README.md, LeCun's originals).
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# SHA-256 of Keras' own mnist.npz (keras.datasets.mnist).
NPZ_NAME = "mnist.npz"
NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


class DatasetError(Exception):
    """Missing, truncated, malformed or wrong-checksum data; the message is one line."""


@dataclass
class Mnist:
    """The four arrays, uint8 as in the originals, plus where they came from."""

    x_train: np.ndarray  # (N, 28, 28) uint8
    y_train: np.ndarray  # (N,) uint8
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 (uncompressed)


def load_mnist(data: str | Path | None = None, *, verify: bool = True) -> Mnist:
    """Load MNIST from `data` (a directory or an .npz file), or from Keras' cache when None."""
    if data is None:
        return _load_keras_default()
    path = Path(data)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path, verify=verify)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such directory or .npz file")
    if any(_find_idx(path, stem) for stem in IDX_SHA256):
        return load_idx_dir(path, verify=verify)
    if (path / NPZ_NAME).is_file():
        return load_npz(path / NPZ_NAME, verify=verify)
    raise DatasetError(f"{path}: no MNIST IDX files (train-images-idx3-ubyte[.gz], ...) "
                       f"or {NPZ_NAME} found")


def load_idx_dir(directory: Path, *, verify: bool = True) -> Mnist:
    """Read the four IDX files from `directory`; each may be .gz or raw, either name form."""
    arrays, sums = {}, {}
    for stem in IDX_SHA256:
        file = _find_idx(directory, stem)
        if file is None:
            raise DatasetError(f"{directory / (stem + '.gz')}: missing (neither gzip nor raw "
                               "IDX file found)")
        arrays[stem], sums[stem] = read_idx(file, expected_sha256=IDX_SHA256[stem] if verify
                                            else None)
    x_train, y_train = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    x_test, y_test = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    _check_pair(directory / "train-*", x_train, y_train)
    _check_pair(directory / "t10k-*", x_test, y_test)
    return Mnist(x_train, y_train, x_test, y_test, source=str(directory), sha256=sums)


def _find_idx(directory: Path, stem: str) -> Path | None:
    """The IDX file for `stem`: `train-images-idx3-ubyte[.gz]` or `train-images.idx3-ubyte[.gz]`."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(file: Path, expected_sha256: str | None = None) -> tuple[np.ndarray, str]:
    """Parse one ubyte IDX file (gzip or raw); return the array and its uncompressed SHA-256."""
    raw = _read_bytes(file)
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DatasetError(f"{file}: not a ubyte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{file}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DatasetError(f"{file}: {what}: {len(raw)} bytes, header {shape} needs {expected}")
    if ndim == 3 and shape[1:] != (28, 28):
        raise DatasetError(f"{file}: images are {shape[1]}x{shape[2]}, expected 28x28")
    if expected_sha256 is not None and digest != expected_sha256:
        raise DatasetError(f"{file}: SHA-256 mismatch (got {digest[:12]}…, expected "
                           f"{expected_sha256[:12]}…); re-download it or pass --no-verify")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    return array, digest


def _read_bytes(file: Path) -> bytes:
    """All bytes of `file`, gunzipped when it ends in .gz; I/O and gzip errors become one line."""
    try:
        if file.suffix == ".gz":
            with gzip.open(file, "rb") as f:
                return f.read()
        return file.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{file}: missing") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{file}: truncated or corrupt gzip ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read ({exc.strerror or exc})") from None


def load_npz(file: Path, *, verify: bool = True) -> Mnist:
    """Read a Keras-layout npz (x_train, y_train, x_test, y_test); checksum if named mnist.npz."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if verify and file.name == NPZ_NAME and digest != NPZ_SHA256:
        raise DatasetError(f"{file}: SHA-256 mismatch (got {digest[:12]}…, expected "
                           f"{NPZ_SHA256[:12]}…); re-download it or pass --no-verify")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DatasetError(f"{file}: missing array {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError...: all mean "corrupt"
        raise DatasetError(f"{file}: not a readable npz ({type(exc).__name__})") from None
    _check_pair(file, arrays["x_train"], arrays["y_train"])
    _check_pair(file, arrays["x_test"], arrays["y_test"])
    return Mnist(**arrays, source=str(file), sha256={file.name: digest})


def _check_pair(file: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Images (N, 28, 28) uint8 and N uint8 labels in 0..9, or a DatasetError naming `file`."""
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DatasetError(f"{file}: images are {x.dtype} {x.shape}, expected uint8 (N, 28, 28)")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{file}: labels are {y.dtype} {y.shape}, expected {len(x)} integers")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{file}: labels outside 0..9")


def _load_keras_default() -> Mnist:
    """Keras' mnist.load_data() (downloads and caches on first use; needs internet)."""
    from digitd.model import import_keras  # lazy: pulls in TensorFlow (quietly)

    try:
        (x_train, y_train), (x_test, y_test) = import_keras().datasets.mnist.load_data()
    except Exception as exc:
        raise DatasetError(f"keras mnist.npz: cannot download or read ({exc}); "
                           "pass --data DIR") from None
    cached = Path.home() / ".keras" / "datasets" / NPZ_NAME
    sums = {}
    if cached.is_file():
        sums[NPZ_NAME] = hashlib.sha256(cached.read_bytes()).hexdigest()
    return Mnist(x_train, y_train, x_test, y_test, source="keras.datasets.mnist", sha256=sums)


# --- USPS: real handwriting from other writers (../shared/data/usps) -----------------------

USPS_NAME = "zip.train.gz"
USPS_SHA256 = "66ebf231ab51f2cf6ac1a892d0f98ccffee1079d7a5db638c1f11f366046ca16"
# THE SHARED SPLIT (one home: here). A fixed permutation of the file's digits, cut in order
# into train 50% / calibration 20% / test 30%. The test part is never trained or calibrated on;
# figures "on held-out USPS" are on it (issue 11's corrections take 800 of its digits).
USPS_SPLIT_SEED = 20261130
USPS_SPLIT = (("train", 50), ("calibration", 20), ("test", 30))
USPS_PAGE_SCALE, USPS_PAGE_MARGIN = 4, 12  # a 16x16 digit as a page: 64x64 ink, 12 px of paper


@dataclass
class Usps:
    """USPS digits as uint8 grey pages (dark ink on white paper), labels, and provenance."""

    x: np.ndarray  # (N, 16, 16) float32 in [-1, 1], 1 = ink, as in the file
    y: np.ndarray  # (N,) uint8
    source: str
    sha256: str  # of the .gz file as stored

    def split(self) -> dict[str, np.ndarray]:
        """The shared split: part name -> indices into x and y (see USPS_SPLIT)."""
        return usps_split(len(self.y))

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = self.split()[name]
        return self.x[idx], self.y[idx]


def usps_split(n: int) -> dict[str, np.ndarray]:
    """Indices of each part for n digits: permutation by default_rng(USPS_SPLIT_SEED), cut at
    n*50//100 and n*70//100 (7,291 digits: 3,645 train, 1,458 calibration, 2,188 test)."""
    order = np.random.default_rng(USPS_SPLIT_SEED).permutation(n)
    parts, start, cumulative = {}, 0, 0
    for name, percent in USPS_SPLIT:
        cumulative += percent
        end = n * cumulative // 100
        parts[name] = order[start:end]
        start = end
    return parts


def split_sha256(indices: np.ndarray) -> str:
    """SHA-256 of a part's indices (int64, little-endian): names exactly which digits it holds."""
    return hashlib.sha256(np.asarray(indices, "<i8").tobytes()).hexdigest()


def load_usps(data: str | Path, *, verify: bool = True) -> Usps:
    """Read zip.train.gz (or a folder holding it): one digit a line, label then 256 values."""
    path = Path(data)
    file = path / USPS_NAME if path.is_dir() else path
    raw = _read_bytes(file)
    with open(file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if verify and file.name == USPS_NAME and digest != USPS_SHA256:
        raise DatasetError(f"{file}: SHA-256 mismatch (got {digest[:12]}…, expected "
                           f"{USPS_SHA256[:12]}…); pass --no-verify for other data")
    try:
        table = np.loadtxt(raw.decode("ascii").splitlines(), dtype=np.float32, ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{file}: not USPS text data ({exc})") from None
    if table.shape[1] != 257 or not len(table):
        raise DatasetError(f"{file}: expected lines of 257 numbers, got {table.shape}")
    labels = table[:, 0]
    if labels.min() < 0 or labels.max() > 9 or np.any(labels != np.round(labels)):
        raise DatasetError(f"{file}: labels outside 0..9")
    x = np.clip(table[:, 1:].reshape(-1, 16, 16), -1.0, 1.0)
    return Usps(x=x, y=labels.astype(np.uint8), source=str(file), sha256=digest)


def usps_ink(x16: np.ndarray) -> np.ndarray:
    """USPS digits as MNIST's arrays hold theirs, for digitd.synth to write along a line:
    uint8 (N, 28, 28), ink bright on 0, each digit's own 16x16 values (paper -1 -> 0, the
    faint scanning noise below 8 dropped) in the middle. (synth crops each to its ink.)"""
    ink = np.clip((np.asarray(x16, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    ink[ink < 8] = 0
    return np.pad(ink, ((0, 0), (6, 6), (6, 6)))


def usps_page(digit16: np.ndarray) -> np.ndarray:
    """One USPS digit as a scanned page would show it: uint8 grey, dark ink on white paper,
    enlarged 4x (bicubic: a low-resolution scan seen at a normal size) with a paper margin.
    Both the training data and bench/evalsets.py's PNGs are made by this one function."""
    import cv2

    grey = (1.0 - np.asarray(digit16, np.float32)) * 127.5  # -1 paper -> 255, 1 ink -> 0
    side = 16 * USPS_PAGE_SCALE
    big = cv2.resize(grey, (side, side), interpolation=cv2.INTER_CUBIC)
    page = np.clip(big + 0.5, 0, 255).astype(np.uint8)
    m = USPS_PAGE_MARGIN
    return cv2.copyMakeBorder(page, m, m, m, m, cv2.BORDER_CONSTANT, value=255)
