"""Validate over HTTP on real portraits, YuNet on OpenCV against YuNet on ONNX Runtime.

Issue #20 asks for a median validate of at most 50 ms over real portraits. Two gunicorns of one
worker each, as `make run` starts them, differ only in DETECTOR_RUNTIME: A runs YuNet on OpenCV
(what faceapp did before), B on ONNX Runtime (the default). Each round posts the same portrait
to both (validated afresh), cycling through bench/photos.py's portraits, so A and B see the same
photos and the same machine noise; p50 and p95 are over those requests. Both servers must find
the same faces in every portrait, or the section stops.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile

import requests

from bench import http
from bench.photos import portraits
from bench.timing import Comparison, interleaved


def validate(session: requests.Session, server: http.Server, name: str, data: bytes) -> dict:
    """POST /api/validate of one JPEG, validated afresh, with details; the answer."""
    answer = session.post(
        f"{server.url}/api/validate",
        params={"details": "1"},
        files={"file": (f"{name}.jpg", data, "image/jpeg")},
        data={"wipe_cache": "true"},
        timeout=120,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"validate of {name} answered {answer.status_code}: {answer.text[:300]}")
    return answer.json()


def same_faces(first: dict, second: dict) -> bool:
    """Whether two validate answers found the same faces: as many, boxes within one detector
    pixel (scaled to the stored image), confidences within 0.001."""
    faces, others = first["details"]["faces"], second["details"]["faces"]
    if len(faces) != len(others):
        return False
    side = max(first["details"]["width"], first["details"]["height"])
    slack = 1 + side / 640  # a pixel of the detector's 640 px copy, and rounding
    for face, other in zip(faces, others, strict=True):
        box, other_box = face["box"], other["box"]
        if any(abs(box[key] - other_box[key]) > slack for key in box):
            return False
        if abs(face["confidence"] - other["confidence"]) > 1e-3:
            return False
    return True


def bench_portraits(plan, opencv: http.Server, onnx: http.Server) -> Comparison:
    """Validate each portrait on both servers, interleaved; then check they found the same
    faces."""
    photos = portraits()
    turn = itertools.cycle(range(len(photos)))
    current = [0]
    with requests.Session() as session:

        def on_opencv() -> None:
            current[0] = next(turn)
            validate(session, opencv, *photos[current[0]])

        def on_onnx() -> None:
            validate(session, onnx, *photos[current[0]])

        passes = 1 if plan.repeats < 10 else 3
        a_ms, b_ms = interleaved(
            on_opencv, on_onnx, len(photos) * passes, plan.warmup, plan.budget_s
        )
        answers = [(validate(session, opencv, *p), validate(session, onnx, *p)) for p in photos]
    differ = [
        name for (name, _), pair in zip(photos, answers, strict=True) if not same_faces(*pair)
    ]
    if differ:
        raise RuntimeError(f"the two runtimes found different faces in {', '.join(differ)}")
    a_detector, b_detector = (answer["details"]["detector"] for answer in answers[0])
    return Comparison(
        "http_validate_portraits",
        "validate real portraits",
        "HTTP, YuNet opencv",
        "HTTP, YuNet onnxrt",
        a_ms,
        b_ms,
        "validating a real portrait over HTTP (1 worker each, validated afresh; 285 to 2000 px "
        "JPEGs of skimage's astronaut, cameraman and LFW faces) takes this many times longer "
        "with YuNet on OpenCV than on ONNX Runtime, the default "
        "(goal for B, issue #20: median <= 50 ms)",
        sanity={
            "portraits": len(photos),
            "faces": sum(len(pair[1]["details"]["faces"]) for pair in answers),
            "same_faces": True,
            "detector": b_detector["name"],
            "runtimes": [a_detector.get("runtime"), b_detector.get("runtime")],
        },
    )


def run_portraits(plan, folder: str) -> list[Comparison]:
    """The portraits section, on two servers started and stopped here."""
    scratch = tempfile.mkdtemp(prefix="faceapp-bench-portraits-")
    try:
        with (
            http.gunicorn(folder, scratch, 1, "onnx", settings={"DETECTOR_RUNTIME": "auto"}) as b,
            http.gunicorn(
                folder, scratch, 1, "opencv", settings={"DETECTOR_RUNTIME": "opencv"}
            ) as a,
        ):
            return [bench_portraits(plan, a, b)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
