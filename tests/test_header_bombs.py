"""Pixel limits read from every header form: plain lossy WebP, JPEG's rarer frame and restart
markers, and each format exactly at its limit."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from faceapp.config import DEFAULTS
from faceapp.decoding import decode_image
from faceapp.errors import FaceappError
from tests.test_decoding import gif

MB = 1024 * 1024


def code_of(data: bytes, max_pixels: int) -> str:
    with pytest.raises(FaceappError) as caught:
        decode_image(data, max_bytes=10 * MB, max_pixels=max_pixels)
    return caught.value.code


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def no_pillow_open(monkeypatch):
    """Fail the test if the bytes reach Pillow (and through it libwebp or libjpeg) at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("Image.open was called")

    monkeypatch.setattr(Image, "open", refuse)


def lossy_webp(width_field: int, height_field: int) -> bytes:
    """A plain lossy WebP ('VP8 ' chunk) whose key frame declares these 16-bit size fields."""
    payload = b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width_field, height_field)
    payload += b"\x00" * 24  # no real bitstream: libwebp would fail on it, if it got it
    chunk = b"VP8 " + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def sof(marker: int, width: int, height: int) -> bytes:
    """A start-of-frame segment (one grey component) declaring width x height."""
    return jpeg_segment(marker, b"\x08" + struct.pack(">HH", height, width) + b"\x01\x01\x11\x00")


def with_segments_after_soi(jpeg: bytes, *segments: bytes) -> bytes:
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    return save(Image.new("RGB", (16, 8), (90, 120, 150)), "JPEG", quality=90)


# --- plain lossy WebP ---------------------------------------------------------------------------


def test_a_lossy_webp_bomb_is_refused_from_its_header(no_pillow_open):
    assert code_of(lossy_webp(9000, 9000), max_pixels=40_000_000) == "image.too_many_pixels"


def test_a_lossy_webp_at_its_pixel_limit_passes_the_header_check(no_pillow_open):
    # One pixel over the limit is refused before Pillow; exactly at it is handed on (here to the
    # refusing stand-in, which shows the header check let it through).
    assert code_of(lossy_webp(1001, 1000), max_pixels=1_000_000) == "image.too_many_pixels"
    with pytest.raises(AssertionError, match="Image.open"):
        decode_image(lossy_webp(1000, 1000), max_bytes=MB, max_pixels=1_000_000)


def test_the_scale_bits_of_a_lossy_webp_size_are_not_part_of_it(no_pillow_open):
    # The top two bits of each field are an upscaling hint: 0xC000 | 100 is 100 px wide.
    with pytest.raises(AssertionError, match="Image.open"):
        decode_image(lossy_webp(0xC000 | 100, 0x4000 | 100), max_bytes=MB, max_pixels=10_000)


# --- JPEG frame markers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
)
def test_every_start_of_frame_marker_is_read(small_jpeg, marker, no_pillow_open):
    data = with_segments_after_soi(small_jpeg, sof(marker, 60_000, 60_000))
    assert code_of(data, max_pixels=40_000_000) == "image.too_many_pixels"


def test_the_largest_frame_counts_not_the_last(small_jpeg):
    # Pillow keeps the last frame header (small); libjpeg would size its buffers from the first.
    data = with_segments_after_soi(small_jpeg, sof(0xCF, 30_000, 30_000), sof(0xC0, 16, 8))
    assert code_of(data, max_pixels=40_000_000) == "image.too_many_pixels"


@pytest.mark.parametrize("marker", [0xD0, 0xD3, 0xD7, 0x01])
def test_markers_without_a_length_are_stepped_over(small_jpeg, marker, no_pillow_open):
    data = small_jpeg[:2] + bytes([0xFF, marker]) + sof(0xC0, 60_000, 60_000) + small_jpeg[2:]
    assert code_of(data, max_pixels=40_000_000) == "image.too_many_pixels"


@pytest.mark.parametrize("marker", [0xC4, 0xC8, 0xCC])
def test_tables_that_share_the_frame_range_are_not_frames(small_jpeg, marker):
    # DHT, JPG and DAC segments whose bytes would read as 60000x60000 if taken for a frame.
    table = jpeg_segment(marker, b"\x08" + struct.pack(">HH", 60_000, 60_000) + b"\x00\x00\x00")
    data = with_segments_after_soi(small_jpeg, table)
    with pytest.raises(FaceappError) as caught:
        decode_image(data, max_bytes=MB, max_pixels=40_000_000)
    assert caught.value.code == "image.corrupt"  # Pillow reads it, and finds it malformed


