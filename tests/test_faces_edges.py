"""The edges of face detection that `make mutants` found unchecked: cut-offs met exactly, boxes
that clipping empties, slivers of images, blank images, the confidence YuNet reports, and the
errors that name what is wrong with a detector's file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from faceapp.faces import (
    YUNET_SCORE_THRESHOLD,
    FaceBox,
    HaarFaceDetector,
    YuNetFaceDetector,
    _stretch_contrast,
    build_detector,
    detect_faces,
)
from tests.test_faces import RecordingDetector


def test_landmarks_in_answers_are_rounded_to_a_tenth_of_a_pixel():
    points = ((10.04, 20.06), (30.55, 20.0), (20.0, 30.0), (12.0, 40.0), (28.0, 40.0))
    described = FaceBox(1, 2, 30, 40, 0.5, points).to_dict()
    assert described["landmarks"][:2] == [[10.0, 20.1], [30.6, 20.0]]


def test_a_face_scored_exactly_at_the_haar_cutoff_is_kept(astronaut):
    (face,) = detect_faces(HaarFaceDetector(min_confidence=0.0), astronaut, 640)
    at_cutoff = detect_faces(HaarFaceDetector(min_confidence=face.confidence), astronaut, 640)
    assert at_cutoff == [face]
    above = np.nextafter(face.confidence, 1.0)
    assert detect_faces(HaarFaceDetector(min_confidence=above), astronaut, 640) == []


@pytest.mark.parametrize("content", [None, "<opencv_storage></opencv_storage>", "garbage"])
def test_a_haar_cascade_file_that_does_not_load_fails_at_start_and_is_named(tmp_path, content):
    path = tmp_path / "not-a-cascade.xml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="not-a-cascade.xml"):
        HaarFaceDetector(cascade_path=str(path))


@pytest.mark.parametrize("level", [0, 128, 255])
def test_a_blank_image_has_no_face(haar, level):
    assert detect_faces(haar, Image.new("RGB", (200, 160), (level,) * 3), 640) == []


def test_haar_stretches_the_grey_range_onto_0_to_255():
    # 60 % of the pixels at 100, 30 % at 150, 10 % at 200: the 1st and 99th percentiles.
    grey = np.repeat(np.array([100] * 6 + [150] * 3 + [200], dtype=np.uint8), 100).reshape(20, 50)
    stretched = _stretch_contrast(grey)
    assert stretched.dtype == np.uint8
    assert sorted(set(stretched.ravel().tolist())) == [0, 127, 255]
    # Two neighbouring levels are still a range, and are spread as far as they go.
    two = np.array([[100, 101]] * 10, dtype=np.uint8)
    assert sorted(set(_stretch_contrast(two).ravel().tolist())) == [0, 255]
    flat = np.full((10, 10), 77, dtype=np.uint8)
    assert np.array_equal(_stretch_contrast(flat), flat)


def test_a_max_side_of_one_pixel_is_allowed(astronaut):
    detector = RecordingDetector([])
    assert detect_faces(detector, astronaut, max_side=1) == []
    assert detector.seen_shape == (1, 1, 3)


@pytest.mark.parametrize(("size", "seen"), [((1280, 1), (1, 640, 3)), ((1, 1280), (640, 1, 3))])
def test_a_sliver_of_an_image_is_shrunk_to_at_least_one_pixel_across(size, seen):
    detector = RecordingDetector([])
    detect_faces(detector, Image.new("RGB", size, (90, 90, 90)), max_side=640)
    assert detector.seen_shape == seen


def test_boxes_that_clipping_leaves_empty_are_dropped(astronaut):
    detector = RecordingDetector(
        [
            FaceBox(600, 100, 20, 20, 0.9),  # right of the image, at a height inside it
            FaceBox(100, 600, 20, 20, 0.9),  # below it, at a width inside it
            FaceBox(512, 100, 20, 20, 0.9),  # starts on the right edge: nothing left
            FaceBox(100, 512, 20, 20, 0.9),  # starts on the bottom edge
            FaceBox(100, 100, 0, 20, 0.9),  # no width to begin with
            FaceBox(300, 300, 20, 20, 0.8),  # a real one
        ]
    )
    faces = detect_faces(detector, astronaut, max_side=640)
    assert [(f.x, f.y, f.width, f.height) for f in faces] == [(300, 300, 20, 20)]


def test_yunet_with_a_missing_file_says_it_is_missing(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        YuNetFaceDetector(str(tmp_path / "yunet.onnx"))


def test_a_detector_model_setting_that_is_not_a_file_is_named_in_the_fallback(tmp_path):
    for path in (tmp_path / "missing.onnx", tmp_path):  # nothing there, and a folder
        info = build_detector({"DETECTOR": "yunet", "DETECTOR_MODEL": str(path)}).info
        assert info["name"] == "haar"
        assert "FACEAPP_DETECTOR_MODEL" in info["fallback"]["reason"]
        assert str(path) in info["fallback"]["reason"]


def test_yunet_confidence_is_its_score_not_a_constant(yunet, astronaut):
    # Real faces score about 0.86..0.95 (docs/DETECTOR.md); the cameraman, side-on, under 0.9.
    camera = Image.fromarray(data.camera()).convert("RGB")
    (man,) = detect_faces(yunet, camera, 640)
    (her,) = detect_faces(yunet, astronaut, 640)
    for face in (man, her):
        assert YUNET_SCORE_THRESHOLD <= face.confidence < 0.99
    assert man.confidence != her.confidence
