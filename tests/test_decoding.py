"""faceapp.decoding: untrusted bytes in, an upright RGB image or a stable image.* error out."""

from __future__ import annotations

import functools
import io
import random
import resource
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import (
    BmpImagePlugin,
    EpsImagePlugin,
    FitsImagePlugin,
    Image,
    ImageFile,
    Jpeg2KImagePlugin,
    JpegImagePlugin,
    PsdImagePlugin,
    TiffImagePlugin,
    features,
)
from skimage import data as skdata

from faceapp import decoding
from faceapp.decoding import ALLOWED_FORMATS, DecodedImage, decode_image
from faceapp.errors import FaceappError

MB = 1024 * 1024
IMAGE_CODES = {
    "image.empty",
    "image.corrupt",
    "image.unsupported_format",
    "image.too_large",
    "image.too_many_pixels",
}
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- helpers ------------------------------------------------------------------------------


def decode(data: bytes, **options) -> DecodedImage:
    options.setdefault("max_bytes", 10 * MB)
    options.setdefault("max_pixels", 40_000_000)
    return decode_image(data, **options)


def assert_rejected(data: bytes, code: str, **options) -> FaceappError:
    with pytest.raises(FaceappError) as caught:
        decode(data, **options)
    assert caught.value.code == code, caught.value.message
    assert 400 <= caught.value.status < 500
    return caught.value


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[xy[1], xy[0]])


