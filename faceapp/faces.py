"""Face detection: find the faces in an image, as boxes (and landmarks) in its coordinates.

Two detectors share one small interface (:class:`FaceDetector`): YuNet, a small CNN with five
landmarks per face whose ONNX file ``flask --app wsgi models pull`` fetches (the default), and
OpenCV's frontal-face Haar cascade, which ships with ``opencv-python-headless<5`` and needs no
download (the fallback when YuNet cannot be had). YuNet runs on ONNX Runtime
(faceapp/yunet_onnx.py, 2.6x faster, the same faces) or on OpenCV's ``cv2.FaceDetectorYN``, as
``DETECTOR_RUNTIME`` says.
Detectors see a copy of the image scaled down to ``DETECT_MAX_SIDE`` (:func:`detect_faces`): cost
stays bounded and both detectors are tuned for faces tens to a few hundred pixels tall.

The detector is a Flask extension like the model: :func:`init_app` builds it (or the fallback,
saying why) and :func:`detector` hands it to requests. The crop CLIP sees of a face is
faceapp/face_geometry.py's ``aligned_crop``.

OpenCV's cascade and DNN objects are not documented as safe to share between threads, so each
detector keeps one native object per thread; an ONNX Runtime session is safe to share, so there
is one per detector.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import cv2
import numpy as np
from flask import Flask, current_app
from PIL import Image

from faceapp import model_files, yunet_onnx
from faceapp.errors import public_text
from faceapp.extension import Slot
from faceapp.face_geometry import head_pose

__all__ = ["FaceBox", "detect_faces", "detector", "describe", "init_app"]

log = logging.getLogger(__name__)

T = TypeVar("T")
EXTENSION_KEY = "faceapp.detector"
SLOT = Slot(EXTENSION_KEY, "faceapp.faces.init_app(app)")
Landmarks = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class FaceBox:
    """One detected face: its box in the coordinates of the image it was found in."""

    x: int
    y: int
    width: int
    height: int
    confidence: float  # 0..1; how each detector derives it is documented on the detector
    # YuNet's five points (faceapp/face_geometry.py gives their order); None from Haar.
    landmarks: Landmarks | None = None

    @property
    def area(self) -> int:
        return self.width * self.height

    def to_dict(self) -> dict[str, Any]:
        """The face as the API shows it: box and confidence, plus landmarks and a geometric pose
        when the detector gives landmarks."""
        face: dict[str, Any] = {
            "box": {"x": self.x, "y": self.y, "width": self.width, "height": self.height},
            "confidence": round(float(self.confidence), 4),
        }
        if self.landmarks:
            face["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in self.landmarks]
            face["pose"] = head_pose(self.landmarks)
        return face


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


#: Haar's cutoff (its docstring says how it was chosen).
HAAR_MIN_CONFIDENCE = 0.85
#: YuNet's score threshold, calibrated on real photos (docs/DETECTOR.md): false faces scored
#: 0.31..0.60, real faces 30 px or larger 0.86..0.95. OpenCV's demo uses 0.9, which loses
#: skimage's cameraman (0.87..0.90).
YUNET_SCORE_THRESHOLD = 0.75


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (scale 1.1, 5 neighbours, faces of 30 px and more).

    Before detection the grey image's 1st..99th percentile range is stretched to 0..255: on
    skimage's astronaut darkened to 10 % the plain cascade finds no face and the stretched one
    finds it, while on skimage's other photos it finds nothing new. Full histogram equalisation
    was rejected: it made a "face" of the moon.

    Confidence: ``detectMultiScale3(outputRejectLevels=True)`` gives, for each face, the sum of the
    cascade's last-stage weak classifiers (a boosting score, not a probability). It is squashed
    with a logistic: ``confidence = 1 / (1 + exp(-(weight - 1.5)))``, and faces below
    ``min_confidence`` are dropped. The default, :data:`HAAR_MIN_CONFIDENCE` (0.85, weight 3.2),
    was calibrated on real photos: the false faces Haar found on 65 real portraits (a window
    frame, a checked shirt, a tuxedo front) scored 0.53..0.64, their real faces 0.99..1.00;
    skimage's astronaut at 6 scales (faces 30..290 px) x 6 variants (blurred, darkened, flipped,
    turned 20 degrees) scored 0.895..0.999 wherever Haar found her, and 98 of skimage's 100 LFW
    faces scored 0.85 or more. What it cannot drop: three of the coin "faces" in skimage's
    ``coins`` score 0.88..0.93. The mapping orders faces sensibly; it is not calibrated.
    """

    name = "haar"
    cascade_file = "haarcascade_frontalface_default.xml"
    scale_factor = 1.1
    min_neighbors = 5
    min_size = 30
    confidence_centre = 1.5

    def __init__(
        self, cascade_path: str | None = None, min_confidence: float = HAAR_MIN_CONFIDENCE
    ) -> None:
        self.min_confidence = float(min_confidence)
        self.cascade_path = cascade_path or os.path.join(cv2.data.haarcascades, self.cascade_file)
        self._cascades = _PerThread(self._load_cascade)
        self._cascades.get()  # fail at start-up, not on the first request

    def _load_cascade(self) -> cv2.CascadeClassifier:
        try:
            cascade = cv2.CascadeClassifier(self.cascade_path)
        except (cv2.error, SystemError) as exc:  # a malformed file: cv2.error, as a SystemError
            raise ValueError(f"Haar cascade file {self.cascade_path!r} is not a cascade.") from exc
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
    """YuNet from an ONNX file, on ONNX Runtime or OpenCV (`runtime`: DETECTOR_RUNTIME's
    values; ``auto``, ONNX Runtime where it imports); confidence is YuNet's own face score."""

    name = "yunet"

    def __init__(
        self, model_path: str, score_threshold: float = YUNET_SCORE_THRESHOLD, runtime: str = "auto"
    ) -> None:
        self.model_path = os.fspath(model_path)
        self.score_threshold = float(score_threshold)
        if not os.path.isfile(self.model_path):
            raise ValueError(f"YuNet model file not found: {self.model_path!r}.")
        self.runtime = yunet_onnx.resolve_runtime(runtime)
        if self.runtime == "onnxruntime":
            # An unreadable file fails here, at start-up, in either runtime.
            self._session = yunet_onnx.OnnxYuNet(self.model_path, self.score_threshold)
        else:
            self._nets = _PerThread(self._load_net)
            self._nets.get()

    def _load_net(self) -> cv2.FaceDetectorYN:
        try:
            # The input size is a placeholder: detect() sets the real one for every image.
            return cv2.FaceDetectorYN.create(self.model_path, "", (320, 320), self.score_threshold)
        except cv2.error as exc:
            raise ValueError(
                f"YuNet model file {self.model_path!r} is not a readable YuNet ONNX model."
            ) from exc

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Find faces, with their five landmarks, in an RGB uint8 array."""
        bgr = cv2.cvtColor(_check_rgb(rgb), cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        if self.runtime == "onnxruntime":
            rows = self._session.detect(bgr)
        else:
            net = self._nets.get()
            net.setInputSize((width, height))
            _ok, rows = net.detect(bgr)
        # Each row: x, y, w, h, five landmark points (10 values), score.
        return [
            FaceBox(
                round(float(row[0])),
                round(float(row[1])),
                round(float(row[2])),
                round(float(row[3])),
                min(1.0, max(0.0, float(row[-1]))),
                tuple((float(row[i]), float(row[i + 1])) for i in range(4, 14, 2)),
            )
            for row in usable_rows(rows, width, height)
        ]


def usable_rows(rows: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """YuNet's rows that describe a face in a `width` x `height` input: every value finite, a box
    of at least 1 x 1 px, at most twice the input's size, whose centre lies in the input.

    On tiny inputs (a 5 x 5 or 12 x 12 image, in some processes, most often right after a photo
    of another size) YuNet returns rows of what look like uninitialised memory: infinite boxes
    (int() of them raised OverflowError, a 500), zero-width ones, or boxes 1e22 px away.
    """
    if rows is None:
        return np.empty((0, 15), dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 15)
    with np.errstate(invalid="ignore", over="ignore"):
        centre_x, centre_y = rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2
        keep = np.isfinite(rows).all(axis=1) & (rows[:, 2] >= 1) & (rows[:, 3] >= 1)
        keep &= (centre_x >= 0) & (centre_x <= width) & (centre_y >= 0) & (centre_y <= height)
        keep &= (rows[:, 2] <= 2 * width) & (rows[:, 3] <= 2 * height)  # a close-up: 1.3x
    return rows[keep]


# --------------------------------------------------------------------------------------------
# The Flask extension: which detector this app uses, and why
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveDetector:
    """The detector an app uses and how answers describe it (name, version, any fallback)."""

    detector: FaceDetector
    info: dict[str, Any]


@dataclass
class _DetectorState:
    config: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: ActiveDetector | None = None
    pull: threading.Thread | None = None  # the background pull of a missing YuNet, once started
    pull_error: str | None = None  # why it failed


DETECTOR_KEYS = (
    "DETECTOR",
    "DETECTOR_MODEL",
    "DETECTOR_RUNTIME",
    "DETECTOR_AUTO_PULL",
    "DETECTOR_URL",
    "DETECTOR_SHA256",
    "DETECTOR_PULL_DEADLINE",
    "YUNET_SCORE_THRESHOLD",
    "HAAR_MIN_CONFIDENCE",
    "DETECT_MAX_SIDE",
    "MODELS_DIR",
    "MODEL_AUTO_PULL",
)


def init_app(app: Flask) -> None:
    """Register the detector (an unknown DETECTOR already failed the start: faceapp/config.py).

    The detector is built on first use, like the CLIP model is loaded, in the process that
    serves, not in every `flask` command. A missing YuNet (with auto-pull on) is pulled on a
    background thread: requests never wait for a download, and Haar stands in until the file is
    there (:func:`describe` says so). When YuNet cannot be had, Haar is used and says why.
    """
    config = {key: app.config.get(key) for key in DETECTOR_KEYS}
    SLOT.register(app, _DetectorState(config=config))
    # Pages show a banner when the detector is a fallback (templates/tester/base.html).
    app.context_processor(lambda: {"detector_info": public_describe()})


def _active() -> ActiveDetector:
    state: _DetectorState = SLOT.get()
    active = state.active
    if active is None:
        with state.lock:
            if state.active is None:
                state.active = _build(state)
                log.info("face detector: %s", state.active.info)
            active = state.active
    return active


def _build(state: _DetectorState) -> ActiveDetector:
    """The detector to use now: while a missing YuNet is pulled (or after the pull failed),
    Haar standing in for it; else :func:`build_detector`. Called under the state's lock."""
    config = state.config
    if not _pull_needed(config):
        return build_detector(config)
    if state.pull is None:
        state.pull = threading.Thread(
            target=_pull_in_background, args=(state,), name="faceapp-detector-pull", daemon=True
        )
        state.pull.start()
    if state.pull_error is not None:
        reason = (
            f"{state.pull_error}; run `flask --app wsgi models pull yunet` where the network is "
            "reachable, or set FACEAPP_DETECTOR_MODEL to a YuNet ONNX file"
        )
        log.error("YuNet is not available (%s); falling back to OpenCV's Haar cascade", reason)
    else:
        reason = "the YuNet model is being pulled in the background; Haar stands in until then"
    return _haar(config, fallback={"from": "yunet", "reason": reason})


