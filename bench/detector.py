"""``python -m bench.detector MODEL.onnx [--repeats N]``: YuNet against Haar on 640 px copies.

The two detectors run interleaved (A/B/A/B...) on the same 640 px copies of scikit-image's
photos, as faceapp's detection step sees them, with one OpenCV thread. It prints each side's
fastest and median time and the ratio; on a shared machine the ratio and the fastest times mean
more than the medians (docs/DETECTOR.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from bench.timing import Comparison, interleaved

DETECT_SIDE = 640


def photos_at_640() -> list[np.ndarray]:
    """skimage photos with and without people, enlarged then scaled to a 640 px longer side."""
    from skimage import data

    arrays = []
    for name, size in (("astronaut", 1280), ("camera", 1280), ("coffee", 1200), ("chelsea", 900)):
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        photo = photo.resize((size, round(size * photo.height / photo.width)))
        scale = DETECT_SIDE / max(photo.size)
        small = photo.resize((round(photo.width * scale), round(photo.height * scale)))
        arrays.append(np.asarray(small))
    return arrays


def compare(model: str, repeats: int) -> Comparison:
    """Time both detectors over every photo, interleaved."""
    import cv2

    from faceapp.faces import HaarFaceDetector, YuNetFaceDetector

    cv2.setNumThreads(1)
    yunet, haar = YuNetFaceDetector(model), HaarFaceDetector()
    arrays = photos_at_640()
    haar_ms, yunet_ms = [], []
    for array in arrays:
        a, b = interleaved(
            lambda array=array: haar.detect(array), lambda array=array: yunet.detect(array), repeats
        )
        haar_ms += a
        yunet_ms += b
    return Comparison(
        key="detector",
        title="face detection on a 640 px copy",
        a_label="haar",
        b_label="yunet",
        a_samples=haar_ms,
        b_samples=yunet_ms,
        meaning="how many times faster YuNet is than Haar",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a YuNet ONNX file")
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args(argv)
    result = compare(args.model, args.repeats)
    for label, samples in (("yunet", result.b_samples), ("haar", result.a_samples)):
        median = sorted(samples)[len(samples) // 2]
        print(f"{label:6} fastest {min(samples):7.1f} ms   median {median:7.1f} ms")
    print(f"haar / yunet: median ratio {result.ratio:.2f}, fastest ratio {result.best_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
