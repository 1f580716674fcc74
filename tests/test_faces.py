"""Face detection on real photographs from scikit-image (nobody here made them)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from skimage import data

from faceapp.faces import (
    FaceBox,
    HaarFaceDetector,
    YuNetFaceDetector,
    build_detector,
    detect_faces,
)

# Where the astronaut's face is in skimage's 512 x 512 photo (checked by drawing the box).
ASTRONAUT_FACE = (160, 60, 260, 200)  # left, top, right, bottom


@pytest.fixture(scope="module")
def two_astronauts(astronaut: Image.Image) -> Image.Image:
    """The astronaut, and beside her a smaller copy (face about 95 px and 67 px)."""
    canvas = Image.new("RGB", (512 + 320, 512))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(astronaut.resize((320, 320), Image.Resampling.LANCZOS), (512, 96))
    return canvas


class RecordingDetector:
    """A stand-in detector: returns fixed boxes and records the array it was given."""

    name = "recording"

    def __init__(self, boxes: list[FaceBox]) -> None:
        self.boxes = boxes
        self.seen_shape: tuple[int, ...] | None = None

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        self.seen_shape = rgb.shape
        return list(self.boxes)


def overlap_fraction(face: FaceBox, region: tuple[int, int, int, int]) -> float:
    """How much of the face box lies inside region (left, top, right, bottom)."""
    left, top = max(face.x, region[0]), max(face.y, region[1])
    right = min(face.x + face.width, region[2])
    bottom = min(face.y + face.height, region[3])
    return max(0, right - left) * max(0, bottom - top) / face.area


def test_astronaut_has_one_face_where_her_face_is(haar, astronaut):
    faces = detect_faces(haar, astronaut, max_side=640)

    assert len(faces) == 1
    face = faces[0]
    assert overlap_fraction(face, ASTRONAUT_FACE) > 0.8
    assert 70 <= face.width <= 130
    assert 0.5 <= face.confidence <= 1.0


@pytest.mark.parametrize("photo", ["coffee", "chelsea"])
def test_photos_without_a_person_have_no_face(haar, photo):
    image = Image.fromarray(getattr(data, photo)())
    assert detect_faces(haar, image, max_side=640) == []


def test_boxes_found_on_a_downscaled_copy_map_back_to_the_original(haar, astronaut):
    (original,) = detect_faces(haar, astronaut, max_side=640)
    big = astronaut.resize((1536, 1536), Image.Resampling.LANCZOS)

    (face,) = detect_faces(haar, big, max_side=640)

    for got, want in [
        (face.x, original.x * 3),
        (face.y, original.y * 3),
        (face.width, original.width * 3),
        (face.height, original.height * 3),
    ]:
        assert abs(got - want) <= 0.1 * original.width * 3


def test_two_faces_come_largest_first(haar, two_astronauts):
    faces = detect_faces(haar, two_astronauts, max_side=640)

    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].x < 512 <= faces[1].x  # the big one is the left-hand astronaut


def test_detector_sees_a_copy_no_larger_than_max_side(astronaut):
    detector = RecordingDetector([FaceBox(10, 20, 30, 40, 0.9)])
    wide = astronaut.resize((1600, 800))

    (face,) = detect_faces(detector, wide, max_side=400)

    assert detector.seen_shape == (200, 400, 3)
    assert (face.x, face.y, face.width, face.height) == (40, 80, 120, 160)
    assert face.confidence == 0.9


def test_small_images_are_not_upscaled(astronaut):
    detector = RecordingDetector([])
    detect_faces(detector, astronaut.resize((300, 200)), max_side=640)
    assert detector.seen_shape == (200, 300, 3)


def test_boxes_are_clipped_to_the_image_and_sorted(astronaut):
    detector = RecordingDetector(
        [
            FaceBox(-10, -10, 50, 50, 0.9),  # 40 x 40 once clipped
            FaceBox(480, 490, 100, 100, 0.8),  # 32 x 22 once clipped
            FaceBox(200, 200, 60, 60, 0.7),
            FaceBox(600, 600, 20, 20, 0.99),  # entirely outside: dropped
        ]
    )

    faces = detect_faces(detector, astronaut, max_side=640)

    assert [(f.x, f.y, f.width, f.height) for f in faces] == [
        (200, 200, 60, 60),
        (0, 0, 40, 40),
        (480, 490, 32, 22),
    ]


def test_non_rgb_images_are_converted(haar, astronaut):
    faces = detect_faces(haar, astronaut.convert("RGBA"), max_side=640)
    assert len(faces) == 1


def test_max_side_must_be_positive(haar, astronaut):
    with pytest.raises(ValueError, match="max_side"):
        detect_faces(haar, astronaut, max_side=0)


def test_haar_rejects_arrays_that_are_not_rgb(haar):
    with pytest.raises(ValueError, match="RGB uint8"):
        haar.detect(np.zeros((64, 64), dtype=np.uint8))


def test_detection_from_four_threads_at_once_gives_the_same_faces(haar, two_astronauts):
    expected = detect_faces(haar, two_astronauts, max_side=640)
    start = threading.Barrier(4)

    def detect_twice(_: int) -> list[list[FaceBox]]:
        start.wait()
        return [detect_faces(haar, two_astronauts, max_side=640) for _ in range(2)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [faces for batch in pool.map(detect_twice, range(4)) for faces in batch]

    assert len(expected) == 2
    assert all(faces == expected for faces in results)


def test_face_box_to_dict():
    face = FaceBox(1, 2, 3, 4, 0.876543)
    assert face.area == 12
    assert face.to_dict() == {
        "box": {"x": 1, "y": 2, "width": 3, "height": 4},
        "confidence": 0.8765,
    }
    eyes_level = ((10.0, 20.0), (30.0, 20.0), (20.0, 30.0), (12.0, 40.0), (28.0, 40.0))
    described = FaceBox(1, 2, 3, 4, 0.5, eyes_level).to_dict()
    assert described["landmarks"][0] == [10.0, 20.0]
    assert described["pose"] == {"roll": 0.0, "yaw": 0.0}


def test_yunet_with_a_missing_model_file_names_the_path(tmp_path):
    path = tmp_path / "missing" / "yunet.onnx"
    with pytest.raises(ValueError, match="missing/yunet.onnx"):
        YuNetFaceDetector(str(path))


def test_yunet_with_an_unreadable_model_file_names_the_path(tmp_path):
    path = tmp_path / "not-a-model.onnx"
    path.write_bytes(b"this is not an ONNX model")
    with pytest.raises(ValueError, match="not-a-model.onnx"):
        YuNetFaceDetector(str(path))


def test_build_detector_makes_haar_when_asked():
    active = build_detector({"DETECTOR": "haar"})  # as faceapp/config.py lowercased it
    assert isinstance(active.detector, HaarFaceDetector)
    assert active.info["name"] == "haar"
    assert "fallback" not in active.info


def test_build_detector_falls_back_to_haar_when_the_yunet_file_is_missing(tmp_path):
    path = tmp_path / "yunet.onnx"
    active = build_detector({"DETECTOR": "yunet", "DETECTOR_MODEL": str(path)})
    assert active.info["name"] == "haar"
    assert active.info["fallback"]["from"] == "yunet"
    assert "yunet.onnx" in active.info["fallback"]["reason"]
    # The default place is the models folder; without auto-pull the reason says how to fill it.
    active = build_detector({"DETECTOR": "yunet", "MODELS_DIR": str(tmp_path)})
    assert "flask --app wsgi models pull" in active.info["fallback"]["reason"]


def test_haar_drops_the_weak_false_faces_it_used_to_report(astronaut):
    coins = Image.fromarray(data.coins()).convert("RGB")
    old = detect_faces(HaarFaceDetector(min_confidence=0.5), coins, 640)
    new = detect_faces(HaarFaceDetector(), coins, 640)
    # Calibrated at 0.85: the coin "faces" at 0.63-0.74 go, the three at 0.88-0.93 stay.
    assert len(old) == 6 and len(new) == 3
    assert all(face.confidence >= 0.85 for face in new)
    (face,) = detect_faces(HaarFaceDetector(), astronaut, 640)  # her face stays (0.99)
    assert face.confidence > 0.95


def test_detection_and_brightness_on_the_preview_match_the_full_image(astronaut, haar):
    from faceapp.faces import detect_faces
    from faceapp.stored_image import make_preview
    from faceapp.validation import Thresholds, assess

    large = astronaut.resize((2000, 2000))
    preview = make_preview(large)
    assert preview.size == (1000, 1000)
    full = detect_faces(haar, large, 640)
    cheap = detect_faces(haar, large, 640, preview)
    assert len(full) == len(cheap) == 1
    for key in ("x", "y", "width", "height"):  # the full image's coordinates either way
        assert abs(getattr(full[0], key) - getattr(cheap[0], key)) <= 8
    plain = assess(large, full, Thresholds())
    via_preview = assess(large, cheap, Thresholds(), reduced=preview)
    assert abs(plain.quality["brightness"] - via_preview.quality["brightness"]) < 0.5
    assert abs(plain.quality["contrast"] - via_preview.quality["contrast"]) < 0.5
    assert plain.to_dict() == via_preview.to_dict()
    # A preview smaller than the detector's size is not used: the detector sees its full input.
    small = detect_faces(haar, large.resize((700, 700)), 640, preview.resize((300, 300)))
    assert len(small) == 1