def _pull_needed(config: Mapping[str, Any]) -> bool:
    """Whether YuNet is wanted from the models folder, is not there, and may be pulled."""
    if config.get("DETECTOR", "yunet") != "yunet" or config.get("DETECTOR_MODEL"):
        return False
    if not _auto_pull(config):
        return False
    return not os.path.isfile(model_files.detector_path(config["MODELS_DIR"]))


def _pull_in_background(state: _DetectorState) -> None:
    """Pull YuNet into the models folder; then the next request builds the detector again."""
    config = state.config
    models_dir = config["MODELS_DIR"]
    source = model_files.detector_source(config)
    log.info("the YuNet face detector is not in %s; pulling it in the background", models_dir)
    error = None
    try:
        model_files.pull_file(
            source["url"],
            source["sha256"],
            models_dir,
            size=source["size"],
            progress=False,
            deadline=float(config.get("DETECTOR_PULL_DEADLINE") or 120.0),
        )
    except (model_files.DownloadError, OSError) as exc:
        error = str(exc)
    except Exception as exc:  # no request sees this thread: the fallback's reason must say it
        log.exception("the background pull of YuNet failed")
        error = f"the pull failed: {type(exc).__name__}"
    with state.lock:
        state.pull_error = error
        state.active = None  # rebuilt on the next request: YuNet now, or Haar saying why not


