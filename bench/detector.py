"""``python -m bench.detector MODEL.onnx [--repeats N]``: YuNet against Haar, and YuNet's two
runtimes against each other, on 640 px copies.

Each pair runs interleaved (A/B/A/B...) on the same 640 px copies of scikit-image's photos, as
faceapp's detection step sees them, with one OpenCV thread (ONNX Runtime's session has one
intra-op thread of its own). It prints each side's fastest and median time and the ratio; on a
shared machine the ratio and the fastest times mean more than the medians (docs/DETECTOR.md).
The runtimes must find the same faces (boxes and landmarks within 1 px, scores within 0.001),
or the comparison stops.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bench.timing import Comparison, interleaved

if TYPE_CHECKING:
    from faceapp.faces import FaceDetector

DETECT_SIDE = 640


def photos_at_640(group: bool = False) -> list[np.ndarray]:
    """skimage photos with and without people, enlarged then scaled to a 640 px longer side
    (and, with `group`, a 2 x 2 mosaic of the astronaut: four faces)."""
    from skimage import data

    from bench.photos import four_faces

    photos = []
    for name, size in (("astronaut", 1280), ("camera", 1280), ("coffee", 1200), ("chelsea", 900)):
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        photos.append(photo.resize((size, round(size * photo.height / photo.width))))
    if group:
        photos.append(four_faces(photos[0]))
    arrays = []
    for photo in photos:
        scale = DETECT_SIDE / max(photo.size)
        small = photo.resize((round(photo.width * scale), round(photo.height * scale)))
        arrays.append(np.asarray(small))
    return arrays


def time_detectors(
    a: FaceDetector,
    b: FaceDetector,
    arrays: list[np.ndarray],
    repeats: int,
    budget_s: float | None = None,
) -> tuple[list[float], list[float]]:
    """Milliseconds of detector `a` and `b`, interleaved photo by photo (`budget_s` per photo)."""
    a_ms: list[float] = []
    b_ms: list[float] = []
    for array in arrays:
        a_times, b_times = interleaved(
            lambda array=array: a.detect(array),
            lambda array=array: b.detect(array),
            repeats,
            budget_s=budget_s,
        )
        a_ms += a_times
        b_ms += b_times
    return a_ms, b_ms


def compare(model: str, repeats: int) -> Comparison:
    """Time both detectors over every photo, interleaved."""
    import cv2

    from faceapp.faces import HaarFaceDetector, YuNetFaceDetector

    cv2.setNumThreads(1)
    yunet, haar = YuNetFaceDetector(model), HaarFaceDetector()
    arrays = photos_at_640()
    haar_ms, yunet_ms = time_detectors(haar, yunet, arrays, repeats)
    return Comparison(
        key="detector",
        title="face detection on a 640 px copy",
        a_label="haar",
        b_label="yunet",
        a_samples=haar_ms,
        b_samples=yunet_ms,
        meaning="how many times faster YuNet is than Haar",
    )


def compare_runtimes(model: str, repeats: int, budget_s: float | None = None) -> Comparison:
    """Time YuNet on OpenCV (A) against ONNX Runtime (B) over every photo, interleaved, after
    checking that both find the same faces; `budget_s` bounds each photo's rounds."""
    import cv2

    from faceapp.faces import YuNetFaceDetector

    cv2.setNumThreads(1)
    opencv = YuNetFaceDetector(model, runtime="opencv")
    onnx = YuNetFaceDetector(model, runtime="onnxruntime")
    arrays = photos_at_640(group=True)
    faces = 0
    for index, array in enumerate(arrays):
        found = same_faces(onnx.detect(array), opencv.detect(array))
        if found is None:
            raise RuntimeError(f"the runtimes found different faces in photo {index}")
        faces += found
    opencv_ms, onnx_ms = time_detectors(opencv, onnx, arrays, repeats, budget_s)
    return Comparison(
        key="detector_runtime",
        title="YuNet runtime, 640 px copy",
        a_label="opencv",
        b_label="onnxruntime",
        a_samples=opencv_ms,
        b_samples=onnx_ms,
        meaning="how many times faster YuNet runs on ONNX Runtime than on OpenCV's DNN module, "
        "one thread each, with the same faces found",
        sanity={"photos": len(arrays), "faces": faces, "same_faces": True},
    )


def same_faces(found: list, expected: list) -> int | None:
    """How many faces both lists hold, when they are the same faces (boxes and landmarks within
    1 px, scores within 0.001, in the same order); None when they are not."""
    if len(found) != len(expected):
        return None
    for face, other in zip(found, expected, strict=True):
        box = np.array([face.x, face.y, face.width, face.height], dtype=np.float64)
        other_box = np.array([other.x, other.y, other.width, other.height], dtype=np.float64)
        points = np.array(face.landmarks or ()) - np.array(other.landmarks or ())
        if np.abs(box - other_box).max() > 1 or (points.size and np.abs(points).max() > 1):
            return None
        if abs(face.confidence - other.confidence) > 1e-3:
            return None
    return len(found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a YuNet ONNX file")
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args(argv)
    for result in (compare(args.model, args.repeats), compare_runtimes(args.model, args.repeats)):
        print(result.title)
        for label, samples in (
            (result.b_label, result.b_samples),
            (result.a_label, result.a_samples),
        ):
            median = sorted(samples)[len(samples) // 2]
            print(f"  {label:11} fastest {min(samples):7.1f} ms   median {median:7.1f} ms")
        print(
            f"  {result.a_label} / {result.b_label}: median ratio {result.ratio:.2f}, "
            f"fastest ratio {result.best_ratio:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
