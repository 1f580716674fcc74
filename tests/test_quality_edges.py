"""Quality checks at their edges: small faces' sharpness, threshold limits, the details numbers."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from faceapp.config import DEFAULTS
from faceapp.faces import FaceBox
from faceapp.validation import Thresholds, assess, measure_sharpness

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
    sharpness = measure_sharpness(Image.fromarray(pixels))
    assert round(sharpness, 3) != round(sharpness, 2)  # so the rounding shows
    assert quality["sharpness"] == round(sharpness, 2)
    assert quality["largest_face_px"] == 0 and quality["face_count"] == 0


def test_each_warning_starts_just_past_its_limit(astronaut):
    image, face = with_face_of(astronaut, 95)
    box = (face.x, face.y, face.x + face.width, face.y + face.height)
    sharpness = measure_sharpness(image.convert("L").crop(box))
    grey = Image.new("RGB", (200, 200), (100, 100, 100))  # brightness exactly 100

    def warnings(picture, faces, **limits) -> list[str]:
        thresholds = dataclasses.replace(THRESHOLDS, **limits)
        return [issue.code for issue in assess(picture, faces, thresholds).warnings]

    assert "image.blurry" not in warnings(image, [face], blur_threshold=sharpness)
    assert "image.blurry" in warnings(image, [face], blur_threshold=sharpness + 0.01)
    assert warnings(grey, [], dark_threshold=100, bright_threshold=200) == []
    assert warnings(grey, [], dark_threshold=100.01, bright_threshold=200) == ["image.too_dark"]
    assert warnings(grey, [], dark_threshold=10, bright_threshold=100) == []
    assert warnings(grey, [], dark_threshold=10, bright_threshold=99.99) == ["image.too_bright"]


def test_the_sharpness_quoted_in_the_docs_is_what_is_measured(astronaut):
    # validation.py's docstring (and the BLUR_THRESHOLD default) rest on these figures.
    face = astronaut.convert("L").crop((177, 66, 272, 161))
    assert measure_sharpness(face) == pytest.approx(1172, rel=0.02)


@pytest.mark.parametrize(("low", "high"), [(127, 130), (100, 160), (0, 255)])
def test_contrast_is_normalised_down_to_one_grey_level(low, high):
    board = np.indices((64, 64)).sum(axis=0) % 2  # a sharp 64 px checkerboard
    region = Image.fromarray(np.where(board, high, low).astype(np.uint8))
    reference = Image.fromarray(np.where(board, 200, 50).astype(np.uint8))
    assert measure_sharpness(region) == pytest.approx(measure_sharpness(reference))


@pytest.mark.parametrize("word", ["1", "true", "Yes", " on "])
def test_yes_words_turn_single_face_checking_on(word):
    assert Thresholds.from_config(dict(DEFAULTS, REQUIRE_SINGLE_FACE=word)).require_single_face


def test_the_built_in_limits_are_the_configured_defaults():
    assert Thresholds() == Thresholds.from_config(DEFAULTS)
