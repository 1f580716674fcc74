"""Quality checks at their edges: small faces' sharpness, threshold limits, the details numbers."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from faceapp.config import DEFAULTS
from faceapp.faces import FaceBox
from faceapp.validation import Thresholds, assess

THRESHOLDS = Thresholds.from_config(DEFAULTS)
ASTRONAUT_FACE = (177, 66, 95, 95)  # x, y, side of the astronaut's face in the 512 px original


def with_face_of(astronaut: Image.Image, side: int) -> tuple[Image.Image, FaceBox]:
    """The astronaut scaled so its face is `side` px, and that face's box."""
    scale = side / ASTRONAUT_FACE[2]
    size = round(astronaut.width * scale)
    image = astronaut.resize((size, size), Image.Resampling.LANCZOS)
    x, y = (round(v * scale) for v in ASTRONAUT_FACE[:2])
    return image, FaceBox(x, y, side, side, 0.9)


def warning_codes(image: Image.Image, face: FaceBox) -> list[str]:
    return [issue.code for issue in assess(image, [face], THRESHOLDS).warnings]


@pytest.mark.parametrize("side", [40, 56])
def test_a_small_blurred_face_is_blurry_and_a_small_sharp_one_is_not(astronaut, side):
    image, face = with_face_of(astronaut, side)
    blurred = image.filter(ImageFilter.GaussianBlur(side / 20))

    assert "image.blurry" not in warning_codes(image, face)
    assert "image.blurry" in warning_codes(blurred, face)


@pytest.mark.parametrize(
    "override",
    [
        {"MIN_IMAGE_PX": 0},
        {"MIN_FACE_PX": 0},
        {"BLUR_THRESHOLD": 0},
        {"DARK_THRESHOLD": 0, "BRIGHT_THRESHOLD": 255},
        {"DARK_THRESHOLD": 99, "BRIGHT_THRESHOLD": 100},
    ],
)
def test_limits_at_their_edges_are_accepted(override):
    thresholds = Thresholds.from_config(dict(DEFAULTS, **override))
    for key, value in override.items():
        assert getattr(thresholds, key.lower()) == value


@pytest.mark.parametrize(
    "override",
    [
        {"MIN_IMAGE_PX": -1},
        {"BLUR_THRESHOLD": -0.5},
        {"DARK_THRESHOLD": 100, "BRIGHT_THRESHOLD": 100},
        {"DARK_THRESHOLD": -1},
        {"BRIGHT_THRESHOLD": 256},
    ],
)
def test_limits_past_their_edges_are_refused(override):
    with pytest.raises(ValueError):
        Thresholds.from_config(dict(DEFAULTS, **override))


def test_an_image_without_a_face_reports_largest_face_px_zero(astronaut):
    report = assess(astronaut, [], THRESHOLDS)
    assert report.quality["largest_face_px"] == 0
    assert report.quality["face_count"] == 0
    # No face, no blur verdict: sharpness of the scenery says nothing about a face.
    assert [issue.code for issue in report.warnings] == []


def test_a_face_exactly_at_the_limits_is_enough(astronaut):
    image, face = with_face_of(astronaut, THRESHOLDS.min_face_px)
    tight = dataclasses.replace(THRESHOLDS, min_image_px=min(image.size), blur_threshold=0)
    assert assess(image, [face], tight).errors == []
    smaller = dataclasses.replace(tight, min_image_px=min(image.size) + 1)
    assert [i.code for i in assess(image, [face], smaller).errors] == ["image.too_small"]


def test_details_round_brightness_and_contrast_to_two_decimals(client):
    pixels = np.full((100, 100), 100, dtype=np.uint8)
    pixels.flat[:123] = 110  # mean 100.123
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, "PNG")

    answer = client.post(
        "/api/validate?details=1", data={"file": (io.BytesIO(buffer.getvalue()), "grey.png")}
    )

    assert answer.status_code == 200, answer.get_json()
    quality = answer.get_json()["details"]["quality"]
    assert quality["brightness"] == 100.12
    assert quality["contrast"] == round(float(pixels.std()), 2) == 1.1
    assert quality["largest_face_px"] == 0 and quality["face_count"] == 0
