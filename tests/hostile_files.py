"""Hostile image files that stay within the byte and pixel caps (issue 22, item 2), made here.

Each is built the way the probe built it: small on the wire, costly to decode or to parse. They
are shared by tests/test_decode_costs.py (peak memory and CPU in a fresh process) and
tests/test_hostile_uploads.py. SIDE x SIDE is just under the default 40 MP pixel cap.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

SIDE = 6324  # 39.99 MP


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def webp_lossless_rgba(side: int = SIDE) -> bytes:
    """A lossless WebP of side x side transparent pixels: 34 bytes."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (0, 0, 0, 0)).save(
        buffer, "WEBP", lossless=True, quality=0, method=0
    )
    return buffer.getvalue()


def png_16bit_trns(side: int = SIDE) -> bytes:
    """A 16-bit grey PNG with a tRNS grey level, all zeros: 78 KB at 40 MP."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side * 2)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"tRNS", b"\x00\x00")
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def png_empty_chunks(count: int = 800_000) -> bytes:
    """A 1x1 PNG behind `count` empty ancillary chunks: 9.6 MB at 800,000."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"abCd", b"") * count
        + png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + png_chunk(b"IEND", b"")
    )


def gif_one_byte_sub_blocks(side: int = SIDE, size: int = 9_800_000) -> bytes:
    """A side x side GIF with a transparent index whose image data and a comment are split into
    one-byte sub-blocks, padded to `size` bytes (9.8 MB)."""
    buffer = io.BytesIO()
    Image.new("P", (side, side), 0).save(buffer, "GIF", transparency=0)
    data = buffer.getvalue()
    pos = 13 + ((3 << ((data[10] & 7) + 1)) if data[10] & 0x80 else 0)
    out = bytearray(data[:pos])
    while data[pos] == 0x21:  # extensions as they are
        out += data[pos : pos + 2]
        pos += 2
        while data[pos]:
            out += data[pos : pos + data[pos] + 1]
            pos += data[pos] + 1
        out.append(0)
        pos += 1
    out += data[pos : pos + 11]  # image descriptor (no local table) and LZW code size
    pos += 11
    lzw = bytearray()
    while data[pos]:
        lzw += data[pos + 1 : pos + 1 + data[pos]]
        pos += data[pos] + 1
    for byte in lzw:
        out += bytes((1, byte))
    out.append(0)
    padding = max(0, (size - len(out) - 4) // 2)
    out += b"\x21\xfe" + b"\x01x" * padding + b"\x00;"
    return bytes(out)


def png_rgba_gradient(side: int = SIDE) -> bytes:
    """A photo-like RGBA PNG (gradients, varying alpha) at 40 MP: a legitimate costly input."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.empty((side, side, 4), np.uint8)
    pixels[..., 0] = ramp
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128
    pixels[..., 3] = ramp
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_progressive(side: int = SIDE) -> bytes:
    """A progressive JPEG at 40 MP (its decoder keeps every coefficient)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buffer, "JPEG", progressive=True, quality=50)
    return buffer.getvalue()


#: name -> maker, for the tests and the cost report.
HOSTILE = {
    "webp_lossless_rgba_40mp": webp_lossless_rgba,
    "png_16bit_trns_40mp": png_16bit_trns,
    "png_800k_empty_chunks": png_empty_chunks,
    "gif_one_byte_sub_blocks": gif_one_byte_sub_blocks,
    "png_rgba_gradient_40mp": png_rgba_gradient,
    "jpeg_progressive_40mp": jpeg_progressive,
}
