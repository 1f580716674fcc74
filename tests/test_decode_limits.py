"""What one decode may cost (issue 22, item 2): the memory estimate and its limit, the worker's
shared budget, strip conversion, and the bounded walks over PNG chunks and GIF sub-blocks.

Peak memory is measured in tests/test_decode_costs.py; these check the rules, cheaply."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from faceapp import decoding
from faceapp.decoding import DecodeBudget, MemoryLimits, decode_image, decode_memory
from faceapp.errors import FaceappError
from tests import hostile_files

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000, "max_side": 2000}


def refused(data: bytes, **options) -> FaceappError:
    with pytest.raises(FaceappError) as caught:
        decode_image(data, **{**LIMITS, **options})
    return caught.value


@pytest.fixture
def no_pillow_open(monkeypatch):
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow opened the file"))


def png_with_empty_chunks(count: int) -> bytes:
    return hostile_files.png_empty_chunks(count)


def test_a_png_of_10000_chunks_is_read_and_one_more_is_refused():
    # IHDR, the empty chunks, IDAT and IEND: 10,000 chunks in all is the most.
    limit = decoding._PNG_MAX_CHUNKS
    assert decode_image(png_with_empty_chunks(limit - 3), **LIMITS).width == 1
    error = refused(png_with_empty_chunks(limit - 2))
    assert error.code == "image.unsupported_format" and "10000 chunks" in error.message


def test_the_800000_chunk_png_is_refused_before_pillow_parses_it(no_pillow_open):
    started = time.process_time()
    assert refused(hostile_files.png_empty_chunks()).code == "image.unsupported_format"
    assert time.process_time() - started < 1.0  # Pillow's parse of it took 2 s


def small_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("P", (40, 30), index) for index in range(3)]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], comment=b"c" * 600)
    return buffer.getvalue()


def test_a_gif_is_read_up_to_its_sub_block_limit_and_refused_past_it(monkeypatch):
    data = small_gif()
    counted = []
    real = decoding._skip_sub_blocks

    def counting(data, pos, left):
        before = left[0]
        end = real(data, pos, left)
        counted.append(before - left[0])
        return end

    monkeypatch.setattr(decoding, "_skip_sub_blocks", counting)
    decode_image(data, **LIMITS)
    total = sum(counted)
    assert total >= 6  # at least each frame's data sub-block and its terminator
    monkeypatch.setattr(decoding, "_skip_sub_blocks", real)
    monkeypatch.setattr(decoding, "_GIF_MAX_SUB_BLOCKS", total)
    assert decode_image(data, **LIMITS).format == "GIF"
    monkeypatch.setattr(decoding, "_GIF_MAX_SUB_BLOCKS", total - 1)
    error = refused(data)
    assert error.code == "image.unsupported_format" and "sub-blocks" in error.message


def test_the_gif_of_one_byte_sub_blocks_is_refused_before_pillow(no_pillow_open):
    started = time.process_time()
    error = refused(hostile_files.gif_one_byte_sub_blocks())
    assert error.code == "image.unsupported_format"
    assert time.process_time() - started < 1.0  # it took 1.6 s of CPU before


def test_the_40_mp_webp_is_refused_from_its_header_by_its_memory(no_pillow_open):
    error = refused(hostile_files.webp_lossless_rgba(), memory=MemoryLimits(320 * 1024**2))
    assert error.code == "image.too_many_pixels"
    assert "MiB of memory" in error.message and "320 MiB" in error.message


def test_a_decode_over_max_decode_memory_is_413_and_under_it_decodes():
    data = io.BytesIO()
    Image.new("RGB", (1500, 1000), (1, 2, 3)).save(data, "PNG")
    png = data.getvalue()
    cost = decode_memory("PNG", "RGB", (1500, 1000), (1500, 1000))
    assert cost == 1500 * 1000 * 4  # the frame only: no resize, no conversion
    assert decode_image(png, **LIMITS, memory=MemoryLimits(cost)).width == 1500
    error = refused(png, memory=MemoryLimits(cost - 1))
    assert error.code == "image.too_many_pixels" and "memory" in error.message


@pytest.mark.parametrize(
    ("fmt", "mode", "per_pixel"),
    [
        ("PNG", "L", 1),
        ("PNG", "P", 1),
        ("PNG", "I;16", 2),
        ("PNG", "RGBA", 4),
        ("WEBP", "RGBA", 16),
    ],
)
def test_the_estimate_counts_the_bytes_per_pixel_of_the_mode(fmt, mode, per_pixel):
    size = (100, 80)
    assert decode_memory(fmt, mode, size, size) >= 100 * 80 * per_pixel
    if mode != "RGB":  # conversion: the converted copy, at most a strip's worth more
        assert decode_memory(fmt, mode, size, size) <= 100 * 80 * (per_pixel + 4 + 16)


def test_a_progressive_jpeg_counts_its_coefficients():
    plain = decode_memory("JPEG", "RGB", (4000, 3000), (2000, 1500))
    with_coefficients = decode_memory("JPEG", "RGB", (4000, 3000), (2000, 1500), coefficients=10**6)
    assert with_coefficients == plain + 10**6


def test_the_budget_makes_a_large_decode_wait_for_room():
    budget = DecodeBudget(100, wait_seconds=5)
    order, holding, done = [], threading.Event(), threading.Event()

    def second() -> None:
        with budget.reserve(50):
            order.append("second")
            holding.set()
            done.wait(5)

    with budget.reserve(80):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)
        order.append("first done")
    assert holding.wait(5)
    assert order == ["first done", "second"]
    assert budget.free_bytes == 50  # the second holds its 50
    done.set()
    waiter.join(5)
    assert budget.free_bytes == 100


def test_a_decode_that_cannot_get_room_in_time_is_image_busy():
    budget = DecodeBudget(100, wait_seconds=0.05)
    with budget.reserve(100), pytest.raises(FaceappError) as caught, budget.reserve(1):
        pass
    assert caught.value.code == "image.busy" and caught.value.status == 503
    assert budget.free_bytes == 100


def test_a_reservation_larger_than_the_budget_takes_all_of_it_and_does_not_deadlock():
    budget = DecodeBudget(100, wait_seconds=0.05)
    with budget.reserve(10**9):
        assert budget.free_bytes == 0
    assert budget.free_bytes == 100


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16"])
def test_strip_conversion_equals_converting_the_whole_frame(monkeypatch, mode):
    rng = np.random.default_rng(7)
    if mode == "I;16":
        frame = Image.fromarray(rng.integers(0, 65535, (333, 517), dtype=np.uint16))
    else:
        frame = Image.fromarray(rng.integers(0, 255, (333, 517, 4), dtype=np.uint8), "RGBA")
        frame = frame.convert(mode)
    target = (100, 64)
    factor = decoding._reduce_factor(frame.size, target)
    assert factor == 5
    whole = decoding._to_rgb(frame).reduce(factor)
    expected = whole.resize(target, Image.Resampling.LANCZOS, box=(0, 0, 517 / 5, 333 / 5))
    monkeypatch.setattr(decoding, "_STRIP_PIXELS", 517 * 7)  # strips of 5 rows: 67 of them
    assert decoding._to_rgb_reduced(frame, target).tobytes() == expected.tobytes()
