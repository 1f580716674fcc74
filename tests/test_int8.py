"""DTYPE=int8: the image encoder through ONNX Runtime, exported once per weights version."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from faceapp import create_app, onnx_int8
from faceapp.face_models import models


def _embedding(app, image_id: str) -> tuple[dict, np.ndarray]:
    body = {"image_id": image_id, "include_embedding": True}
    answer = app.test_client().post("/api/analyze", json=body)
    assert answer.status_code == 200, answer.get_json()
    document = answer.get_json()
    return document, np.asarray(document["faces"][0]["embedding"])


def test_int8_scores_like_float32_and_exports_once(config, astronaut_jpeg):
    float32 = create_app(config)
    int8 = create_app({**config, "DTYPE": "int8"})
    answer = float32.test_client().post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    )
    image_id = answer.get_json()["image_id"]

    reference, expected = _embedding(float32, image_id)
    quantized, got = _embedding(int8, image_id)
    assert quantized["model"]["dtype"] == "int8" and reference["model"]["dtype"] == "float32"
    # Same store, different runtime: int8 never answers from float32's cached result.
    assert quantized["cached"] is False
    assert quantized["model"]["version"] != reference["model"]["version"]
    cosine = float(expected @ got / np.linalg.norm(expected) / np.linalg.norm(got))
    assert cosine > 0.995

    with int8.app_context():
        model = models.get()
        folder = onnx_int8.export_folder(config["MODELS_DIR"], model.version)
    manifest = onnx_int8.read_export_manifest(folder)
    assert manifest["weights_version"] == model.version and manifest["opset"] == 17
    exported = os.path.join(folder, manifest["image_encoder"])
    first_export = os.stat(exported).st_mtime_ns
    again = create_app({**config, "DTYPE": "int8"})
    with again.app_context():
        assert models.get().image_session.path == exported
    assert os.stat(exported).st_mtime_ns == first_export  # opened, not exported again


def test_int8_on_a_gpu_device_is_refused_with_the_reason(config):
    from faceapp.face_models import choose_dtype

    with pytest.raises(RuntimeError, match="DEVICE=cpu"):
        choose_dtype("int8", "cuda")
