"""Hostile uploads through the endpoint (RELIABILITY 1-9): a 4xx with a stable code, never a 500."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from faceapp.errors import STATUS_BY_CODE
from tests.costs import measured, report


def post(client, data: bytes):
    return client.post("/api/validate?details=1", data={"file": (io.BytesIO(data), "upload")})


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels that compresses to a few KB."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + tag
            + payload
            + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
        )

    rows = (b"\x00" + b"\x00" * ((side + 7) // 8)) * side
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header(client):
    bomb = png_bomb()
    assert len(bomb) < 100_000
    started = time.perf_counter()
    answer = post(client, bomb)
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] == "image.too_many_pixels"
    assert time.perf_counter() - started < 5  # decided from the header, not by decoding 400 MP


def test_exif_orientation_is_applied_before_detection(client, astronaut_jpeg):
    photo = Image.open(io.BytesIO(astronaut_jpeg)).resize((512, 384))
    turned = photo.transpose(Image.Transpose.ROTATE_90)  # stored sideways, as a phone does
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    turned.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    details = post(client, buffer.getvalue()).get_json()["details"]
    assert (details["width"], details["height"]) == (512, 384)  # upright again
    assert len(details["faces"]) == 1  # the frontal-face detector finds her only when upright


def test_animated_gif_uses_its_first_frame(client, astronaut_jpeg):
    first = Image.open(io.BytesIO(astronaut_jpeg)).convert("P")
    second = Image.new("P", first.size)
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], duration=100)
    answer = post(client, buffer.getvalue())
    assert answer.status_code == 200
    assert answer.get_json()["details"]["format"] == "GIF"


def test_grey_cmyk_and_transparent_inputs_become_rgb(client, app, astronaut_jpeg):
    photo = Image.open(io.BytesIO(astronaut_jpeg))
    for mode, fmt in (
        ("L", "PNG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
    ):
        buffer = io.BytesIO()
        photo.convert(mode if mode != "I;16" else "I").convert(mode).save(buffer, fmt)
        answer = post(client, buffer.getvalue())
        assert answer.status_code == 200, (mode, answer.get_json())
        with app.app_context():
            from faceapp import services

            stored = Image.open(io.BytesIO(services.image_preview(answer.get_json()["image_id"])))
        assert stored.mode == "RGB", mode


@st.composite
def mutated_images(draw):
    base = draw(st.sampled_from(SEEDS))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete" and data:
            del data[position : position + draw(st.integers(1, 64))]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


def _seed(fmt: str, **params) -> bytes:
    image = Image.new("RGB", (48, 40), (90, 140, 200))
    image.paste((250, 200, 30), (10, 10, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


SEEDS = [
    _seed("JPEG", quality=80),
    _seed("JPEG", progressive=True),
    _seed("PNG"),
    _seed("GIF"),
    _seed("WEBP", quality=80),
]


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated_images())
def test_mutated_images_never_cause_a_500(client, data):
    with measured(f"mutated image of {len(data)} bytes") as cost:
        answer = post(client, data)
    cost.outcome = str(answer.status_code)
    report(cost)
    assert answer.status_code < 500, answer.get_data(as_text=True)
    body = answer.get_json()
    if answer.status_code != 200:
        assert STATUS_BY_CODE[body["error"]["code"]] == answer.status_code
        assert "Traceback" not in answer.get_data(as_text=True)
    else:
        assert body["valid"] in (True, False)


def test_bad_uploads_do_not_harm_concurrent_good_ones(app, astronaut_jpeg):
    bomb, half = png_bomb(), astronaut_jpeg[: len(astronaut_jpeg) // 2]
    results: dict[str, list[int]] = {"good": [], "bad": []}

    def worker(kind: str, payload: bytes) -> None:
        client = app.test_client()
        for _ in range(4):
            results[kind].append(post(client, payload).status_code)

    threads = [threading.Thread(target=worker, args=("good", astronaut_jpeg)) for _ in range(2)]
    threads += [threading.Thread(target=worker, args=("bad", payload)) for payload in (bomb, half)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["good"] == [200] * 8
    assert sorted(set(results["bad"])) == [400, 413]