def close_to(actual, expected, tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def quadrants(width: int, height: int) -> Image.Image:
    """Upright test card: red top-left, green top-right, blue bottom-left, white bottom-right."""
    card = Image.new("RGB", (width, height), WHITE)
    card.paste(RED, (0, 0, width // 2, height // 2))
    card.paste(GREEN, (width // 2, 0, width, height // 2))
    card.paste(BLUE, (0, height // 2, width // 2, height))
    return card


def assert_quadrants(image: Image.Image) -> None:
    w, h = image.size
    for (fx, fy), colour in {(1, 1): RED, (3, 1): GREEN, (1, 3): BLUE, (3, 3): WHITE}.items():
        got = pixel(image, (w * fx // 4, h * fy // 4))
        assert close_to(got, colour), f"quadrant ({fx},{fy}) is {got}, expected {colour}"


def jpeg_with_orientation(upright: Image.Image, orientation: int, **params) -> bytes:
    """Store `upright` the way a camera would with this EXIF orientation."""
    # The inverse of each orientation's correction (EXIF 2.3, tag 0x0112), written out here
    # rather than taken from the module under test.
    store = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }.get(orientation)
    stored = upright if store is None else upright.transpose(store)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(stored, "JPEG", exif=exif, quality=90, **params)


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    checksum = struct.pack(">I", zlib.crc32(tag + payload))
    return struct.pack(">I", len(payload)) + tag + payload + checksum


def one_bit_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG, written chunk by chunk (no pixel buffer needed)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte "none", then the packed row
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# A 1x1 GIF frame: image descriptor, LZW minimum code size 2, codes clear/0/end, terminator.
GIF_PIXEL_FRAME = b",\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02\x44\x01\x00"


def gif(frames: int, screen=(1, 1), first_frame: bytes = GIF_PIXEL_FRAME) -> bytes:
    header = b"GIF89a" + struct.pack("<HH", *screen) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    return header + first_frame + GIF_PIXEL_FRAME * (frames - 1) + b";"


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def astronaut_jpeg(astronaut) -> bytes:
    return save(astronaut, "JPEG", quality=90)


@pytest.fixture(scope="module")
def astronaut_png(astronaut) -> bytes:
    return save(astronaut, "PNG")


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    return one_bit_png(20_000, 20_000)


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if any image's pixels are decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"pixels of a {self.size} {self.format} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.fixture
def no_pillow_open(monkeypatch):
    """Fail the test if the bytes reach Pillow at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("Image.open was called")

    monkeypatch.setattr(Image, "open", refuse)


# --- sizes and emptiness ------------------------------------------------------------------


def test_empty_input_is_image_empty():
    assert_rejected(b"", "image.empty")


def test_too_many_bytes_is_rejected_before_decoding(astronaut_jpeg, no_pillow_open):
    error = assert_rejected(astronaut_jpeg, "image.too_large", max_bytes=len(astronaut_jpeg) - 1)
    assert error.status == 413


def test_exactly_max_bytes_is_accepted(astronaut_jpeg):
    result = decode(astronaut_jpeg, max_bytes=len(astronaut_jpeg))
    assert (result.width, result.height) == (512, 512)


def test_still_images_of_each_allowed_format(astronaut):
    small = astronaut.resize((64, 48))
    for fmt in ALLOWED_FORMATS:
        result = decode(save(small, fmt))
        assert result.format == fmt
        assert result.image.mode == "RGB"
        assert (result.width, result.height) == (64, 48) == result.image.size
        assert (result.source_width, result.source_height) == (64, 48)
        assert result.frames == 1


# --- formats ------------------------------------------------------------------------------


def _fits_header() -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                    4",
        "NAXIS2  =                    4",
        "END",
    ]
    header = b"".join(card.ljust(80).encode() for card in cards)
    return header.ljust(2880) + bytes(2880)


def _psd_header() -> bytes:
    # signature, version 1, 6 reserved, 3 channels, 4x4, 8 bits, RGB; then empty sections
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3) + bytes(16)


def _not_allowed_samples() -> dict[str, bytes]:
    card = quadrants(8, 8)
    samples = {
        "random": random.Random(1234).randbytes(4096),
        "text": b"This is plain text, not a picture.\n" * 10,
        "html": b"<!DOCTYPE html><html><body><img src='x.png'></body></html>",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>',
        "pdf": save(card, "PDF"),
        "eps": save(card, "EPS"),
        "psd": _psd_header(),
        "fits": _fits_header(),
        "tiff": save(card, "TIFF"),
        "bmp": save(card, "BMP"),
        "ico": save(card, "ICO"),
        "tga": save(card, "TGA"),
        "ppm": save(card, "PPM"),
    }
    if features.check("jpg_2000"):
        samples["jpeg2000"] = save(card, "JPEG2000")
    return samples


@pytest.mark.parametrize("name", sorted(_not_allowed_samples()))
def test_other_formats_never_reach_their_decoder(name, monkeypatch):
    data = _not_allowed_samples()[name]
    for plugin in (
        TiffImagePlugin.TiffImageFile,
        BmpImagePlugin.BmpImageFile,
        EpsImagePlugin.EpsImageFile,
        PsdImagePlugin.PsdImageFile,
        FitsImagePlugin.FitsImageFile,
        Jpeg2KImagePlugin.Jpeg2KImageFile,
    ):
        monkeypatch.setattr(plugin, "_open", lambda self: pytest.fail("a disallowed decoder ran"))
    error = assert_rejected(data, "image.unsupported_format")
    assert error.status == 415


def test_allowed_formats_restricts_the_decoders(astronaut):
    png = save(astronaut.resize((16, 16)), "PNG")
    assert_rejected(png, "image.unsupported_format", allowed_formats=("JPEG",))
    assert decode(png, allowed_formats=("png",)).format == "PNG"


# --- decompression bombs ------------------------------------------------------------------


def test_png_bomb_is_rejected_from_its_header(bomb_png, no_pixel_decoding):
    assert len(bomb_png) < 64 * 1024  # 400 million pixels in a few dozen KB
    with pytest.raises(Image.DecompressionBombError):  # a bomb by Pillow's own standard too
        Image.open(io.BytesIO(bomb_png))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    error = assert_rejected(bomb_png, "image.too_many_pixels")
    assert time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 64 * 1024  # KiB
    assert error.status == 413 and "20000x20000" in error.message


def test_pixel_limit_is_exact():
    square = one_bit_png(1000, 1000)
    assert decode(square, max_pixels=1_000_000).source_width == 1000
    assert_rejected(square, "image.too_many_pixels", max_pixels=999_999)


def test_limit_above_pillows_is_capped_at_pillows(no_pillow_open):
    # 100 million pixels: above Image.MAX_IMAGE_PIXELS, where Pillow would warn; refused from
    # the header, so Pillow never gets the chance.
    over_pillow = one_bit_png(10_000, 10_000)
    assert_rejected(over_pillow, "image.too_many_pixels", max_pixels=10**9)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_header_bombs_never_reach_pillow(fmt, no_pillow_open):
    if fmt == "PNG":
        data = one_bit_png(8000, 8000)
    elif fmt == "JPEG":
        jpeg = bytearray(save(Image.new("RGB", (8, 8)), "JPEG"))
        sof = jpeg.index(b"\xff\xc0")
        jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
        data = bytes(jpeg)
    elif fmt == "GIF":  # a 1x1 screen whose first frame claims 20000x20000
        frame = b",\x00\x00\x00\x00" + struct.pack("<HH", 20_000, 20_000) + GIF_PIXEL_FRAME[-6:]
        data = gif(1, first_frame=frame)
    else:  # extended WebP whose canvas is 9000x9000 (libwebp allocates it on open)
        vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
        vp8x += (9000 - 1).to_bytes(3, "little") * 2
        data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    assert_rejected(data, "image.too_many_pixels")


def test_jpeg_with_too_many_scans_is_refused_before_decoding(no_pillow_open):
    progressive = save(quadrants(64, 64), "JPEG", progressive=True)
    last_scan = progressive.rindex(b"\xff\xda")
    scan = progressive[last_scan:-2]  # the last scan, up to the end-of-image marker
    bomb = progressive[:last_scan] + scan * 200 + progressive[last_scan:]
    error = assert_rejected(bomb, "image.unsupported_format")
    assert "100 progressive scans" in error.message


def test_progressive_jpeg_is_accepted():
    result = decode(save(quadrants(64, 64), "JPEG", progressive=True, quality=95))
    assert_quadrants(result.image)


@pytest.mark.parametrize("filler", [b"\xff", b"\xff\xe0\x00\x02"])  # fill bytes, empty segments
def test_jpeg_header_soup_is_refused_quickly(filler, no_pillow_open):
    jpeg = save(quadrants(8, 8), "JPEG")
    soup = jpeg[:2] + filler * 500_000 + jpeg[2:]
    started = time.perf_counter()
    assert_rejected(soup, "image.corrupt")
    assert time.perf_counter() - started < 0.5


def test_pillow_bomb_error_is_mapped_when_the_header_is_not_read(bomb_png, monkeypatch):
    # Without our header check, Image.open itself raises DecompressionBombError.
    monkeypatch.setitem(decoding._HEADER_READERS, "PNG", lambda data, max_frames: (None, None))
    assert_rejected(bomb_png, "image.too_many_pixels")


def test_pillow_bomb_warning_is_mapped_or_harmless(monkeypatch):
    monkeypatch.setitem(decoding._HEADER_READERS, "PNG", lambda data, max_frames: (None, None))
    over_pillow = one_bit_png(10_000, 10_000)  # between MAX_IMAGE_PIXELS and twice that
    # Warnings escalated to errors (this suite's setting): the warning itself is mapped.
    assert_rejected(over_pillow, "image.too_many_pixels", max_pixels=10**9)
    # Warnings only shown: Pillow warns, and the image is still refused, as a 413.
    with pytest.warns(Image.DecompressionBombWarning):
        assert_rejected(over_pillow, "image.too_many_pixels", max_pixels=10**9)


def test_decoding_leaves_pillows_globals_alone(bomb_png, astronaut_jpeg):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for data in (bomb_png, astronaut_jpeg, astronaut_jpeg[:5000]):
        try:
            decode(data, max_side=64)
        except FaceappError:
            pass
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    assert after == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- damaged files ------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_jpeg_is_corrupt(astronaut_jpeg, fraction):
    assert_rejected(astronaut_jpeg[: int(len(astronaut_jpeg) * fraction)], "image.corrupt")
    assert_rejected(
        astronaut_jpeg[: int(len(astronaut_jpeg) * fraction)], "image.corrupt", max_side=64
    )  # the reduced-scale path too


@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_truncated_png_is_corrupt(astronaut_png, fraction):
    assert_rejected(astronaut_png[: int(len(astronaut_png) * fraction)], "image.corrupt")


def test_broken_headers_of_allowed_formats_are_corrupt(astronaut_png):
    assert_rejected(astronaut_png[:20], "image.corrupt")  # PNG signature, IHDR cut short
    assert_rejected(b"\xff\xd8\xff\xe0" + bytes(30), "image.corrupt")  # JPEG, no frame
    assert_rejected(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image.corrupt")  # GIF, no frame


# --- animations ---------------------------------------------------------------------------


def _animation(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, GREEN)]
    params = {"lossless": True} if fmt == "WEBP" else {}
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_frame_zero(fmt):
    result = decode(_animation(fmt))
    assert result.frames == 3
    assert result.format == fmt
    assert pixel(result.image, (8, 8)) == RED


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_over_max_frames_is_unsupported(fmt):
    error = assert_rejected(_animation(fmt), "image.unsupported_format", max_frames=2)
    assert "2 frames" in error.message


def test_frame_count_of_handmade_gif():
    five = gif(5)
    assert decode(five, max_frames=5).frames == 5
    assert_rejected(five, "image.unsupported_format", max_frames=4)


def test_long_gif_is_rejected_quickly_without_decoding(no_pillow_open):
    long_gif = gif(300_000)  # 4.5 MB of 1x1 frames
    started = time.perf_counter()
    assert_rejected(long_gif, "image.unsupported_format", max_frames=1000)
    assert time.perf_counter() - started < 0.5


# --- orientation and scale ----------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    result = decode(jpeg_with_orientation(quadrants(64, 48), orientation))
    assert result.image.size == (64, 48)
    assert (result.source_width, result.source_height) == (64, 48)
    assert_quadrants(result.image)


@pytest.fixture(scope="module")
def big_rotated_jpeg() -> bytes:
    # A 4000x3000 stored image that is 3000x4000 upright (camera held sideways).
    return jpeg_with_orientation(quadrants(3000, 4000), 6)


def test_large_jpeg_is_drafted_and_turned_upright(big_rotated_jpeg, monkeypatch):
    drafted = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        answer = original_draft(self, mode, size)
        drafted.append((size, self.size))
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    result = decode(big_rotated_jpeg, max_side=400)
    # Requested in the stored frame (4000x3000), decoded at 1/8 scale.
    assert drafted == [((400, 300), (500, 375))]
    assert result.image.size == (300, 400) == (result.width, result.height)
    assert (result.source_width, result.source_height) == (3000, 4000)
    assert_quadrants(result.image)


@pytest.mark.parametrize("max_side", [333, 1000, 4000])
def test_max_side_bounds_the_longer_side(big_rotated_jpeg, max_side):
    result = decode(big_rotated_jpeg, max_side=max_side)
    assert max(result.image.size) == min(max_side, 4000)
    assert abs(result.width / result.height - 0.75) < 0.01
    assert_quadrants(result.image)


def test_reduced_photo_matches_the_full_decode(astronaut):
    photo = save(astronaut.resize((4000, 3000), Image.Resampling.BICUBIC), "JPEG", quality=90)
    reduced = decode(photo, max_side=500)
    full = decode(photo).image.resize(reduced.image.size, Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(reduced.image, float) - np.asarray(full, float))
    assert difference.mean() < 3


def test_png_is_downscaled_too(astronaut_png):
    result = decode(astronaut_png, max_side=100)
    assert result.image.size == (100, 100)
    assert (result.source_width, result.source_height) == (512, 512)


# --- modes --------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in ink
    result = decode(save(cmyk, "JPEG", quality=95))
    assert result.image.mode == "RGB"
    assert close_to(pixel(result.image, (8, 8)), RED)


def test_rgba_png_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    image = decode(save(rgba, "PNG")).image
    assert pixel(image, (0, 0)) == WHITE  # exactly: the hidden colour never shows
    assert pixel(image, (1, 0)) == (10, 20, 30)
    assert close_to(pixel(image, (2, 0)), (127, 127, 127), 1)


def test_la_png_is_composited_on_white():
    la = Image.new("LA", (2, 1), (100, 0))
    la.putpixel((1, 0), (100, 255))
    image = decode(save(la, "PNG")).image
    assert pixel(image, (0, 0)) == WHITE
    assert pixel(image, (1, 0)) == (100, 100, 100)


def test_palette_png_with_transparent_index():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.putpixel((1, 0), 1)
    image = decode(save(palette, "PNG", transparency=0)).image
    assert pixel(image, (0, 0)) == WHITE
    assert pixel(image, (1, 0)) == RED


def test_palette_png_with_partial_alpha():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    image = decode(save(palette, "PNG", transparency=bytes([128, 255]))).image
    assert close_to(pixel(image, (0, 0)), (127, 127, 127), 1)
    assert pixel(image, (1, 0)) == BLUE


def test_gif_transparency_becomes_white():
    frame = Image.new("P", (2, 1), 0)
    frame.putpalette([0, 0, 0, 0, 255, 0])
    frame.putpixel((1, 0), 1)
    image = decode(save(frame, "GIF", transparency=0)).image
    assert pixel(image, (0, 0)) == WHITE
    assert pixel(image, (1, 0)) == GREEN


def test_colour_key_transparency_in_rgb_and_grey_png():
    rgb = Image.new("RGB", (2, 1), (1, 2, 3))
    rgb.putpixel((1, 0), (4, 5, 6))
    image = decode(save(rgb, "PNG", transparency=(1, 2, 3))).image
    assert [pixel(image, (x, 0)) for x in range(2)] == [WHITE, (4, 5, 6)]
    grey = Image.new("L", (2, 1), 7)
    grey.putpixel((1, 0), 9)
    image = decode(save(grey, "PNG", transparency=7)).image
    assert [pixel(image, (x, 0)) for x in range(2)] == [WHITE, (9, 9, 9)]


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    image = decode(save(source, "PNG")).image
    assert [pixel(image, (x, 0))[0] for x in range(4)] == [0, 128, 255, 4]
    assert image.mode == "RGB"
    keyed = decode(save(source, "PNG", transparency=1000)).image  # tRNS on the 16-bit level
    assert [pixel(keyed, (x, 0)) for x in range(4)] == [(0,) * 3, (128,) * 3, WHITE, WHITE]


def test_grey_and_bilevel_pngs_become_rgb():
    grey = decode(save(Image.new("L", (2, 2), 77), "PNG")).image
    assert pixel(grey, (1, 1)) == (77, 77, 77) and grey.mode == "RGB"
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    image = decode(save(bilevel, "PNG")).image
    assert [pixel(image, (x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]


def test_decoding_is_deterministic_and_drops_metadata(astronaut_jpeg):
    first = decode(astronaut_jpeg, max_side=300)
    second = decode(astronaut_jpeg, max_side=300)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert first.image.info == {}


# --- exceptions ---------------------------------------------------------------------------


PILLOW_EXCEPTIONS = [
    OSError,
    SyntaxError,
    ValueError,
    MemoryError,
    NotImplementedError,
    OverflowError,
    struct.error,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    UserWarning,
]


@pytest.mark.parametrize("exception", PILLOW_EXCEPTIONS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("stage", ["open", "load"])
def test_pillow_exceptions_become_4xx(exception, stage, astronaut_png, monkeypatch):
    def explode(*args, **kwargs):
        raise exception("from inside Pillow")

    if stage == "open":
        monkeypatch.setattr(Image, "open", explode)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", explode)
    with pytest.raises(FaceappError) as caught:
        decode(astronaut_png)
    assert 400 <= caught.value.status < 500
    assert "from inside Pillow" not in caught.value.message
    if exception in (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        assert caught.value.code == "image.too_many_pixels"
    else:
        assert caught.value.code == "image.corrupt"


def test_our_own_bugs_are_not_disguised_as_bad_images(astronaut_png, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug, not a bad upload")

    monkeypatch.setattr(ImageFile.ImageFile, "load", bug)
    with pytest.raises(RuntimeError):
        decode(astronaut_png)


# --- fuzzing ------------------------------------------------------------------------------


@functools.cache
def fuzz_seeds() -> dict[str, bytes]:
    photo = Image.fromarray(skdata.astronaut()).resize((24, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = photo.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "jpeg": save(photo, "JPEG", quality=80, exif=exif),
        "jpeg-progressive": save(photo, "JPEG", progressive=True),
        "png": save(rgba, "PNG"),
        "png-palette": save(photo.convert("P"), "PNG", transparency=0),
        "apng": save(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "gif": save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": save(photo, "WEBP", quality=80),
        "webp-animated": save(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True
        ),
    }


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
        # Most damage lands in the headers, past the signatures (which only say "not an image").
        st.one_of(st.integers(12, 96), st.integers(0, 4096)),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for operation, position, value in mutations:
        at = position % len(out)
        if operation == "flip":
            out[at] ^= 1 << (value % 8)
        elif operation == "set":
            out[at] = value
        elif operation == "insert":
            out[at:at] = bytes([value]) * (1 + value % 4)
        elif operation == "delete" and len(out) > 16:
            del out[at : at + 1 + value % 16]
        elif operation == "truncate":
            del out[max(at, 12) :]
    return bytes(out)


def repair_png_checksums(data: bytes) -> bytes:
    """Recompute each PNG chunk's CRC, so that mutations reach past Pillow's checksum test."""
    out, pos = bytearray(data), 8
    while pos + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, pos)
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(out[pos + 4 : end]))
        pos = end + 4
    return bytes(out)


def check_fuzzed(seed: str, mutations, max_side: int | None) -> None:
    data = mutate(fuzz_seeds()[seed], mutations)
    if data.startswith(b"\x89PNG"):
        data = repair_png_checksums(data)
    try:
        result = decode_image(data, max_bytes=MB, max_pixels=2**20, max_side=max_side, max_frames=8)
    except FaceappError as error:
        assert error.code in IMAGE_CODES
        assert 400 <= error.status < 500
        return
    assert isinstance(result, DecodedImage)
    assert result.image.mode == "RGB"
    assert result.image.size == (result.width, result.height)
    if max_side is not None:
        assert max(result.image.size) <= max_side
    else:
        assert result.image.size == (result.source_width, result.source_height)
    assert 1 <= result.frames <= 8
    assert result.source_width * result.source_height <= 2**20


FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples on every run, so CI is stable
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(sorted(fuzz_seeds())),
    mutations=MUTATIONS,
    max_side=st.sampled_from([None, 8, 32]),
)
def test_fuzzed_inputs_decode_or_fail_cleanly(seed, mutations, max_side):
    # Under this suite's filterwarnings=error, Pillow's warnings about malformed metadata
    # arrive as exceptions too, and must also end as image.* errors.
    check_fuzzed(seed, mutations, max_side)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(FUZZ_SETTINGS, max_examples=150)
@given(
    seed=st.sampled_from(sorted(fuzz_seeds())),
    mutations=MUTATIONS,
    max_side=st.sampled_from([None, 8, 32]),
)
def test_fuzzed_inputs_with_metadata_warnings_only_shown(seed, mutations, max_side):
    # As in production: Pillow's metadata warnings are printed, and decoding carries on.
    check_fuzzed(seed, mutations, max_side)
