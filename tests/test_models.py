"""faceapp/face_models.py: model folders, manifests, device/dtype, loading once, failing softly."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import torch
from PIL import Image

from faceapp import create_app, face_models, model_files, random_checkpoints
from faceapp.clip_vocab import default_bpe_file
from faceapp.face_models import ModelHolder
from tests.conftest import ADMIN


def test_random_checkpoint_has_a_manifest_with_file_hashes(tiny_model_dir):
    manifest = model_files.read_manifest(tiny_model_dir)
    assert manifest["random_weights"] is True
    names = {f["name"] for f in manifest["files"]}
    assert {"config.json", "model.safetensors"} <= names
    weights = next(f for f in manifest["files"] if f["name"] == "model.safetensors")
    assert weights["sha256"] == model_files.sha256_file(
        os.path.join(tiny_model_dir, "model.safetensors")
    )
    assert weights["size"] == os.path.getsize(os.path.join(tiny_model_dir, "model.safetensors"))


def test_version_changes_with_the_weights(tmp_path, tiny_model_dir):
    bpe = default_bpe_file()  # as conftest's `models random` used it
    other = random_checkpoints.write_random_checkpoint(str(tmp_path / "other"), "tiny", 1, bpe)
    same = random_checkpoints.write_random_checkpoint(str(tmp_path / "same"), "tiny", 0, bpe)
    version = model_files.weights_version(model_files.read_manifest(tiny_model_dir))
    assert len(version) == 12 and int(version, 16) >= 0
    assert model_files.weights_version(model_files.read_manifest(other)) != version
    assert model_files.weights_version(model_files.read_manifest(same)) == version


def test_models_list_shows_pulled_and_random_models(tmp_path, runner, app):
    folder = tmp_path / "models" / "random-a"
    result = runner.invoke(args=["models", "random", str(folder)])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(args=["models", "list"])
    assert "random-clip-tiny" in listing.output and "(random weights)" in listing.output


def test_models_pull_without_the_hub_fails_cleanly(runner):
    result = runner.invoke(args=["models", "pull", "openai/clip-vit-base-patch32"])
    assert result.exit_code != 0
    assert "could not pull openai/clip-vit-base-patch32" in result.output
    assert "Traceback" not in result.output


def test_loaded_model_encodes_unit_vectors(config):
    model = face_models.load_clip(config)
    from PIL import Image

    images = model.encode_images([Image.new("RGB", (40, 60), (200, 10, 10))] * 3)
    texts = model.encode_texts(["a smiling face", "a frowning face"])
    size = model.model.config.projection_dim
    assert images.shape == (3, size) and texts.shape == (2, size)
    assert torch.allclose(images.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model.describe()["random_weights"] is True and model.device == "cpu"


def test_bfloat16_loads_and_float16_falls_back_on_cpu(config):
    assert face_models.load_clip({**config, "DTYPE": "bfloat16"}).dtype == torch.bfloat16
    assert face_models.load_clip({**config, "DTYPE": "float16"}).dtype == torch.float32
    with pytest.raises(RuntimeError, match="DTYPE"):
        face_models.load_clip({**config, "DTYPE": "int3"})


def test_device_choice():
    assert face_models.choose_device("auto") in ("cpu", "cuda", "mps")
    assert face_models.choose_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="not one of"):
        face_models.choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            face_models.choose_device("cuda:0")


def test_torch_threads_divide_the_cores_among_workers(monkeypatch):
    monkeypatch.setattr(face_models, "available_cores", lambda: 8)
    assert face_models.torch_threads({"WORKERS": 2}) == 4
    assert face_models.torch_threads({"WORKERS": 16}) == 1
    assert face_models.torch_threads({"WORKERS": 2, "TORCH_THREADS": 3}) == 3
    # Several inference threads in a process share its cores' threads too (flask batch).
    assert face_models.torch_threads({"WORKERS": 1, "INFERENCE_THREADS": 8}) == 1
    assert face_models.torch_threads({"WORKERS": 2, "INFERENCE_THREADS": 2}) == 2
    assert face_models.torch_threads({"WORKERS": 1, "INFERENCE_THREADS": None}) == 8


def test_each_inference_thread_encodes_with_the_models_torch_threads(app, config):
    """Torch keeps its thread count per OS thread: every inference thread sets the model's
    before it encodes, whatever the thread that loaded the model or the caller has."""
    import torch

    from faceapp.engine import engine

    with app.app_context():
        model = face_models.models.get()
        assert model.threads >= 1
        inference = engine.get(app)
        torch.set_num_threads(model.threads + 1)  # this (the caller's) thread: another count
        try:
            pixels = model.prepare_images([Image.new("RGB", (40, 40), "grey")])

            def encode_and_count(items):
                model.encode_pixels(items)
                return [torch.get_num_threads()] * len(items)

            seen, _ = inference.encode(encode_and_count, pixels)
            assert seen == [model.threads]
            assert torch.get_num_threads() == model.threads + 1
        finally:
            torch.set_num_threads(model.threads)


def test_concurrent_first_requests_load_the_model_once(app, config):
    calls = []

    def slow_loader(cfg):
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return face_models.load_clip(cfg)

    holder = ModelHolder()
    app.extensions.pop(face_models.EXTENSION_KEY)  # this holder takes the app's own one's place
    holder.init_app(app, loader=slow_loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(holder.load(app))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len({id(model) for model in results}) == 1 and results[0] is not None


def test_a_forked_worker_does_not_reuse_its_parents_model(app):
    holder = ModelHolder()
    app.extensions.pop(face_models.EXTENSION_KEY)  # this holder takes the app's own one's place
    holder.init_app(app)
    parent = holder.load(app)
    assert parent is not None
    app.extensions[face_models.EXTENSION_KEY].pid = -1  # as seen from a forked child
    with app.app_context():
        assert holder.status() == "not_loaded"


def test_missing_model_keeps_the_service_up(config, astronaut_jpeg):
    app = create_app({**config, "MODEL_NAME": "openai/clip-vit-base-patch32"})
    client = app.test_client()
    assert client.get("/api/health").status_code == 200
    answer = client.post("/api/setup", headers=ADMIN)
    assert answer.status_code == 503
    error = answer.get_json()["error"]
    assert error["code"] == "model.not_ready"
    assert "models pull" in error["message"] and "FACEAPP_MODEL_NAME" in error["message"]
    ready = client.get("/api/ready")
    assert ready.status_code == 503 and ready.get_json()["error"]["code"] == "model.not_ready"
    assert "failed" in ready.get_json()["error"]["message"]
    assert set(ready.get_json()) == {"error"}  # the same envelope as every other error
    # Validation needs no model (RELIABILITY 22).
    import io

    answer = client.post("/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
    assert answer.status_code == 200


def test_corrupt_weights_are_reported_not_raised(config, tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    app = create_app({**config, "MODEL_NAME": str(broken)})
    answer = app.test_client().post("/api/setup", headers=ADMIN)
    assert answer.status_code == 503
    assert "could not be loaded" in answer.get_json()["error"]["message"]
    assert "Traceback" not in answer.get_data(as_text=True)


def test_setup_loads_warms_and_is_idempotent(client):
    assert client.get("/api/ready").status_code == 503
    first = client.post("/api/setup", headers=ADMIN)
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert body["ready"] is True and body["model"]["random_weights"] is True
    assert body["worker"]["pid"] == os.getpid() and body["warmup_ms"] > 0
    second = client.post("/api/setup", headers=ADMIN).get_json()
    assert second["model"] == body["model"] and second["load_ms"] == body["load_ms"]
    ready = client.get("/api/ready")
    # One description of the model in both answers, the detector included (Haar in tests).
    assert ready.status_code == 200 and ready.get_json()["model"] == body["model"]
    assert body["model"]["detector"]["name"] == "haar"


def test_setup_is_an_admin_operation(config):
    client = create_app({**config, "ADMIN_KEYS": ""}).test_client()
    assert client.post("/api/setup").get_json()["error"]["code"] == "auth.forbidden"
    client = create_app(config).test_client()
    assert client.post("/api/setup").status_code == 401
    assert client.post("/api/setup", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/api/setup").status_code == 405


def test_import_libraries_imports_what_it_can_and_names_the_rest():
    """gunicorn's master imports the workers' libraries with this: a module that fails to import
    is named, never fatal to the master (the worker tries again and says why)."""
    import sys

    from faceapp.preload import PRELOADED_MODULES, import_libraries

    seconds, failed = import_libraries(("json", "faceapp_no_such_module", "faceapp.api"))
    assert failed == ["faceapp_no_such_module"] and seconds >= 0
    assert "faceapp.api" in sys.modules
    assert "torch" in PRELOADED_MODULES
    assert import_libraries(PRELOADED_MODULES)[1] == []  # everything a worker needs is there


def test_random_checkpoints_tokenize_as_clip_with_its_bpe_file_and_bytewise_without(
    tiny_model_dir, tmp_path, runner, monkeypatch
):
    from transformers import CLIPTokenizer

    clip = CLIPTokenizer.from_pretrained(tiny_model_dir)
    assert len(clip) == 49408
    # OpenAI's ids for this prompt: startoftext, a, photo, of, a, face, endoftext.
    assert clip("a photo of a face")["input_ids"] == [49406, 320, 1125, 539, 320, 1710, 49407]
    assert model_files.read_manifest(tiny_model_dir)["tokenizer"] == "clip-bpe"

    # Without the file (it is a test and benchmark dependency only) `models random` still works.
    monkeypatch.setenv("CLIP_BPE_FILE", str(tmp_path / "missing.txt.gz"))
    folder = tmp_path / "bytewise"
    result = runner.invoke(args=["models", "random", str(folder)])
    assert result.exit_code == 0, result.output
    assert "byte-level tokenizer" in result.output
    bytewise = CLIPTokenizer.from_pretrained(str(folder))
    assert len(bytewise("a photo of a face")["input_ids"]) == 2 + len("aphotoofaface")
    assert model_files.read_manifest(str(folder))["tokenizer"] == "byte-level"


def test_a_file_that_is_not_clips_bpe_is_refused(tmp_path):
    import gzip

    from faceapp.clip_vocab import bpe_vocab

    path = tmp_path / "short.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\nh e\nl o\n")
    with pytest.raises(ValueError, match="not CLIP's BPE file"):
        bpe_vocab(str(path))


@pytest.mark.parametrize("image_size", [32, 224])
def test_the_pixel_recipe_gives_the_processors_numbers(image_size):
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from faceapp.clip_pixels import PixelRecipe

    processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    recipe = PixelRecipe.of(processor)
    assert recipe is not None
    rng = np.random.default_rng(0)
    assert recipe.square_side == image_size  # a crop of this size is taken as it is
    sizes = [(190, 190), (300, 200), (200, 301), (20, 20), (225, 223), (image_size, image_size)]
    for width, height in sizes:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for variant in (image, image.convert("L")):  # grey crops become RGB, as there
            expected = processor(images=[variant], return_tensors="np")["pixel_values"][0]
            got = recipe.pixels(variant)
            assert got.shape == expected.shape and got.dtype == np.float32
            assert np.abs(got - expected).max() < 1e-5


def test_a_processor_with_other_settings_keeps_its_own_path():
    from transformers import CLIPImageProcessorPil

    from faceapp.clip_pixels import PixelRecipe

    fixed = CLIPImageProcessorPil(size={"height": 224, "width": 224}, do_center_crop=False)
    assert PixelRecipe.of(fixed) is None
    # A recipe that crops less than it resizes has no square it leaves alone: crops keep their
    # own size (and the processor's resize runs on each).
    wider = CLIPImageProcessorPil(size={"shortest_edge": 256}, crop_size=224)
    assert PixelRecipe.of(wider).square_side is None


def test_the_loaded_model_prepares_pixels_with_the_recipe(tiny_model_dir, astronaut):
    import numpy as np

    model = face_models.load_clip(
        {"MODEL_NAME": tiny_model_dir, "MODELS_DIR": tiny_model_dir, "DTYPE": "float32"}
    )
    assert model.pixel_recipe is not None
    assert model.crop_side == model.processor.image_processor.crop_size["height"]
    crop = astronaut.crop((150, 40, 300, 190))
    ours = model.prepare_images([crop])[0]
    theirs = model.processor.image_processor(images=[crop], return_tensors="np")["pixel_values"]
    assert np.abs(ours - theirs[0]).max() < 1e-5
