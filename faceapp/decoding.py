"""Decoding untrusted image bytes into the upright RGB image the rest of faceapp works on.

Every way an input can fail ends as a :class:`~faceapp.errors.FaceappError` with an ``image.*``
code (docs/API.md, "Error codes"); nothing here changes Pillow's global settings, so concurrent
requests in one process cannot disturb each other.

The order of the checks is the defence: byte size first, then the format by its signature, then
the width, height and frame count as the file's header declares them (read here, without any
decoder), and only then does Pillow, restricted to the allowed formats, decode the first frame.

What a decode may cost is bounded before it runs (docs/SECURITY.md, "What is bounded"):

- Memory: :func:`decode_memory` estimates a decode's peak from the pixels, the mode Pillow
  decodes into (its bytes per pixel) and what the format's decoder holds besides. A decode over
  ``MAX_DECODE_MEMORY`` is refused (413 ``image.too_many_pixels``) and the others reserve their
  estimate from the worker's :class:`DecodeBudget`, so large decodes wait for each other instead
  of stacking up (503 ``image.busy`` after ``DECODE_WAIT_SECONDS``). Images that need converting
  (alpha, palette, 16-bit, CMYK) are converted and reduced in strips of rows, so the full-size
  converted copy never exists.
- CPU on container overhead: a PNG of more than ``_PNG_MAX_CHUNKS`` chunks or a GIF of more than
  ``_GIF_MAX_SUB_BLOCKS`` data sub-blocks is refused (415) from a bounded walk of its structure,
  before Pillow's Python-level parsers see it; JPEG scans and marker segments likewise.

Measured on a 2-core AMD EPYC (2026-12-05), each in a fresh process: a 34-byte lossless WebP of
6324x6324 RGBA raised the peak by 915 MB before this, a 78 KB 16-bit grey PNG with tRNS at 40 MP
by 689 MB, a PNG of 800,000 empty chunks cost 2.0 s of CPU. tests/test_decode_costs.py measures
them again against the budget.
"""

from __future__ import annotations

import io
import math
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from faceapp.errors import FaceappError, human_bytes, human_pixels
from faceapp.extension import Slot

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")

# What Pillow raises on hostile input: the exceptions its own fuzz tests accept (MemoryError and
# the bomb errors are mapped on their own), those its plugins let escape from malformed headers
# (struct.error, EOFError, IndexError, TypeError, KeyError) and ZeroDivisionError from nonsense
# sizes. UnidentifiedImageError is an OSError. An explicit tuple, so that a bug of ours
# (AttributeError, RuntimeError...) still surfaces as a logged 500, not as a "bad upload".
_DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    NotImplementedError,
    OverflowError,
    ZeroDivisionError,
    struct.error,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
)

# Transparent pixels are composited onto this fixed colour, so equal bytes give equal pixels.
_BACKGROUND = (255, 255, 255, 255)

# EXIF orientation -> the transpose that makes the image upright: ImageOps.exif_transpose's
# table, applied here after downscaling (cheaper), and without exif_transpose's rewriting of the
# EXIF block, which can fail on malformed metadata and is discarded anyway.
_UPRIGHT_BY_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# Real JPEGs carry a few dozen marker segments before the first scan and rarely more than a
# dozen scans. Hostile ones with millions of either keep Pillow's header parser (Python) busy for
# seconds, or libjpeg's progressive decoder for minutes (each scan is a pass over every block).
_JPEG_MAX_HEADER_STEPS = 10_000
_JPEG_MAX_SCANS = 100
# A real PNG has a handful of metadata chunks and its image data in IDAT chunks of 8 to 64 KiB
# (a 10 MiB file: 160 to 1,300 chunks); an APNG of MAX_IMAGE_FRAMES frames has two per frame.
# Pillow parses every chunk in Python: 800,000 empty ones cost 2 s of CPU.
_PNG_MAX_CHUNKS = 10_000
# GIF encoders fill data sub-blocks to their 255-byte maximum (a 10 MiB file: about 41,000);
# Pillow reads extension sub-blocks one by one in Python, and so does the frame walk here.
_GIF_MAX_SUB_BLOCKS = 100_000

