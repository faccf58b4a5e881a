"""How fast can a 1000x800 scan be decoded here at all? Every PNG decoder on PyPI that was
tried, and zlib-compatible inflaters on the image data alone, on the scans of
bench/preprocess_bench.py; median ms on one core.

Not a digitd dependency: run it in a scratch venv that has the candidates, e.g.

    python3 -m venv /tmp/dec && /tmp/dec/bin/pip install numpy opencv-python-headless \\
        pillow pyspng imagecodecs isal deflate
    .venv/bin/python bench/png_decoders.py --write /tmp/scans   # the scans, with digitd's venv
    /tmp/dec/bin/python bench/png_decoders.py --read /tmp/scans
"""

from __future__ import annotations

import argparse
import importlib
import io
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

FLAVOURS = ("paper_grey", "blue_ink", "photo_jpeg", "grey16", "interlaced", "palette")


def write_scans(folder: Path) -> None:
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "daemon")]
    import scans

    digits = np.load(here.parent / "tests/data/mnist_sample.npz")["x_test"]
    folder.mkdir(parents=True, exist_ok=True)
    for flavour in FLAVOURS:
        data, _ = scans.render_scan(digits[1], 1, flavour=flavour, canvas_size=(800, 1000),
                                    height=240)
        (folder / f"{flavour}.png").write_bytes(data)


def idat(data: bytes) -> bytes:
    """The concatenated zlib stream of a PNG's IDAT chunks."""
    i, parts = 8, []
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        if data[i + 4 : i + 8] == b"IDAT":
            parts.append(data[i + 8 : i + 8 + n])
        i += 12 + n
    return b"".join(parts)


def median_ms(fn, runs: int = 100) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def decoders() -> dict:
    """name -> function(png bytes, zlib stream, inflated size); only those installed."""
    found = {}

    def have(module):
        try:
            return importlib.import_module(module)
        except ImportError:
            return None

    if cv2 := have("cv2"):
        cv2.setNumThreads(1)
        found["OpenCV (libpng)"] = lambda b, z, n: cv2.imdecode(np.frombuffer(b, np.uint8), -1)
    if have("PIL"):
        from PIL import Image

        found["Pillow"] = lambda b, z, n: np.asarray(Image.open(io.BytesIO(b)))
    if pyspng := have("pyspng"):
        found["pyspng (libspng)"] = lambda b, z, n: pyspng.load(b)
    if ic := have("imagecodecs"):
        found["imagecodecs png"] = lambda b, z, n: ic.png_decode(b)
        found["imagecodecs spng"] = lambda b, z, n: ic.spng_decode(b)
    found["inflate only: zlib"] = lambda b, z, n: zlib.decompress(z)
    if ic:
        found["inflate only: libdeflate"] = lambda b, z, n: ic.deflate_decode(z, out=n)
    if isal := have("isal.isal_zlib"):
        found["inflate only: ISA-L"] = lambda b, z, n: isal.decompress(z)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the scans into this folder")
    parser.add_argument("--read", type=Path, help="time the decoders on the scans here")
    args = parser.parse_args()
    if args.write:
        write_scans(args.write)
    if not args.read:
        return 0
    files = [args.read / f"{f}.png" for f in FLAVOURS]
    candidates = decoders()
    print(f"{'decoder':26s}" + "".join(f"{p.stem:>12s}" for p in files))
    blobs = [(p.read_bytes(), idat(p.read_bytes())) for p in files]
    for name, fn in candidates.items():
        cells = []
        for data, stream in blobs:
            size = len(zlib.decompress(stream))
            try:
                ms = median_ms(lambda f=fn, b=data, z=stream, n=size: f(b, z, n))
                cells.append(f"{ms:12.2f}")
            except Exception:  # a decoder that refuses a flavour
                cells.append(f"{'-':>12s}")
        print(f"{name:26s}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
