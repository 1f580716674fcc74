"""DTYPE=auto (faceapp/auto_dtype.py): the choice, its cache file, and where the choice shows.

No test here times anything: the trial's timer is injected (monkeypatched `best_ms`), and so
is the CPU's flag list, so the outcome is the same on every machine.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from faceapp import auto_dtype, create_app
from faceapp.face_models import models
from tests.conftest import ADMIN, jpeg_bytes

BF16_CPU = {"model": "Test CPU with bf16", "flags": ["avx512f", "avx512_bf16"], "arch": "x86_64"}
PLAIN_CPU = {"model": "Test CPU", "flags": ["avx2", "avx512f"], "arch": "x86_64"}


def fake_timer(float32_ms: float, bfloat16_ms: float, calls: list | None = None):
    """A timer that runs the call once (so embeddings are real) and reports fixed figures."""

    def time_call(dtype: str, call) -> float:
        call()
        if calls is not None:
            calls.append(dtype)
        return {"float32": float32_ms, "bfloat16": bfloat16_ms}[dtype]

    return time_call


def refuse_timer(dtype: str, call) -> float:
    raise AssertionError(f"DTYPE=auto measured {dtype} again instead of reading its cache")


@pytest.fixture
def auto_config(config):
    return {**config, "DTYPE": "auto"}


def loaded(app):
    with app.app_context():
        model = models.load(app)
    assert model is not None, app.extensions["faceapp.models"].error
    return model


def choice_files(models_dir: str) -> list[str]:
    folder = os.path.join(models_dir, auto_dtype.FOLDER)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".json"))


def test_auto_is_the_default():
    from faceapp.config import DEFAULTS

    assert DEFAULTS["DTYPE"] == "auto"


def test_decide_keeps_bfloat16_only_when_faster_and_close_to_float32():
    assert auto_dtype.decide(50.0, 20.0, 0.9999)[0] == "bfloat16"
    dtype, reason = auto_dtype.decide(20.0, 50.0, 0.9999)
    assert dtype == "float32" and "not faster" in reason
    dtype, reason = auto_dtype.decide(50.0, 20.0, 0.998)
    assert dtype == "float32" and "cosine 0.99800" in reason
    assert auto_dtype.decide(50.0, 20.0, auto_dtype.MIN_COSINE)[0] == "bfloat16"


def test_native_bf16_flags():
    flags = ["avx2", "amx_bf16", "avx512_bf16"]
    assert auto_dtype.native_bf16(flags) == ["amx_bf16", "avx512_bf16"]
    assert auto_dtype.native_bf16(["fp", "asimd", "bf16"]) == ["bf16"]  # Arm's Features line
    assert auto_dtype.native_bf16(PLAIN_CPU["flags"]) == []


def test_a_cpu_without_native_bf16_gets_float32_unmeasured_and_uncached(auto_config, monkeypatch):
    monkeypatch.setattr(auto_dtype, "cpu_facts", lambda: PLAIN_CPU)
    monkeypatch.setattr(auto_dtype, "best_ms", refuse_timer)
    model = loaded(create_app(auto_config))
    assert model.dtype == torch.float32 and model.describe()["dtype"] == "float32"
    assert "no native bfloat16" in model.dtype_choice.reason
    assert choice_files(auto_config["MODELS_DIR"]) == []


def test_bfloat16_is_kept_when_faster_cached_by_content_and_shown(
    auto_config, monkeypatch, astronaut
):
    calls: list[str] = []
    monkeypatch.setattr(auto_dtype, "cpu_facts", lambda: BF16_CPU)
    monkeypatch.setattr(auto_dtype, "best_ms", fake_timer(40.0, 16.0, calls))
    app = create_app(auto_config)
    model = loaded(app)
    assert calls == ["float32", "bfloat16"]
    assert model.dtype == torch.bfloat16 and model.model.dtype == torch.bfloat16
    assert model.dtype_choice.dtype == "bfloat16" and not model.dtype_choice.cached

    (path,) = choice_files(auto_config["MODELS_DIR"])
    assert os.path.basename(path).startswith(model.version + "-")
    # The weights come from one bfloat16 file per weights version, which workers map and share.
    copy = os.path.join(auto_config["MODELS_DIR"], ".bfloat16", model.version, "model.safetensors")
    assert os.path.isfile(copy) and os.path.getsize(copy) < os.path.getsize(
        os.path.join(auto_config["MODEL_NAME"], "model.safetensors")
    )
    with open(path, encoding="utf-8") as fh:
        document = json.load(fh)
    assert document["dtype"] == "bfloat16"
    assert document["float32_ms"] == 40.0 and document["bfloat16_ms"] == 16.0
    assert auto_dtype.MIN_COSINE <= document["cosine"] <= 1.0 + 1e-6
    assert "2.50x faster" in document["reason"]
    assert document["weights_version"] == model.version
    assert document["machine"]["model"] == BF16_CPU["model"]
    assert document["machine"]["flags"] == ["avx512_bf16"]
    assert document["machine"]["threads"] == auto_config["TORCH_THREADS"]

    client = app.test_client()
    ready = client.get("/api/ready").get_json()
    assert ready["model"]["dtype"] == "bfloat16"
    image_id = client.post(
        "/api/validate", data={"file": (_file(jpeg_bytes(astronaut)), "a.jpg")}
    ).get_json()["image_id"]
    answer = client.post("/api/analyze", json={"image_id": image_id}).get_json()
    assert answer["model"]["dtype"] == "bfloat16"

    # The next start reads the file: nothing is measured, the same dtype is used.
    monkeypatch.setattr(auto_dtype, "best_ms", refuse_timer)
    again = create_app(auto_config)
    model = loaded(again)
    assert model.dtype == torch.bfloat16 and model.dtype_choice.cached

    # Results are cached per dtype: a float32 worker on the same store computes its own.
    float32 = create_app({**auto_config, "DTYPE": "float32"}).test_client()
    other = float32.post("/api/analyze", json={"image_id": image_id}).get_json()
    assert other["model"]["dtype"] == "float32" and other["cached"] is False
    assert other["model"]["version"] != answer["model"]["version"]
    assert other["model"]["weights_version"] == answer["model"]["weights_version"]


def test_float32_is_kept_when_bfloat16_is_slower_and_the_weights_are_float32_again(
    auto_config, monkeypatch
):
    monkeypatch.setattr(auto_dtype, "cpu_facts", lambda: BF16_CPU)
    monkeypatch.setattr(auto_dtype, "best_ms", fake_timer(20.0, 30.0))
    model = loaded(create_app(auto_config))
    assert model.dtype == torch.float32 and model.model.dtype == torch.float32
    assert "not faster" in model.dtype_choice.reason
    (path,) = choice_files(auto_config["MODELS_DIR"])
    with open(path, encoding="utf-8") as fh:
        assert json.load(fh)["dtype"] == "float32"


def test_the_cache_is_per_machine_and_weights_version(auto_config, monkeypatch):
    monkeypatch.setattr(auto_dtype, "cpu_facts", lambda: BF16_CPU)
    monkeypatch.setattr(auto_dtype, "best_ms", fake_timer(40.0, 16.0))
    loaded(create_app(auto_config))
    other_cpu = {**BF16_CPU, "flags": [*BF16_CPU["flags"], "amx_bf16"]}
    monkeypatch.setattr(auto_dtype, "cpu_facts", lambda: other_cpu)
    monkeypatch.setattr(auto_dtype, "best_ms", fake_timer(20.0, 30.0))
    assert loaded(create_app(auto_config)).dtype == torch.float32  # measured again: float32
    loaded(create_app({**auto_config, "TORCH_THREADS": 2}))  # another thread count: measured
    assert len(choice_files(auto_config["MODELS_DIR"])) == 3


def test_an_unreadable_cache_file_is_measured_again(auto_config, monkeypatch):
    monkeypatch.setattr(auto_dtype, "cpu_facts", lambda: BF16_CPU)
    monkeypatch.setattr(auto_dtype, "best_ms", fake_timer(40.0, 16.0))
    loaded(create_app(auto_config))
    (path,) = choice_files(auto_config["MODELS_DIR"])
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"dtype": "int3"')
    calls: list[str] = []
    monkeypatch.setattr(auto_dtype, "best_ms", fake_timer(40.0, 16.0, calls))
    assert loaded(create_app(auto_config)).dtype == torch.bfloat16
    assert calls == ["float32", "bfloat16"]


def test_setup_and_ready_name_the_chosen_dtype(auto_config, monkeypatch):
    monkeypatch.setattr(auto_dtype, "cpu_facts", lambda: PLAIN_CPU)
    client = create_app(auto_config).test_client()
    setup = client.post("/api/setup", headers=ADMIN).get_json()
    assert setup["model"]["dtype"] == "float32"
    assert client.get("/api/ready").get_json()["model"]["dtype"] == "float32"


def _file(data: bytes):
    import io

    return io.BytesIO(data)
