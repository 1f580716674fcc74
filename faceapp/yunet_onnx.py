"""YuNet on ONNX Runtime, with ``cv2.FaceDetectorYN``'s pre- and post-processing reproduced.

Why: the same ONNX file runs 2.6x faster in ONNX Runtime on one thread than in OpenCV's DNN
module (2-core AMD EPYC, 640 x 480: 7.1 ms against 18.7 ms, median), and detection is about a
third of ``flask batch``'s CPU per photo (issues #17, #20). docs/DETECTOR.md has the figures.

What OpenCV does, and so what this does (OpenCV 4.x, ``modules/objdetect/src/face_detect.cpp``
and ``modules/dnn/src/nms.inl.hpp``):

- the BGR image is padded at the bottom and right with zeros to multiples of 32 and fed as
  float32 NCHW, 0..255 (``blobFromImage`` without scaling, mean or channel swap);
- for each stride s in 8, 16, 32 the outputs ``cls_s``, ``obj_s``, ``bbox_s``, ``kps_s`` hold one
  anchor per cell of a (padH / s) x (padW / s) grid, row by row; the score is
  ``sqrt(clip(cls, 0, 1) * clip(obj, 0, 1))`` and an anchor is kept when score >= the threshold;
- its box: centre ``((c + bbox0) * s, (r + bbox1) * s)``, size ``exp(bbox2) * s`` x
  ``exp(bbox3) * s``; its landmarks ``((kps_x + c) * s, (kps_y + r) * s)``;
- with more than one candidate, ``cv2.dnn.NMSBoxes`` on the boxes truncated to int (IoU 0.3,
  scores strictly above the threshold, at most 5000), best first; a lone candidate is kept as is.

All in float32, as OpenCV computes it, vectorised over the anchors. Rows come out as
FaceDetectorYN's: x, y, w, h, five landmark points, score.

ONNX Runtime's ``InferenceSession.run`` may be called from several threads at once (its
documented guarantee; microsoft/onnxruntime #19301 relies on it), so one session serves every
thread of a worker. It runs on the calling thread alone (one intra-op thread, no pool, no
spinning), so it never competes with torch's threads for the cores.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
DIVISOR = 32  # the padded input's sides are multiples of this
NMS_THRESHOLD = 0.3  # FaceDetectorYN.create's defaults
TOP_K = 5000
OUTPUTS = tuple(f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES)


@functools.cache
def onnxruntime_missing() -> str | None:
    """Why onnxruntime cannot be imported here, or None when it can (checked, and logged, once
    per process)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        reason = f"onnxruntime does not import ({exc})"
        log.warning("%s; YuNet runs on OpenCV's DNN module, about 2.6x slower", reason)
        return reason
    return None


def resolve_runtime(requested: str) -> str:
    """The runtime YuNet runs on for DETECTOR_RUNTIME `requested`: ``onnxruntime`` or
    ``opencv``. ValueError when ``onnxruntime`` is asked for and does not import."""
    if requested == "opencv":
        return "opencv"
    missing = onnxruntime_missing()
    if missing is None:
        return "onnxruntime"
    if requested == "onnxruntime":
        raise ValueError(f"DETECTOR_RUNTIME is onnxruntime, but {missing}")
    return "opencv"


def session_options() -> Any:
    """One intra-op thread (the caller's), sequential, no spinning; all graph optimisations
    (ORT_ENABLE_ALL measured no slower than EXTENDED: docs/DETECTOR.md)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxYuNet:
    """YuNet's ONNX graph in one ONNX Runtime session; :meth:`detect` answers as
    ``cv2.FaceDetectorYN.detect`` does, for an input of any size."""

    def __init__(self, model_path: str, score_threshold: float) -> None:
        import onnxruntime

        self.score_threshold = np.float32(score_threshold)
        try:
            self.session = onnxruntime.InferenceSession(
                model_path, sess_options=session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT's load errors share no base below Exception
            raise ValueError(
                f"YuNet model file {model_path!r} is not a readable YuNet ONNX model "
                f"(ONNX Runtime: {exc})."
            ) from exc
        inputs = [node.name for node in self.session.get_inputs()]
        outputs = {node.name for node in self.session.get_outputs()}
        if inputs != ["input"] or not outputs.issuperset(OUTPUTS):
            raise ValueError(
                f"YuNet model file {model_path!r} is not a YuNet 2023mar model: it takes "
                f"{inputs} and gives {sorted(outputs)}."
            )

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        """Faces in a BGR uint8 image: an N x 15 float32 array, best first."""
        height, width = bgr.shape[:2]
        pad_h, pad_w = _padded(height), _padded(width)
        blob = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
        blob[0, :, :height, :width] = bgr.transpose(2, 0, 1)
        found = self.session.run(OUTPUTS, {"input": blob})
        rows = decode(found, pad_w, pad_h, self.score_threshold)
        return suppress(rows, self.score_threshold)


def _padded(side: int) -> int:
    return ((side - 1) // DIVISOR + 1) * DIVISOR


def decode(outputs: list[np.ndarray], pad_w: int, pad_h: int, threshold: np.float32) -> np.ndarray:
    """The candidate faces (score >= `threshold`) of every stride, as FaceDetectorYN rows, in its
    order: stride 8, 16, 32, each row by row."""
    count = len(STRIDES)
    parts = []
    for index, stride in enumerate(STRIDES):
        cols = pad_w // stride
        cls, obj, bbox, kps = (outputs[index + count * k] for k in range(4))
        cls, obj = cls.reshape(-1), obj.reshape(-1)
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        keep = np.flatnonzero(score >= threshold)
        if keep.size == 0:
            continue
        r, c = np.divmod(keep, cols)
        r, c = r.astype(np.float32)[:, None], c.astype(np.float32)[:, None]
        step = np.float32(stride)
        box = bbox.reshape(-1, 4)[keep]
        centre = (np.hstack((c, r)) + box[:, :2]) * step
        size = np.exp(box[:, 2:]) * step
        points = kps.reshape(-1, 10)[keep].reshape(-1, 5, 2)
        points = ((points + np.stack((c, r), axis=2)) * step).reshape(-1, 10)
        top_left = centre - size / np.float32(2)
        parts.append(np.hstack((top_left, size, points, score[keep][:, None])))
    if not parts:
        return np.empty((0, 15), dtype=np.float32)
    return np.vstack(parts).astype(np.float32, copy=False)


def suppress(rows: np.ndarray, threshold: np.float32) -> np.ndarray:
    """OpenCV's non-maximum suppression of the candidates (more than one), best first."""
    if len(rows) <= 1:
        return rows
    with np.errstate(invalid="ignore"):
        boxes = rows[:, :4].astype(np.int32)  # truncated toward zero, as C++'s int() does
    kept = cv2.dnn.NMSBoxes(
        boxes, rows[:, 14].tolist(), float(threshold), NMS_THRESHOLD, 1.0, TOP_K
    )
    return rows[np.asarray(kept, dtype=np.intp).reshape(-1)]
