"""YuNet on ONNX Runtime finds what cv2.FaceDetectorYN finds, on real photographs and odd sizes;
DETECTOR_RUNTIME chooses the runtime, and answers say which one runs."""

from __future__ import annotations

import io
import logging
import sys
import threading

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

from faceapp import create_app, faces, yunet_onnx
from faceapp.config import SettingError
from faceapp.faces import YuNetFaceDetector
from tests.test_yunet import lfw_mosaic


@pytest.fixture(scope="module")
def runtimes(yunet_model):
    """The same YuNet file on both runtimes, at the default threshold and at a low one (many
    overlapping candidates: NMS has work to do)."""
    return {
        threshold: (
            YuNetFaceDetector(yunet_model, threshold, runtime="onnxruntime"),
            YuNetFaceDetector(yunet_model, threshold, runtime="opencv"),
        )
        for threshold in (0.75, 0.3)
    }


def group(astronaut: Image.Image) -> Image.Image:
    """Five real faces of four sizes on one canvas: as taken, mirrored, darker, more contrast."""
    canvas = Image.new("RGB", (1400, 900), (70, 80, 90))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(ImageOps.mirror(astronaut).resize((300, 300)), (560, 40))
    canvas.paste(ImageEnhance.Brightness(astronaut).enhance(0.7).resize((200, 200)), (900, 60))
    canvas.paste(ImageEnhance.Contrast(astronaut).enhance(1.3).resize((380, 380)), (560, 420))
    canvas.paste(astronaut.resize((150, 150)), (1100, 600))
    return canvas


def photos() -> dict[str, Image.Image]:
    astronaut = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(20)
    noise = {
        f"noise {w}x{h}": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in ((5, 5), (33, 47), (1, 2000), (2000, 1), (97, 31))
    }
    return {
        "astronaut": astronaut,
        "astronaut 333 px": astronaut.resize((333, 333)),
        "astronaut 640x480": astronaut.resize((640, 640)).crop((0, 0, 640, 480)),
        "camera": Image.fromarray(data.camera()).convert("RGB"),
        "lfw faces": lfw_mosaic(data.lfw_subset()[:40]),
        "group": group(astronaut),
        "astronaut 33x47": astronaut.resize((33, 47)),
        "astronaut 1x2000": astronaut.resize((1, 2000)),
        **noise,
    }


PHOTOS = photos()


def assert_same_faces(found: list, expected: list) -> None:
    assert len(found) == len(expected)
    for face, other in zip(found, expected, strict=True):
        box = np.array([face.x, face.y, face.width, face.height])
        other_box = np.array([other.x, other.y, other.width, other.height])
        assert np.abs(box - other_box).max() <= 1
        assert np.abs(np.array(face.landmarks) - np.array(other.landmarks)).max() <= 1
        assert face.confidence == pytest.approx(other.confidence, abs=1e-3)


@pytest.mark.parametrize("name", list(PHOTOS))
@pytest.mark.parametrize("threshold", [0.75, 0.3])
def test_onnxruntime_finds_the_faces_opencv_finds(runtimes, name, threshold):
    ort, opencv = runtimes[threshold]
    assert (ort.runtime, opencv.runtime) == ("onnxruntime", "opencv")
    rgb = np.asarray(PHOTOS[name])
    assert_same_faces(ort.detect(rgb), opencv.detect(rgb))


def test_the_photos_have_the_faces_they_should(runtimes):
    # So the comparison above compares faces, not empty lists.
    ort, _opencv = runtimes[0.75]
    counts = {name: len(ort.detect(np.asarray(PHOTOS[name]))) for name in PHOTOS}
    assert counts["astronaut"] == counts["camera"] == counts["astronaut 640x480"] == 1
    assert counts["group"] == 5
    assert counts["lfw faces"] >= 36
    low, _opencv = runtimes[0.3]
    rows = low._session.detect(np.asarray(PHOTOS["group"])[..., ::-1].copy())
    assert len(rows) >= 5


def test_raw_rows_match_opencv_to_float_precision(yunet_model):
    import cv2

    bgr = np.ascontiguousarray(np.asarray(PHOTOS["group"])[..., ::-1])
    net = cv2.FaceDetectorYN.create(yunet_model, "", (bgr.shape[1], bgr.shape[0]), 0.3)
    _ok, expected = net.detect(bgr)
    rows = yunet_onnx.OnnxYuNet(yunet_model, 0.3).detect(bgr)
    assert rows.dtype == np.float32 and rows.shape == expected.shape
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-3)


def rows_at(*boxes) -> np.ndarray:
    """FaceDetectorYN rows for (x, y, w, h, score) boxes, landmarks all zero."""
    rows = np.zeros((len(boxes), 15), dtype=np.float32)
    for row, (x, y, w, h, score) in zip(rows, boxes, strict=True):
        row[[0, 1, 2, 3, 14]] = x, y, w, h, score
    return rows