# --- every format exactly at its limit ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {"lossless": False}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_each_format_decodes_at_exactly_its_pixel_limit_and_not_one_below(fmt, params):
    data = save(Image.new("RGB", (37, 23), (200, 100, 50)), fmt, **params)
    decoded = decode_image(data, max_bytes=MB, max_pixels=37 * 23)
    assert (decoded.source_width, decoded.source_height) == (37, 23)
    assert code_of(data, max_pixels=37 * 23 - 1) == "image.too_many_pixels"


def test_the_default_frame_limit_is_the_configured_one():
    limit = DEFAULTS["MAX_IMAGE_FRAMES"]
    assert decode_image(gif(limit), max_bytes=MB, max_pixels=100).frames == limit
    with pytest.raises(FaceappError) as caught:
        decode_image(gif(limit + 1), max_bytes=MB, max_pixels=100)
    assert caught.value.code == "image.unsupported_format"


def test_max_side_may_be_one_pixel_but_not_zero():
    data = save(Image.new("RGB", (37, 23), (200, 100, 50)), "PNG")
    assert decode_image(data, max_bytes=MB, max_pixels=10_000, max_side=1).image.size == (1, 1)
    with pytest.raises(ValueError):
        decode_image(data, max_bytes=MB, max_pixels=10_000, max_side=0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_still_is_one_frame_even_when_only_one_is_allowed(fmt):
    data = save(Image.new("RGB", (8, 8), (10, 20, 30)), fmt)
    assert decode_image(data, max_bytes=MB, max_pixels=100, max_frames=1).frames == 1


def test_sixteen_bit_grey_maps_to_the_nearest_eight_bit_level():
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    data = save(Image.fromarray(levels), "PNG")  # mode I;16
    decoded = np.asarray(decode_image(data, max_bytes=MB, max_pixels=65536).image)[..., 0]
    assert np.array_equal(decoded, np.round(levels / 257).astype(np.uint8))


@pytest.mark.parametrize(("size", "fitted"), [((400, 1), (100, 1)), ((1, 400), (1, 100))])
def test_a_sliver_keeps_at_least_one_pixel_across(size, fitted):
    data = save(Image.new("RGB", size, (10, 20, 30)), "PNG")
    assert decode_image(data, max_bytes=MB, max_pixels=1000, max_side=100).image.size == fitted


def test_a_riff_file_that_is_not_webp_is_an_unsupported_format():
    wave = (
        b"RIFF"
        + struct.pack("<I", 36)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8)
    )
    assert code_of(wave + b"data\x00\x00\x00\x00", max_pixels=100) == "image.unsupported_format"


def test_a_png_cut_right_after_its_size_is_judged_by_that_size(no_pillow_open):
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 10**5, 10**5)
    assert len(head) == 24
    assert code_of(head, max_pixels=40_000_000) == "image.too_many_pixels"


def test_a_jpeg_with_exactly_the_scan_limit_is_accepted(small_jpeg):
    # The count covers the whole file, so padding after the end-of-image marker counts too.
    at_limit = small_jpeg + b"\xff\xda" * (100 - small_jpeg.count(b"\xff\xda"))
    assert decode_image(at_limit, max_bytes=MB, max_pixels=1000).image.size == (16, 8)
    assert code_of(at_limit + b"\xff\xda", max_pixels=1000) == "image.unsupported_format"


@pytest.mark.parametrize(
    "padding", [b"\xff", b"\xff\xff\xff", b"\xff\xd8"], ids=["fill", "fills", "soi"]
)
def test_fill_bytes_and_a_repeated_start_marker_are_stepped_over(
    small_jpeg, padding, no_pillow_open
):
    data = small_jpeg[:2] + padding + sof(0xC0, 60_000, 60_000) + small_jpeg[2:]
    assert code_of(data, max_pixels=40_000_000) == "image.too_many_pixels"


def test_a_frame_header_that_ends_the_file_is_still_read(no_pillow_open):
    data = b"\xff\xd8" + b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60_000, 60_000)
    assert code_of(data, max_pixels=40_000_000) == "image.too_many_pixels"


def test_the_frame_with_the_largest_area_counts_whatever_its_shape(small_jpeg, no_pillow_open):
    # A wide, flat frame of 40000 px, then a narrow, tall one of 2000 px.
    data = with_segments_after_soi(small_jpeg, sof(0xC0, 4000, 10), sof(0xC1, 20, 100))
    assert code_of(data, max_pixels=20_000) == "image.too_many_pixels"


