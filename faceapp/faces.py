"""Face detection: find the faces in an image, as boxes in that image's coordinates.

Two detectors share one small interface (:class:`FaceDetector`): OpenCV's frontal-face Haar
cascade, which ships with ``opencv-python-headless<5`` and needs no download, and YuNet
(``cv2.FaceDetectorYN``), a small CNN whose ONNX file the operator supplies. Detectors see a copy
of the image scaled down to ``DETECT_MAX_SIDE`` (:func:`detect_faces`): cost stays bounded and
both detectors are tuned for faces tens to a few hundred pixels tall.

OpenCV's cascade and DNN objects are not documented as safe to share between threads, so each
detector keeps one native object per thread.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import cv2
import numpy as np
from PIL import Image

T = TypeVar("T")


@dataclass(frozen=True)
class FaceBox:
    """One detected face: its box in the coordinates of the image it was found in."""

    x: int
    y: int
    width: int
    height: int
    confidence: float  # 0..1; how each detector derives it is documented on the detector

    @property
    def area(self) -> int:
        return self.width * self.height

    def to_dict(self) -> dict[str, Any]:
        """The face as the API shows it: ``{"box": {...}, "confidence": ...}``."""
        return {
            "box": {"x": self.x, "y": self.y, "width": self.width, "height": self.height},
            "confidence": round(float(self.confidence), 4),
        }


class FaceDetector(Protocol):
    """Anything that finds faces in an RGB uint8 array (H x W x 3), in that array's coordinates."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[FaceBox]: ...