def test_suppression_is_opencvs():
    threshold = np.float32(0.5)
    # IoU with the 0.9 box: 0.351 (over 0.3: dropped), 0.25 (kept), and 0.2995 as floats but
    # 0.307 once OpenCV truncates the box to whole pixels (dropped).
    rows = rows_at(
        (0, 0, 100, 100, 0.9),
        (48, 0, 100, 100, 0.8),
        (60, 0, 100, 100, 0.7),
        (53.9, 0, 100, 100, 0.85),
        (0, 300, 50, 50, 0.95),
    )
    kept = yunet_onnx.suppress(rows, threshold)
    assert kept[:, 14].tolist() == pytest.approx([0.95, 0.9, 0.7])  # best first
    # NMS keeps only scores strictly above the threshold; a lone candidate is kept as it is.
    at = rows_at((0, 0, 10, 10, 0.5), (100, 100, 10, 10, 0.5))
    assert len(yunet_onnx.suppress(at, threshold)) == 0
    assert len(yunet_onnx.suppress(at[:1], threshold)) == 1


def test_one_session_serves_many_threads(yunet_model):
    detector = YuNetFaceDetector(yunet_model, runtime="onnxruntime")
    inputs = [np.asarray(PHOTOS[name]) for name in ("astronaut", "group", "camera", "lfw faces")]
    expected = [detector.detect(rgb) for rgb in inputs]
    seen: list[bool] = []

    def work(offset: int) -> None:
        for step in range(8):
            index = (offset + step) % len(inputs)
            seen.append(detector.detect(inputs[index]) == expected[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 32 and all(seen)


def test_the_session_runs_on_the_calling_thread_without_spinning(yunet_model):
    session = yunet_onnx.OnnxYuNet(yunet_model, 0.75).session
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_file_that_is_not_yunet_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "not-yunet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ValueError, match="not a YuNet"):
        YuNetFaceDetector(str(path), runtime="onnxruntime")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable YuNet ONNX model"):
        YuNetFaceDetector(str(tmp_path / "junk.onnx"), runtime="onnxruntime")


# -- DETECTOR_RUNTIME ---------------------------------------------------------------------------


@pytest.fixture
def yunet_config(config, yunet_model) -> dict:
    return dict(config, DETECTOR="yunet", DETECTOR_MODEL=yunet_model)


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """A process where `import onnxruntime` fails (its answer is cached: cleared around)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    yunet_onnx.onnxruntime_missing.cache_clear()
    yield
    yunet_onnx.onnxruntime_missing.cache_clear()


def detector_info(config: dict) -> dict:
    app = create_app(config)
    with app.app_context():
        return faces.describe()


@pytest.mark.parametrize(
    ("setting", "runtime"), [(None, "onnxruntime"), ("auto", "onnxruntime"), ("OpenCV", "opencv")]
)
def test_the_runtime_is_chosen_and_shown(yunet_config, setting, runtime, astronaut_jpeg):
    if setting is not None:
        yunet_config["DETECTOR_RUNTIME"] = setting
    app = create_app(yunet_config)
    with app.app_context():
        assert faces.detector().runtime == runtime
    body = app.test_client().post(
        "/api/validate",
        query_string={"details": 1},
        data={"file": (io.BytesIO(astronaut_jpeg), "photo.jpg")},
    )
    detector = body.get_json()["details"]["detector"]
    assert detector["name"] == "yunet" and detector["runtime"] == runtime


def test_the_version_does_not_depend_on_the_runtime(yunet_config):
    versions = {
        detector_info(dict(yunet_config, DETECTOR_RUNTIME=runtime))["version"]
        for runtime in ("onnxruntime", "opencv")
    }
    assert len(versions) == 1


def test_an_unknown_runtime_fails_the_start(yunet_config):
    with pytest.raises(SettingError, match="DETECTOR_RUNTIME"):
        create_app(dict(yunet_config, DETECTOR_RUNTIME="tensorrt"))


def test_auto_without_onnxruntime_runs_on_opencv_and_says_why_once(
    yunet_config, no_onnxruntime, caplog
):
    with caplog.at_level(logging.WARNING, logger="faceapp.yunet_onnx"):
        first = detector_info(yunet_config)
        second = detector_info(yunet_config)
    assert first["runtime"] == second["runtime"] == "opencv"
    assert "fallback" not in first
    (record,) = [r for r in caplog.records if r.name == "faceapp.yunet_onnx"]
    assert "onnxruntime does not import" in record.getMessage()


def test_onnxruntime_asked_for_but_missing_falls_back_to_haar_saying_why(
    yunet_config, no_onnxruntime
):
    info = detector_info(dict(yunet_config, DETECTOR_RUNTIME="onnxruntime"))
    assert info["name"] == "haar" and info["runtime"] == "opencv"
    assert info["fallback"]["from"] == "yunet"
    assert "DETECTOR_RUNTIME is onnxruntime" in info["fallback"]["reason"]