# What Pillow holds per pixel of a decoded frame: one byte for 1, L and P, two for I;16, four
# for I and F, and four for every multi-band mode (RGB is stored as RGBX).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Pillow's WebP plugin decodes through libwebp's animation decoder, even for a still: its two
# canvases and the frame copy it hands over are four bytes per pixel each, allocated when the
# file is opened, on top of the decoded image itself.
_WEBP_DECODER_BYTES_PER_PIXEL = 12
# A progressive JPEG keeps every DCT coefficient (2 bytes per sample) of the full-size image,
# whatever scale it decodes at.
_JPEG_COEFFICIENT_BYTES = 2
# Conversions run on strips of rows holding about this many pixels.
_STRIP_PIXELS = 1 << 20


@dataclass(frozen=True)
class DecodedImage:
    """An input image decoded, upright, in RGB, and what it was before normalising."""

    image: Image.Image  # mode "RGB", upright (EXIF orientation applied), longer side <= max_side
    format: str  # Pillow's format name for the input, e.g. "JPEG" ("MPO" for multi-picture JPEG)
    width: int  # size of `image`
    height: int
    source_width: int  # upright size of the full input image
    source_height: int
    frames: int  # frame count of the input (1 for stills)


class DecodeBudget:
    """The memory the decodes of one worker may hold at once: each reserves its estimate first.

    A decode that does not fit waits for others to finish, up to ``wait_seconds``, then is
    answered 503 ``image.busy``. One reservation never asks for more than the whole budget.
    """

    def __init__(self, total_bytes: int, wait_seconds: float) -> None:
        if total_bytes < 1:
            raise ValueError("DECODE_MEMORY_BUDGET must be at least 1 byte")
        self.total_bytes = int(total_bytes)
        self.wait_seconds = float(wait_seconds)
        self._free = self.total_bytes
        self._changed = threading.Condition()

    @property
    def free_bytes(self) -> int:
        return self._free

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block (waiting for room), then give them back."""
        wanted = max(0, min(int(nbytes), self.total_bytes))
        with self._changed:
            if not self._changed.wait_for(lambda: self._free >= wanted, self.wait_seconds):
                raise FaceappError(
                    "image.busy",
                    "This worker is busy decoding other large images; retry in a moment.",
                )
            self._free -= wanted
        try:
            yield
        finally:
            with self._changed:
                self._free += wanted
                self._changed.notify_all()


@dataclass(frozen=True)
class MemoryLimits:
    """What one decode may hold (``MAX_DECODE_MEMORY``), and the worker's shared budget."""

    max_bytes: int
    budget: DecodeBudget | None = None

    def reserve(self, nbytes: int, what: str):
        """Refuse (413) a decode estimated over max_bytes, else reserve it from the budget."""
        if nbytes > self.max_bytes:
            raise FaceappError(
                "image.too_many_pixels",
                f"Decoding this {what} would take about {human_bytes(nbytes)} of memory; the "
                f"most one image may take is {human_bytes(self.max_bytes)} (send fewer pixels).",
            )
        return self.budget.reserve(nbytes) if self.budget is not None else nullcontext()


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int | None = None,
    max_frames: int = 1000,
    allowed_formats: Sequence[str] = ALLOWED_FORMATS,
    memory: MemoryLimits | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes into an upright RGB image, or raise FaceappError (image.*).

    With `memory`, a decode whose estimated peak (:func:`decode_memory`) is over its limit is
    refused before it starts, and the others hold their estimate of the budget while they run.
    """
    if max_side is not None and max_side < 1:
        raise ValueError("max_side must be at least 1")
    if not data:
        raise FaceappError("image.empty", "The image is empty (0 bytes).")
    if len(data) > max_bytes:
        raise FaceappError(
            "image.too_large",
            f"The image is larger than the largest accepted ({human_bytes(max_bytes)}).",
        )
    formats = [name.upper() for name in allowed_formats]
    # Never more than Pillow's own limit: then Pillow's DecompressionBombWarning cannot fire for
    # an image this function accepts (it warns only above Image.MAX_IMAGE_PIXELS).
    pillow_limit = Image.MAX_IMAGE_PIXELS
    limit = max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)

    claimed = claimed_format(data)
    gif_frames = None
    size = None
    if claimed in formats:
        # The header's own numbers, before Pillow opens anything: Image.open runs Pillow's bomb
        # check (a process-global warning or error) and WebP's decoder allocates its canvas.
        size, gif_frames = _HEADER_READERS[claimed](data, max_frames)
        if size is not None:
            _check_pixels(size, limit)
        _check_frames(gif_frames or 1, max_frames)

    # WebP's decoder allocates its canvases when the file is opened: its whole cost is reserved
    # before that, from the header's size. The other formats reserve theirs once Pillow has read
    # the mode, just before the pixels are decoded. Either is given back only once the file (and
    # the decoded frame with it) is closed.
    held = ExitStack()
    reserve = None
    if memory is not None and claimed == "WEBP" and size is not None:
        held.enter_context(
            memory.reserve(
                decode_memory("WEBP", "RGBA", size, _fit(size, max_side)),
                f"{size[0]}x{size[1]} WebP",
            )
        )
    elif memory is not None:

        def reserve(nbytes: int, what: str) -> None:
            held.enter_context(memory.reserve(nbytes, what))

    # Pillow's bomb guard, mapped without touching global state: Image.open raises
    # DecompressionBombError above 2 * MAX_IMAGE_PIXELS, and above MAX_IMAGE_PIXELS emits
    # DecompressionBombWarning. Where warnings are escalated to errors (pytest's
    # filterwarnings=error, python -W error) that warning arrives here as an exception and is
    # caught below; where they are not, it is only printed, and the size check in _normalise
    # rejects the image anyway because `limit` never exceeds MAX_IMAGE_PIXELS. The header check
    # above keeps both from happening for the formats it can read. Pillow's other warnings
    # (malformed EXIF, APNG or MPO metadata) only describe metadata it skipped; escalated to
    # errors, they mean the file is damaged.
    try:
        with held, Image.open(io.BytesIO(data), formats=formats) as opened:
            return _normalise(opened, limit, max_side, max_frames, gif_frames, reserve)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FaceappError(
            "image.too_many_pixels",
            f"The image has more pixels than the {human_pixels(limit)} accepted.",
        ) from exc
    except MemoryError as exc:
        raise FaceappError(
            "image.too_many_pixels", "The image is too large to decode in the memory available."
        ) from exc
    except UnidentifiedImageError as exc:
        if claimed in formats:  # it starts like an accepted format but Pillow cannot read it
            raise _corrupt() from exc
        raise FaceappError(
            "image.unsupported_format",
            f"The file is not an image in an accepted format ({', '.join(formats)}).",
        ) from exc
    except (*_DECODER_ERRORS, Warning) as exc:
        raise _corrupt() from exc


def decode_with_limits(
    data: bytes, config: Mapping[str, Any], budget: DecodeBudget | None = None
) -> DecodedImage:
    """:func:`decode_image` under the configured limits (MAX_UPLOAD_BYTES, MAX_IMAGE_PIXELS,
    STORED_MAX_SIDE, MAX_IMAGE_FRAMES, MAX_DECODE_MEMORY): what the service and `flask eval`
    both decode with. The service passes its worker's `budget` (:func:`budget_for`)."""
    return decode_image(
        data,
        max_bytes=int(config["MAX_UPLOAD_BYTES"]),
        max_pixels=int(config["MAX_IMAGE_PIXELS"]),
        max_side=int(config["STORED_MAX_SIDE"]),
        max_frames=int(config["MAX_IMAGE_FRAMES"]),
        memory=MemoryLimits(int(config["MAX_DECODE_MEMORY"]), budget),
    )