class _PerThread(Generic[T]):
    """One object per thread, made on first use by ``factory``."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> T:
        obj = getattr(self._local, "obj", None)
        if obj is None:
            obj = self._local.obj = self._factory()
        return obj


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (scale 1.1, 5 neighbours, faces of 30 px and more).

    Before detection the grey image's 1st..99th percentile range is stretched to 0..255: on
    skimage's astronaut darkened to 10 % the plain cascade finds no face and the stretched one
    finds it, while on skimage's other photos it finds nothing new. Full histogram equalisation
    was rejected: it made a "face" of the moon.

    Confidence: ``detectMultiScale3(outputRejectLevels=True)`` gives, for each face, the sum of the
    cascade's last-stage weak classifiers (a boosting score, not a probability). It is squashed
    with a logistic: ``confidence = 1 / (1 + exp(-(weight - 1.5)))``, and faces below
    ``min_confidence`` (default 0.5, i.e. weight 1.5) are dropped. Measured on skimage's astronaut
    at 46 scales (faces 32..120 px) x 5 variants (flipped, blurred, darkened, washed out): her face
    scored 1.9..11 (median 5.5, confidence 0.6..1.0), while the 12 false faces found beside her
    scored 0.4..2.8 (9 below 1.5). The cutoff drops most such faces; the coin "faces" in skimage's
    ``coins`` (2..5) it cannot. The mapping orders faces sensibly; it is not calibrated.
    """

    name = "haar"
    cascade_file = "haarcascade_frontalface_default.xml"
    scale_factor = 1.1
    min_neighbors = 5
    min_size = 30
    confidence_centre = 1.5

    def __init__(self, cascade_path: str | None = None, min_confidence: float = 0.5) -> None:
        self.min_confidence = float(min_confidence)
        self.cascade_path = cascade_path or os.path.join(cv2.data.haarcascades, self.cascade_file)
        self._cascades = _PerThread(self._load_cascade)
        self._cascades.get()  # fail at start-up, not on the first request

    def _load_cascade(self) -> cv2.CascadeClassifier:
        cascade = cv2.CascadeClassifier(self.cascade_path)
        if cascade.empty():
            raise ValueError(f"Haar cascade file {self.cascade_path!r} could not be loaded.")
        return cascade

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Find frontal faces in an RGB uint8 array."""
        grey = _stretch_contrast(cv2.cvtColor(_check_rgb(rgb), cv2.COLOR_RGB2GRAY))
        boxes, _levels, weights = self._cascades.get().detectMultiScale3(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        weights = np.asarray(weights, dtype=np.float64).ravel()
        faces = [
            FaceBox(int(x), int(y), int(w), int(h), self._confidence(float(weight)))
            for (x, y, w, h), weight in zip(boxes, weights, strict=True)
        ]
        return [face for face in faces if face.confidence >= self.min_confidence]

    def _confidence(self, weight: float) -> float:
        return 1.0 / (1.0 + math.exp(-(weight - self.confidence_centre)))


class YuNetFaceDetector:
    """YuNet (``cv2.FaceDetectorYN``) from an ONNX file; confidence is YuNet's own face score."""

    name = "yunet"

    def __init__(self, model_path: str, score_threshold: float = 0.6) -> None:
        self.model_path = os.fspath(model_path)
        self.score_threshold = float(score_threshold)
        if not os.path.isfile(self.model_path):
            raise ValueError(f"YuNet model file not found: {self.model_path!r}.")
        self._nets = _PerThread(self._load_net)
        self._nets.get()  # an unreadable file fails here, at start-up

    def _load_net(self) -> cv2.FaceDetectorYN:
        try:
            # The input size is a placeholder: detect() sets the real one for every image.
            return cv2.FaceDetectorYN.create(self.model_path, "", (320, 320), self.score_threshold)
        except cv2.error as exc:
            raise ValueError(
                f"YuNet model file {self.model_path!r} is not a readable YuNet ONNX model."
            ) from exc

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Find faces in an RGB uint8 array."""
        bgr = cv2.cvtColor(_check_rgb(rgb), cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        net = self._nets.get()
        net.setInputSize((width, height))
        _ok, rows = net.detect(bgr)
        if rows is None:
            return []
        # Each row: x, y, w, h, five landmark points (10 values), score.
        return [
            FaceBox(
                round(float(row[0])),
                round(float(row[1])),
                round(float(row[2])),
                round(float(row[3])),
                min(1.0, max(0.0, float(row[-1]))),
            )
            for row in rows
        ]


def build_detector(config: Mapping[str, Any]) -> FaceDetector:
    """Make the detector the configuration names (``DETECTOR``: haar, or yunet + its model)."""
    name = str(config.get("DETECTOR") or "haar").strip().lower()
    if name == "haar":
        return HaarFaceDetector()
    if name == "yunet":
        path = config.get("YUNET_MODEL_PATH")
        if not path:
            raise ValueError("DETECTOR is 'yunet' but YUNET_MODEL_PATH is not set.")
        return YuNetFaceDetector(path)
    raise ValueError(f"Unknown DETECTOR {name!r}: use 'haar' or 'yunet'.")


def detect_faces(detector: FaceDetector, image: Image.Image, max_side: int) -> list[FaceBox]:
    """Run the detector on a copy downscaled to max_side, map boxes back to `image` coordinates
    (clipped), largest first."""
    if max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, not {max_side!r}.")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # reducing_gap: a fast box reduction first, then a proper filter for the last step.
        rgb = rgb.resize(small_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    small_width, small_height = rgb.size
    found = detector.detect(np.asarray(rgb))

    sx, sy = width / small_width, height / small_height
    faces = []
    for face in found:
        left = max(0, round(face.x * sx))
        top = max(0, round(face.y * sy))
        right = min(width, round((face.x + face.width) * sx))
        bottom = min(height, round((face.y + face.height) * sy))
        if right > left and bottom > top:
            faces.append(FaceBox(left, top, right - left, bottom - top, face.confidence))
    faces.sort(key=lambda face: (face.area, face.confidence), reverse=True)
    return faces


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"Expected an RGB uint8 array (H x W x 3), got {rgb.dtype} {rgb.shape}.")
    return np.ascontiguousarray(rgb)


def _stretch_contrast(grey: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile of grey levels onto 0..255 (near no-op when well exposed)."""
    low, high = np.percentile(grey, (1, 99))
    if high - low < 1.0:
        return grey
    stretched = (grey.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(stretched, 0, 255).astype(np.uint8)
