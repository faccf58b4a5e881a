"""PNG structure checks done before any decoding: signature, IHDR, chunk lengths and CRCs.

Everything here reads the bytes only; nothing is decompressed or allocated in proportion to the
image's declared size, so a 60000x60000 "bomb" is refused for the cost of reading 33 bytes.
Failures raise `Rejected` with a reason code (digitd.codes.Reason).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from zlib_ng import zlib_ng  # its crc32: zlib's, 5x faster (SIMD) on a scan's 100 kB

from digitd.codes import Reason, Rejected

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Colour type -> allowed bit depths (PNG specification, table 11.1).
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}

# libpng writes IDAT in 8 KiB chunks: a 40-megapixel noisy scan has ~15,000. More than this
# is a file built to make the chunk walk slow, not an image.
MAX_CHUNKS = 200_000


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _sniff(data: bytes) -> str:
    """A few words on what non-PNG bytes look like, for the human message."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF"
    if head.startswith(b"BM"):
        return "a BMP"
    if head.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "a WebP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF"
    if head.startswith(b"%PDF"):
        return "a PDF"
    sample = data[:512]
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:  # a cut multi-byte character at the end is still text
        if exc.start < len(sample) - 3:
            return "binary data"
    return "text"


def read_header(data: bytes, max_pixels: int) -> PngHeader:
    """Check the signature and IHDR; refuse a declared size above `max_pixels`."""
    if not data:
        raise Rejected(Reason.EMPTY, "the file is empty")
    if len(data) < len(PNG_SIGNATURE):
        if PNG_SIGNATURE.startswith(bytes(data)):
            raise Rejected(Reason.TRUNCATED,
                           f"the file ends after {len(data)} bytes of PNG signature")
        raise Rejected(Reason.NOT_PNG, f"not a PNG file (looks like {_sniff(data)})")
    if not data.startswith(PNG_SIGNATURE):
        raise Rejected(Reason.NOT_PNG, f"not a PNG file (looks like {_sniff(data)})")
    if len(data) < 33:
        raise Rejected(Reason.TRUNCATED, f"the file ends inside the PNG header ({len(data)} bytes)")
    length, ctype = struct.unpack_from(">I4s", data, 8)
    if ctype != b"IHDR" or length != 13:
        raise Rejected(Reason.CORRUPT, "the PNG does not start with a valid IHDR chunk")
    if zlib_ng.crc32(data[12:29]) != struct.unpack_from(">I", data, 29)[0]:
        raise Rejected(Reason.CORRUPT, "bad CRC in the IHDR chunk")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data, 16
    )
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise Rejected(Reason.CORRUPT, f"invalid image size {width}x{height} in IHDR")
    if colour not in _DEPTHS or depth not in _DEPTHS[colour]:
        raise Rejected(Reason.CORRUPT, f"invalid colour type {colour} / bit depth {depth} in IHDR")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise Rejected(Reason.CORRUPT, "invalid compression, filter or interlace method in IHDR")
    if width * height > max_pixels:
        raise Rejected(
            Reason.TOO_LARGE,
            f"{width}x{height} is {width * height:,} pixels, above the limit of {max_pixels:,}",
        )
    return PngHeader(width, height, depth, colour, interlace == 1)


def check_chunks(data: bytes, header: PngHeader) -> None:
    """Walk every chunk after IHDR: lengths inside the file, CRCs right, IDAT present, IEND."""
    view = memoryview(data)
    pos, end, count = 33, len(data), 0
    seen_idat = seen_plte = False
    crc32 = zlib_ng.crc32
    unpack = struct.unpack_from
    while True:
        if pos + 12 > end:
            raise Rejected(Reason.TRUNCATED,
                           f"the file ends after {end} bytes, before the IEND chunk")
        length, ctype = unpack(">I4s", data, pos)
        if length >= 2**31:
            raise Rejected(Reason.CORRUPT, f"invalid chunk length at byte {pos}")
        stop = pos + 8 + length
        if stop + 4 > end:
            raise Rejected(Reason.TRUNCATED, f"the file ends after {end} bytes, inside a chunk")
        if crc32(view[pos + 4 : stop]) != unpack(">I", data, stop)[0]:
            name = ctype.decode("latin-1")
            raise Rejected(Reason.CORRUPT, f"bad CRC in the {name!r} chunk at byte {pos}")
        if ctype == b"IEND":
            break
        if ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"PLTE":
            seen_plte = True
        count += 1
        if count > MAX_CHUNKS:
            raise Rejected(Reason.CORRUPT, f"more than {MAX_CHUNKS:,} chunks")
        pos = stop + 4
    if not seen_idat:
        raise Rejected(Reason.CORRUPT, "the PNG has no image data (IDAT)")
    if header.colour_type == 3 and not seen_plte:
        raise Rejected(Reason.CORRUPT, "a palette PNG without its palette (PLTE)")


def check_png(data: bytes, max_pixels: int) -> PngHeader:
    """All structural checks: returns the header, or raises `Rejected`."""
    header = read_header(data, max_pixels)
    check_chunks(data, header)
    return header