def wait_for_pull(timeout: float | None = None) -> bool:
    """Wait for this app's background pull of YuNet, if one runs; True when none is left."""
    state: _DetectorState = SLOT.get()
    pull = state.pull
    if pull is not None:
        pull.join(timeout)
        return not pull.is_alive()
    return True


def prepare(app: Flask) -> None:
    """Build the app's detector now (a worker just started): a missing YuNet starts pulling in
    the background at once, instead of on the first request."""
    with app.app_context():
        _active()


def detector() -> FaceDetector:
    """This app's face detector (RuntimeError before :func:`init_app`)."""
    return _active().detector


def describe() -> dict[str, Any]:
    """The detector as answers show it: name, version, score threshold, the runtime it runs on,
    and ``fallback`` (from which detector, and why) when YuNet was configured but could not be
    used."""
    return dict(_active().info)


def public_describe(info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`describe` (or a stored copy of it) as this request's caller may see it: a
    fallback's reason names server paths (the YuNet file, MODELS_DIR) only to admins."""
    info = dict(describe() if info is None else info)
    fallback = info.get("fallback")
    if isinstance(fallback, Mapping) and isinstance(fallback.get("reason"), str):
        info["fallback"] = {**fallback, "reason": public_text(fallback["reason"])}
    return info


def trace_fields(info: Mapping[str, Any]) -> dict[str, str]:
    """The detector in a trace event: name and version, and which detector it stands in for."""
    fields = {"detector": info["name"], "detector_version": info["version"]}
    if "fallback" in info:
        fields["detector_fallback_from"] = info["fallback"]["from"]
    return fields


def same_detector(meta: Mapping[str, Any], info: Mapping[str, Any]) -> bool:
    """Whether a stored validation was made by the detector `info` describes (same version)."""
    stored = meta.get("detector")
    return isinstance(stored, Mapping) and stored.get("version") == info["version"]


def detect(image: Image.Image, reduced: Image.Image | None = None) -> list[FaceBox]:
    """The faces in `image` by this app's detector on a DETECT_MAX_SIDE copy, largest first
    (the copy made from `reduced`, a smaller copy of `image`, when there is one)."""
    max_side = int(current_app.config["DETECT_MAX_SIDE"])
    return detect_faces(detector(), image, max_side, reduced)


def build_detector(config: Mapping[str, Any]) -> ActiveDetector:
    """The detector DETECTOR names (``yunet`` or ``haar``, as faceapp/config.py checked it);
    Haar when YuNet's file is missing or does not load. It never downloads: pulls run in the
    background (:func:`init_app`)."""
    if config.get("DETECTOR", "yunet") == "haar":
        return _haar(config)
    try:
        return _yunet(config)
    except (ValueError, OSError) as exc:
        reason = str(exc)
        log.error("YuNet is not available (%s); falling back to OpenCV's Haar cascade", reason)
        return _haar(config, fallback={"from": "yunet", "reason": reason})


def _yunet(config: Mapping[str, Any]) -> ActiveDetector:
    path = config.get("DETECTOR_MODEL")
    if not path:
        models_dir = config["MODELS_DIR"]
        path = model_files.detector_path(models_dir)
        if not os.path.isfile(path):
            raise ValueError(
                f"the YuNet model is not in the models folder ({path}); run "
                "`flask --app wsgi models pull` where the network is reachable, or set "
                "FACEAPP_DETECTOR_MODEL to a YuNet ONNX file"
            )
    elif not os.path.isfile(path):
        raise ValueError(f"FACEAPP_DETECTOR_MODEL {path!r} is not a file")
    model_files.check_against_manifest(path)
    threshold = float(config.get("YUNET_SCORE_THRESHOLD") or YUNET_SCORE_THRESHOLD)
    found = YuNetFaceDetector(path, threshold, config.get("DETECTOR_RUNTIME") or "auto")
    # The runtime is not part of the version: both give the same faces (tests/test_yunet_onnx.py).
    version = _version("yunet", model_files.sha256_file(path), threshold, config)
    info = {"name": "yunet", "version": version, "score_threshold": threshold}
    return ActiveDetector(found, {**info, "runtime": found.runtime})


def _haar(config: Mapping[str, Any], fallback: dict | None = None) -> ActiveDetector:
    threshold = float(config.get("HAAR_MIN_CONFIDENCE") or HAAR_MIN_CONFIDENCE)
    found = HaarFaceDetector(min_confidence=threshold)
    version = _version("haar", model_files.sha256_file(found.cascade_path), threshold, config)
    info: dict[str, Any] = {
        "name": "haar",
        "version": version,
        "score_threshold": threshold,
        "runtime": "opencv",
    }
    if fallback:
        info["fallback"] = fallback
    return ActiveDetector(found, info)


def _auto_pull(config: Mapping[str, Any]) -> bool:
    value = config.get("DETECTOR_AUTO_PULL")
    return bool(config.get("MODEL_AUTO_PULL") if value is None else value)


def _version(name: str, file_sha256: str, threshold: float, config: Mapping[str, Any]) -> str:
    """12 hex characters that change with the detector, its weights, threshold or input size."""
    max_side = config.get("DETECT_MAX_SIDE", 640)
    return hashlib.sha256(f"{name}:{file_sha256}:{threshold}:{max_side}".encode()).hexdigest()[:12]


def detect_faces(
    detector: FaceDetector, image: Image.Image, max_side: int, reduced: Image.Image | None = None
) -> list[FaceBox]:
    """Run the detector on a copy downscaled to max_side, map boxes back to `image` coordinates
    (clipped), largest first.

    `reduced` is a smaller copy of `image` (validate's preview): the detector's copy is made
    from it, which is cheaper than from the full image (a 2000 px image's preview is 1000 px);
    when it is still smaller than max_side, `image` itself is used, as the detector must see
    max_side pixels.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, not {max_side!r}.")
    width, height = image.size
    if reduced is not None and max(reduced.size) >= min(max_side, max(width, height)):
        image = reduced
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = min(1.0, max_side / max(rgb.size))
    if scale < 1.0:
        small_size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        # reducing_gap 1: a box reduction by the largest whole factor first (area averaging,
        # cheap), then bilinear for the last step of less than 2x. A 2000 px image costs 6 ms
        # this way, 14 ms with a plain bilinear filter, for the same faces.
        rgb = rgb.resize(small_size, Image.Resampling.BILINEAR, reducing_gap=1.0)
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
            landmarks = None
            if face.landmarks:
                landmarks = tuple((x * sx, y * sy) for x, y in face.landmarks)
            faces.append(FaceBox(left, top, right - left, bottom - top, face.confidence, landmarks))
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