SLOT = Slot("faceapp.decode_budget", "faceapp.decoding.init_app(app)")


def init_app(app: Any) -> None:
    """Give the app (one per worker process) its decode budget: DECODE_MEMORY_BUDGET bytes,
    waited for at most DECODE_WAIT_SECONDS."""
    budget = DecodeBudget(
        int(app.config["DECODE_MEMORY_BUDGET"]), float(app.config["DECODE_WAIT_SECONDS"])
    )
    SLOT.register(app, budget)


def budget_for(app: Any) -> DecodeBudget:
    """The app's decode budget (RuntimeError before :func:`init_app`)."""
    return SLOT.get(app)


#: glibc's mallopt parameter for the size above which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 4 * 1024**2


def return_large_buffers_to_the_os() -> bool:
    """Make this process map every allocation of 4 MiB or more on its own (glibc's mallopt).

    glibc raises that threshold each time such a buffer is freed, up to 32 MiB, after which the
    strips and frames of one decode stay in a thread's heap once freed: four concurrent 40 MP
    decodes under a 150 MiB budget then peaked at 180 to 410 MiB instead of 130. gunicorn's
    post_worker_init calls this. False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def decode_memory(
    fmt: str,
    mode: str,
    size: tuple[int, int],
    target: tuple[int, int],
    *,
    coefficients: int = 0,
) -> int:
    """The peak bytes a decode of `size` pixels in `mode` down to `target` is expected to hold.

    The decoded frame (pixels x bytes per pixel of `mode`), what the format's decoder holds
    besides (WebP's canvases; `coefficients` bytes of a progressive JPEG's DCT coefficients),
    and the working memory of turning it into the target's RGB: a resize's intermediate for an
    RGB frame, else the reduced copy and one strip's conversion (:func:`_to_rgb_reduced`).
    Checked against measured peaks in tests/test_decode_costs.py.
    """
    width, height = size
    pixels = width * height
    held = pixels * _PIXEL_BYTES.get(mode, 4) + coefficients
    if fmt == "WEBP":
        held += pixels * _WEBP_DECODER_BYTES_PER_PIXEL
    target_width, target_height = target
    out = target_width * target_height * 4
    if mode == "RGB":
        # Pillow's resize: the horizontal pass (height x target width), then the result.
        work = (height * target_width * 4 + out) if target != size else 0
    else:
        factor = _reduce_factor(size, target)
        reduced = math.ceil(width / factor) * math.ceil(height / factor) * 4
        strip = min(pixels, max(_STRIP_PIXELS, width * factor)) * 16  # crop, RGBA, RGB, temps
        work = reduced + strip + (out if target != size else 0)
    return held + work


def _normalise(
    opened: Image.Image,
    limit: int,
    max_side: int | None,
    max_frames: int,
    gif_frames: int | None,
    reserve: Callable[[int, str], None] | None,
) -> DecodedImage:
    """Check what Pillow read from the header, then decode frame 0 and make it upright RGB."""
    width, height = opened.size
    _check_pixels((width, height), limit)
    # A GIF's frame count is only known by walking the file: Pillow's n_frames walks all of it
    # in Python, so the bounded count made from the header walk is used instead. The other
    # formats declare theirs in the header (APNG acTL, WebP's demuxer, MPO index).
    frames = gif_frames if opened.format == "GIF" else getattr(opened, "n_frames", 1)
    frames = max(1, frames or 1)
    _check_frames(frames, max_frames)

    target = _fit((width, height), max_side)
    coefficients = 0
    if target != (width, height):
        # JPEG decodes at 1/2, 1/4 or 1/8 scale, never below `target`. The target is computed
        # from the stored (pre-rotation) size, so it is in the decoder's own frame already and
        # needs no swap for orientations 5-8. Other formats ignore draft.
        opened.draft("RGB", target)
    if opened.format in ("JPEG", "MPO") and "progressive" in opened.info:
        coefficients = _jpeg_coefficient_bytes(opened, width * height)
    if reserve is not None:
        fmt = opened.format or ""
        cost = decode_memory(fmt, opened.mode, opened.size, target, coefficients=coefficients)
        reserve(cost, f"{width}x{height} {fmt or 'image'}")
    opened.load()  # frame 0: a freshly opened file is positioned there
    upright = _upright_transpose(opened)
    if opened.mode == "RGB" and not opened.has_transparency_data:
        # No conversion: resize the decoded frame itself (or copy it: closing the file closes
        # the frame too).
        image = opened if opened.size != target else opened.copy()
    elif opened.size != target:
        image = _to_rgb_reduced(opened, target)
    else:
        image = _to_rgb(opened)
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if upright is not None:
        image = image.transpose(upright)
    image.info.clear()  # drop EXIF, ICC and transparency: the stored image is plain RGB pixels
    if upright in _SWAPS_SIDES:
        width, height = height, width
    return DecodedImage(
        image=image,
        format=opened.format or "",
        width=image.width,
        height=image.height,
        source_width=width,
        source_height=height,
        frames=frames,
    )


def _jpeg_coefficient_bytes(opened: Image.Image, pixels: int) -> int:
    """What a progressive JPEG's coefficient buffer holds: 2 bytes per sample of each component
    (chroma subsampled 4:2:0 has a quarter of the luma's samples)."""
    layers = getattr(opened, "layer", None) or [("", 1, 1, 0)] * len(opened.getbands())
    most_h = max(h for _id, h, _v, _table in layers) or 1
    most_v = max(v for _id, _h, v, _table in layers) or 1
    samples = sum(h * v for _id, h, v, _table in layers) / (most_h * most_v)
    return math.ceil(pixels * samples) * _JPEG_COEFFICIENT_BYTES


def _reduce_factor(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The largest whole factor a box reduction of `size` may use and stay at least `target`."""
    return max(1, min(size[0] // target[0], size[1] // target[1]))


def _to_rgb_reduced(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Convert a frame to RGB strip by strip, reducing each by the same whole factor, then
    resample to `target`: the full-size converted copy (four bytes per pixel) never exists.

    Strips are whole multiples of the factor tall, so the result is the reduction of the whole
    converted frame; the last resample then works on a frame under twice the target's size.
    """
    width, height = image.size
    factor = _reduce_factor(image.size, target)
    rows = max(factor, _STRIP_PIXELS // max(1, width) // factor * factor)
    reduced = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    for top in range(0, height, rows):
        strip = _to_rgb(image.crop((0, top, width, min(height, top + rows))))
        if factor > 1:
            strip = strip.reduce(factor)
        reduced.paste(strip, (0, top // factor))
    box = (0.0, 0.0, width / factor, height / factor)
    return reduced.resize(target, Image.Resampling.LANCZOS, box=box)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB, compositing transparency onto the fixed background."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_eight(image)
    if image.has_transparency_data:  # an alpha band, or a tRNS/GIF transparent colour or index
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, _BACKGROUND), rgba)
    return image.convert("RGB")


def _sixteen_bit_to_eight(image: Image.Image) -> Image.Image:
    """Scale 16-bit grey to 8 bits (Pillow's own conversion clips everything above 255)."""
    values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):  # a PNG tRNS grey level, compared before scaling
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([grey, alpha]), "LA")
    return Image.fromarray(grey, "L")


def _upright_transpose(image: Image.Image) -> Image.Transpose | None:
    """The transpose that turns the image upright, from its EXIF (or XMP) orientation."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (*_DECODER_ERRORS, Warning):
        return None  # unreadable metadata says nothing reliable: keep the pixels as stored
    if not isinstance(orientation, int):
        return None
    return _UPRIGHT_BY_ORIENTATION.get(orientation)


def _fit(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size with the same aspect whose longer side is at most max_side."""
    width, height = size
    longer = max(width, height)
    if max_side is None or longer <= max_side:
        return size
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_pixels(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        count, most = human_pixels(width * height), human_pixels(limit)
        if count == most:  # just over the limit: rounded, the two would read the same
            count, most = f"{width * height:,} pixels", f"{limit:,} pixels"
        raise FaceappError(
            "image.too_many_pixels",
            f"The image is {width}x{height} pixels ({count}); the largest accepted is {most}.",
        )


def _check_frames(frames: int, max_frames: int) -> None:
    # A long animation is a kind of file this service does not take, not a damaged or an
    # oversized picture: the client can fix it by sending a still, so 415 unsupported_format.
    if frames > max_frames:
        raise FaceappError(
            "image.unsupported_format",
            f"Animations of more than {max_frames} frames are not accepted; send a still image.",
        )


def _corrupt() -> FaceappError:
    return FaceappError("image.corrupt", "The image file is damaged or truncated.")


# --- Header readers: width and height as declared, read with no decoder. ---------------------
# Each takes the whole file and returns ((width, height) or None when unsure, frames or None when
# the format declares its own). They only need to be right for well-formed headers: anything
# they cannot read is left to Pillow, whose result is checked again in _normalise.


def claimed_format(data: bytes) -> str | None:
    """The format the bytes claim by their signature (the prefixes Pillow's plugins accept)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _png_header(data: bytes, max_frames: int) -> tuple[tuple[int, int] | None, None]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None, None
    # Count the chunks up to IEND (or the end of the data); each costs Pillow a Python call.
    pos, end = 8, len(data)
    for _ in range(_PNG_MAX_CHUNKS):
        if pos + 8 > end or data[pos + 4 : pos + 8] == b"IEND":
            return struct.unpack_from(">II", data, 16), None
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    raise FaceappError(
        "image.unsupported_format",
        f"PNGs of more than {_PNG_MAX_CHUNKS} chunks are not accepted.",
    )


def _jpeg_header(data: bytes, max_frames: int) -> tuple[tuple[int, int] | None, None]:
    # Entropy-coded data escapes 0xFF, so this counts the scans (plus any stray bytes in
    # metadata, which only makes it stricter).
    if data.count(b"\xff\xda") > _JPEG_MAX_SCANS:
        raise FaceappError(
            "image.unsupported_format",
            f"JPEGs of more than {_JPEG_MAX_SCANS} progressive scans are not accepted.",
        )
    # Walk the marker segments up to the scan; the largest start-of-frame is the one that counts
    # (Pillow keeps the last, a hostile file may carry several).
    largest, pos, end = None, 2, len(data)
    for _ in range(_JPEG_MAX_HEADER_STEPS):
        if pos + 4 > end or data[pos] != 0xFF:
            return largest, None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            return largest, None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= end:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            if largest is None or width * height > largest[0] * largest[1]:
                largest = width, height
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise _corrupt()


def _webp_header(data: bytes, max_frames: int) -> tuple[tuple[int, int] | None, None]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: the canvas size
        width = int.from_bytes(data[24:27], "little") + 1
        return (width, int.from_bytes(data[27:30], "little") + 1), None
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy
        width, height = struct.unpack_from("<HH", data, 26)
        return (width & 0x3FFF, height & 0x3FFF), None
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless
        bits = int.from_bytes(data[21:25], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1), None
    return None, None


def _gif_header(data: bytes, max_frames: int) -> tuple[tuple[int, int] | None, int]:
    """The GIF's size as Pillow will see it, and its frame count up to max_frames + 1."""
    if len(data) < 13:
        return None, 0
    width, height = struct.unpack_from("<HH", data, 6)
    pos = 13 + _colour_table_size(data[10])
    frames, end = 0, len(data)
    sub_blocks = [_GIF_MAX_SUB_BLOCKS]  # left to walk, over every chain
    # Mirrors Pillow's GifImageFile._seek: extensions and image data are chains of sub-blocks,
    # other bytes between blocks are skipped. Stops after max_frames + 1 frames.
    while pos < end and frames <= max_frames:
        block = data[pos]
        pos += 1
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: a label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 1, sub_blocks)
        elif block == 0x2C:  # image descriptor
            if pos + 9 > end:
                break
            left, top, frame_width, frame_height, flags = struct.unpack_from("<HHHHB", data, pos)
            if frames == 0:  # Pillow grows the canvas to hold the first frame
                width = max(width, left + frame_width)
                height = max(height, top + frame_height)
            pos = _skip_sub_blocks(data, pos + 9 + _colour_table_size(flags) + 1, sub_blocks)
            frames += 1
    return (width, height), frames


def _colour_table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _skip_sub_blocks(data: bytes, pos: int, left: list[int]) -> int:
    """The position after a chain of sub-blocks; `left[0]` counts down the ones walked."""
    end = len(data)
    while pos < end:
        left[0] -= 1
        if left[0] < 0:
            raise FaceappError(
                "image.unsupported_format",
                f"GIFs split into more than {_GIF_MAX_SUB_BLOCKS} data sub-blocks are not "
                "accepted.",
            )
        length = data[pos]
        pos += length + 1
        if length == 0:
            break
    return pos


_HEADER_READERS = {
    "JPEG": _jpeg_header,
    "PNG": _png_header,
    "GIF": _gif_header,
    "WEBP": _webp_header,
}