def test_a_frame_after_other_segments_is_read(small_jpeg, no_pillow_open):
    comment = jpeg_segment(0xFE, b"a comment longer than 255 bytes " * 10)
    data = with_segments_after_soi(small_jpeg, comment, sof(0xC0, 60_000, 60_000))
    assert code_of(data, max_pixels=40_000_000) == "image.too_many_pixels"


def test_a_lossy_webp_cut_right_after_its_size_is_judged_by_that_size(no_pillow_open):
    head = lossy_webp(9000, 9000)[:30]
    assert code_of(head, max_pixels=40_000_000) == "image.too_many_pixels"


def test_an_extended_webp_decodes_at_exactly_its_pixel_limit():
    data = save(Image.new("RGBA", (37, 23), (200, 100, 50, 128)), "WEBP")
    assert data[12:16] == b"VP8X"
    assert decode_image(data, max_bytes=MB, max_pixels=37 * 23).source_width == 37
    assert code_of(data, max_pixels=37 * 23 - 1) == "image.too_many_pixels"


@pytest.mark.parametrize("keep", [None, 25], ids=["whole", "cut-after-size"])
def test_a_lossless_webp_bomb_is_refused_from_its_header(no_pillow_open, keep):
    bits = (5000 - 1) | (3001 - 1) << 14  # width-1 and height-1, 14 bits each
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    data = b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
    assert code_of(data[:keep], max_pixels=5000 * 3001 - 1) == "image.too_many_pixels"


def test_a_gif_of_just_its_screen_descriptor_is_judged_by_that_size(no_pillow_open):
    head = b"GIF89a" + struct.pack("<HH", 60_000, 60_000) + b"\x00\x00\x00"
    assert len(head) == 13
    assert code_of(head, max_pixels=40_000_000) == "image.too_many_pixels"


def test_gif_frames_are_counted_past_a_palette_that_looks_like_blocks():
    # Palette bytes ';' (trailer) and ',' (image descriptor) must be skipped, not parsed.
    two_frames = gif(2)
    palette = b";;;,,,"
    data = two_frames[:13] + palette + two_frames[19:]
    with pytest.raises(FaceappError) as caught:
        decode_image(data, max_bytes=MB, max_pixels=100, max_frames=1)
    assert caught.value.code == "image.unsupported_format"
    assert decode_image(data, max_bytes=MB, max_pixels=100, max_frames=2).frames == 2


FRAME = b",\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # an image descriptor: 1x1 at 0,0, no local table
PIXEL = b"\x02\x02\x44\x01\x00"  # LZW minimum code size, one sub-block, terminator
CONTROL = b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # a graphic control extension
COMMENT = b"\x21\xfe\x06,;,;,;\x00"  # a comment extension whose text looks like blocks


def handmade_gif(flags: int, table: bytes, body: bytes) -> bytes:
    return b"GIF89a" + struct.pack("<HH", 1, 1) + bytes([flags, 0, 0]) + table + body + b";"


@pytest.mark.parametrize(
    "data",
    [
        handmade_gif(0x80, b"\0" * 6, (CONTROL + FRAME + PIXEL) * 3),
        handmade_gif(0x80, b"\0" * 6, (COMMENT + FRAME + PIXEL) * 2),
        handmade_gif(0x81, b"\x3b" * 12, (FRAME + PIXEL) * 2),
        handmade_gif(0x07, b"", (FRAME + PIXEL) * 2),
        handmade_gif(0x80, b"\0" * 6, FRAME[:-1] + b"\x82" + b"\x2c" * 24 + PIXEL + FRAME + PIXEL),
        handmade_gif(0x80, b"\0" * 6, FRAME + PIXEL) + FRAME + PIXEL,
    ],
    ids=[
        "control-extensions",
        "comments",
        "sized-global-table",
        "no-table-flag",
        "local-table",
        "after-trailer",
    ],
)
def test_gif_frame_counts_agree_with_pillows(data):
    with Image.open(io.BytesIO(data)) as opened:
        expected = opened.n_frames
    assert decode_image(data, max_bytes=MB, max_pixels=100, max_frames=50).frames == expected


def test_a_gif_cut_inside_an_extension_is_corrupt_not_a_crash():
    data = handmade_gif(0x80, b"\0" * 6, b"")[:-1] + b"\x21\xf9\x04\x00\x00\x00\x00"
    assert code_of(data, max_pixels=100) == "image.corrupt"


def test_a_gif_cut_right_after_its_first_frame_descriptor_is_judged_by_it(no_pillow_open):
    data = handmade_gif(0x00, b"", b",\x00\x00\x00\x00" + struct.pack("<HHB", 60_000, 60_000, 0))
    assert code_of(data[:-1], max_pixels=40_000_000) == "image.too_many_pixels"
