"""Quality checks on real photographs from scikit-image, altered the way bad uploads are."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from skimage import data

from faceapp.config import DEFAULTS
from faceapp.faces import FaceBox, detect_faces
from faceapp.validation import (
    QUALITY_MAX_SIDE,
    Issue,
    QualityReport,
    Thresholds,
    assess,
    bounded_copy,
    measure_sharpness,
)

THRESHOLDS = Thresholds.from_config(DEFAULTS)


def check(detector, image: Image.Image, thresholds: Thresholds = THRESHOLDS) -> QualityReport:
    """Detect faces the way the service does, then assess."""
    return assess(image, detect_faces(detector, image, max_side=640), thresholds)


def codes(issues: list[Issue]) -> list[str]:
    return [issue.code for issue in issues]


def test_astronaut_is_valid_without_warnings(haar, astronaut):
    report = check(haar, astronaut)

    assert report.valid
    assert report.errors == [] and report.warnings == []
    quality = report.quality
    assert quality["face_count"] == 1
    assert quality["largest_face_px"] >= THRESHOLDS.min_face_px
    assert quality["sharpness"] > 3 * THRESHOLDS.blur_threshold
    assert THRESHOLDS.dark_threshold < quality["brightness"] < THRESHOLDS.bright_threshold
    assert quality["contrast"] > 0


def test_a_photo_without_a_face_is_invalid(haar):
    report = check(haar, Image.fromarray(data.coffee()))

    assert not report.valid
    assert codes(report.errors) == ["face.none"]
    assert report.quality["face_count"] == 0


def two_astronauts(astronaut: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (512 + 320, 512))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(astronaut.resize((320, 320), Image.Resampling.LANCZOS), (512, 96))
    return canvas


def test_two_faces_are_an_error_when_one_is_required(haar, astronaut):
    report = check(haar, two_astronauts(astronaut))

    assert codes(report.errors) == ["face.multiple"]
    assert "2 faces" in report.errors[0].message
    assert report.quality["face_count"] == 2


def test_two_faces_are_a_warning_when_several_are_allowed(haar, astronaut):
    allow_many = dataclasses.replace(THRESHOLDS, require_single_face=False)

    report = check(haar, two_astronauts(astronaut), allow_many)

    assert report.valid
    assert codes(report.warnings) == ["face.multiple"]


def test_a_tiny_image_is_too_small(haar, astronaut):
    report = check(haar, astronaut.resize((40, 40)))

    assert "image.too_small" in codes(report.errors)
    message = next(i.message for i in report.errors if i.code == "image.too_small")
    assert "40 px" in message and "64 px" in message


def test_a_small_face_is_too_small(haar, astronaut):
    small = astronaut.resize((205, 205), Image.Resampling.LANCZOS)  # face about 40 px

    report = check(haar, small)

    assert codes(report.errors) == ["face.too_small"]
    assert report.quality["largest_face_px"] < THRESHOLDS.min_face_px
    assert f"{THRESHOLDS.min_face_px} px" in report.errors[0].message


def test_a_blurred_face_is_blurry(haar, astronaut):
    report = check(haar, astronaut.filter(ImageFilter.GaussianBlur(6)))

    assert report.valid  # the face is still found: blur is only a warning
    assert codes(report.warnings) == ["image.blurry"]
    assert report.quality["sharpness"] < THRESHOLDS.blur_threshold / 2
    assert f"{THRESHOLDS.blur_threshold:g}" in report.warnings[0].message


def test_a_darkened_photo_is_too_dark(haar, astronaut):
    report = check(haar, ImageEnhance.Brightness(astronaut).enhance(0.1))

    assert report.valid  # the face is still found, and dim light is not mistaken for blur
    assert codes(report.warnings) == ["image.too_dark"]
    assert report.quality["brightness"] < 15
    assert "40" in report.warnings[0].message


def test_a_washed_out_photo_is_too_bright(haar, astronaut):
    washed_out = Image.blend(astronaut, Image.new("RGB", astronaut.size, "white"), 0.8)

    report = check(haar, washed_out)

    assert report.valid
    assert codes(report.warnings) == ["image.too_bright"]
    assert "220" in report.warnings[0].message


def test_sharpness_does_not_depend_on_resolution(haar, astronaut):
    small = check(haar, astronaut).quality["sharpness"]
    big = check(haar, astronaut.resize((1536, 1536), Image.Resampling.LANCZOS)).quality["sharpness"]
    assert 0.67 < big / small < 1.5


def test_sharpness_of_a_flat_region_is_zero():
    assert measure_sharpness(Image.new("L", (100, 100), 128)) == 0.0


def test_only_the_largest_face_is_measured(astronaut):
    faces = [FaceBox(0, 0, 10, 10, 0.9), FaceBox(177, 66, 95, 95, 0.9)]
    report = assess(astronaut, faces, dataclasses.replace(THRESHOLDS, require_single_face=False))
    assert report.quality["largest_face_px"] == 95
    assert codes(report.errors) == []


def test_thresholds_from_config():
    config = dict(DEFAULTS, REQUIRE_SINGLE_FACE="false", MIN_FACE_PX="32", BLUR_THRESHOLD="5")
    thresholds = Thresholds.from_config(config)
    assert thresholds.require_single_face is False
    assert thresholds.min_face_px == 32
    assert thresholds.blur_threshold == 5.0
    assert Thresholds.from_config(DEFAULTS).require_single_face is True


@pytest.mark.parametrize(
    "override",
    [{"REQUIRE_SINGLE_FACE": "maybe"}, {"DARK_THRESHOLD": 230}, {"MIN_FACE_PX": -1}],
)
def test_bad_thresholds_are_refused(override):
    with pytest.raises(ValueError):
        Thresholds.from_config(dict(DEFAULTS, **override))


def test_report_to_dict():
    report = QualityReport(errors=[Issue("face.none", "No face was found in the image.")])
    assert report.to_dict() == {
        "valid": False,
        "errors": [{"code": "face.none", "message": "No face was found in the image."}],
        "warnings": [],
    }


def test_brightness_and_contrast_of_a_large_image_come_from_a_bounded_copy():
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 255, (30, 40), dtype=np.uint8)
    large = Image.fromarray(np.kron(tiles, np.ones((100, 100), np.uint8))).convert("RGB")
    assert large.size == (4000, 3000)
    reduced = bounded_copy(large, QUALITY_MAX_SIDE)
    assert max(reduced.size) <= QUALITY_MAX_SIDE
    report = assess(large, [], Thresholds())
    full = np.asarray(large.convert("L"), dtype=np.float32)
    assert abs(report.quality["brightness"] - full.mean()) < 0.5
    assert abs(report.quality["contrast"] - full.std()) < 0.03 * full.std()  # edges soften a little
