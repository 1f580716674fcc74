"""The CLIP model: where it comes from, which device and dtype it runs in, and one copy per worker.

This is the only module that loads transformers' model classes. Analysis code asks the
:data:`models` extension for a :class:`LoadedModel` and calls its ``encode_*`` methods.

Where a model's files are, their manifest and the version derived from it: faceapp/model_files.py.
Random checkpoints for tests and benchmarks: faceapp/random_checkpoints.py. What gunicorn's and
Celery's masters import before they fork the workers: faceapp/preload.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

from faceapp import auto_dtype
from faceapp.atomic import replace_folder, staging_folder
from faceapp.clip_pixels import PixelRecipe
from faceapp.engine import engine, inference_threads
from faceapp.errors import FaceappError
from faceapp.extension import Slot
from faceapp.model_files import (
    build_manifest,
    pull_model,
    read_manifest,
    resolve_model_folder,
    weights_version,
)

log = logging.getLogger(__name__)

EXTENSION_KEY = "faceapp.models"
SLOT = Slot(EXTENSION_KEY, "faceapp.face_models.models.init_app(app)")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")  # int8: faceapp/onnx_int8.py
LOAD_TIMEOUT = 900.0  # a first load may pull and convert weights: minutes, not hours
WARMUP_TEXT = "a photo of a face"  # the text encoder's warm-up


# --------------------------------------------------------------------------------------------
# Device, dtype, threads
# --------------------------------------------------------------------------------------------


def choose_device(requested: str) -> str:
    """Resolve DEVICE: ``auto`` picks cuda, then mps, then cpu; others are checked to exist."""
    import torch

    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"DEVICE={requested} but torch sees no CUDA device")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"DEVICE={requested} but only {torch.cuda.device_count()} GPU(s)")
        return requested
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("DEVICE=mps but torch sees no MPS device")
    if requested not in ("cpu", "mps"):
        raise RuntimeError(f"DEVICE={requested!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return requested


def choose_dtype(requested: str, device: str):
    """The dtype to load DTYPE's weights in on a device: float16 is a GPU format, so on cpu it
    becomes float32; ``auto`` loads float32 (then faceapp/auto_dtype.py may convert them)."""
    import torch

    requested = (requested or "auto").strip().lower()
    if requested not in DTYPES:
        raise RuntimeError(f"DTYPE={requested!r} is not one of {', '.join(DTYPES)}")
    if requested == "float16" and device == "cpu":
        log.warning("DTYPE=float16 is slow and inexact on the CPU; using float32")
        requested = "float32"
    if requested == "int8":
        if device != "cpu":
            raise RuntimeError("DTYPE=int8 runs on the CPU (ONNX Runtime); set DEVICE=cpu")
        requested = "float32"  # the torch model (text encoder); images go through ONNX Runtime
    if requested == "auto":
        requested = "float32"
    return getattr(torch, requested)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, which containers restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def torch_threads(config: Mapping[str, Any]) -> int:
    """Torch threads per inference thread: TORCH_THREADS, else the cores divided among the
    workers and their inference threads (INFERENCE_THREADS, faceapp/engine.py)."""
    explicit = int(config.get("TORCH_THREADS") or 0)
    if explicit > 0:
        return explicit
    workers = max(1, int(config.get("WORKERS") or 1)) * inference_threads(config)
    return max(1, available_cores() // workers)


def pin_torch_threads(threads: int) -> None:
    """Give the calling thread `threads` torch (OpenMP) threads, where it has another count.

    Torch's thread count is kept per OS thread that has used it, so each inference thread sets
    its own before its first forward pass (with several inference threads, one torch thread
    each: faceapp/engine.py)."""
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# The loaded model
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A CLIP model and its processor on one device, ready to encode images and texts."""

    name: str
    folder: str
    manifest: dict
    device: str
    dtype: Any
    model: Any
    processor: Any
    load_ms: float = 0.0
    warmup_ms: float = 0.0
    image_session: Any = field(default=None, repr=False)  # DTYPE=int8: onnx_int8.ImageSession
    dtype_choice: auto_dtype.Choice | None = None  # DTYPE=auto: what was chosen and why
    pixel_recipe: PixelRecipe | None = field(default=None, repr=False)  # None: the processor
    threads: int = 0  # torch threads of each thread that encodes (0: as the process has them)

    @property
    def version(self) -> str:
        return weights_version(self.manifest)

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.get("random_weights"))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    def describe(self) -> dict:
        """The ``model`` object of API answers."""
        info = {
            "name": self.name,
            "version": self.version,
            "device": self.device,
            "dtype": self.dtype_name,
        }
        if self.random_weights:
            info["random_weights"] = True
        return info

    @property
    def dtype_name(self) -> str:
        """``float32``, ``bfloat16``, ``float16`` or ``int8``: what the image encoder runs in."""
        return "int8" if self.image_session else str(self.dtype).removeprefix("torch.")

    @property
    def crop_side(self) -> int | None:
        """The side of the square face crop that prepare_images takes as it is (the face crop is
        cut at this size: one resampling, in OpenCV), or None when the processor resizes every
        crop itself."""
        return self.pixel_recipe.square_side if self.pixel_recipe is not None else None

    def prepare_images(self, images: Sequence[Any]) -> list[Any]:
        """The processor's pixels (one float32 array, 3 x H x W, per PIL image) for encode_pixels
        (faceapp/clip_pixels.py's one-pass recipe when the processor has CLIP's plain settings).

        Pure NumPy and PIL, never torch: request threads call it, so the inference thread spends
        its time on the forward pass alone (faceapp/engine.py says why only it may call torch).
        """
        if self.pixel_recipe is not None:
            return self.pixel_recipe.batch(images)
        pixels = self.processor.image_processor(images=list(images), return_tensors="np")
        return list(pixels["pixel_values"])

    def encode_pixels(self, pixels: Sequence[Any]):
        """L2-normalised image embeddings (float32, on the CPU) for arrays from prepare_images."""
        import numpy as np
        import torch

        batch = np.stack(pixels).astype(np.float32, copy=False)
        pin_torch_threads(self.threads)
        if self.image_session is not None:
            features = torch.from_numpy(self.image_session(batch))
            return torch.nn.functional.normalize(features, dim=-1)
        tensor = torch.from_numpy(batch).to(self.device, self.dtype)
        with torch.inference_mode():
            features = _pooled(self.model.get_image_features(pixel_values=tensor))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    def encode_images(self, images: Sequence[Any]):
        """L2-normalised image embeddings (float32, on the CPU) for a batch of PIL images."""
        return self.encode_pixels(self.prepare_images(images))

    def encode_texts(self, texts: Sequence[str]):
        """L2-normalised text embeddings (float32, on the CPU) for a batch of strings."""
        import torch

        pin_torch_threads(self.threads)
        inputs = self.processor(
            text=list(texts), return_tensors="pt", padding=True, truncation=True, max_length=77
        )
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            features = _pooled(self.model.get_text_features(**inputs))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    def warm_up(self) -> float:
        """Run a warm-up crop and one text through the model so the first request is not slow."""
        started = time.perf_counter()
        self.encode_images(warmup_crops(1))
        self.encode_texts([WARMUP_TEXT])
        self.warmup_ms = (time.perf_counter() - started) * 1000
        return self.warmup_ms


def warmup_crops(count: int = auto_dtype.TRIAL_BATCH) -> list[Any]:
    """Fixed face-crop-sized images (smooth gradients and noise): warm-up and DTYPE=auto's trial."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(20)
    ramp = np.linspace(0, 255, 256, dtype=np.float32)
    crops = []
    for index in range(count):
        base = (ramp[None, :, None] * (index + 1) / count + ramp[:, None, None] / 2) % 256
        noisy = base + rng.normal(0, 24, (256, 256, 3))
        crops.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB"))
    return crops


def _pooled(output: Any):
    # transformers 5 returns an output object from get_*_features; 4.x returned the tensor.
    return getattr(output, "pooler_output", output)


def load_clip(config: Mapping[str, Any]) -> LoadedModel:
    """Load MODEL_NAME on DEVICE in DTYPE (raises RuntimeError with the reason and the fix)."""
    import torch
    from safetensors import SafetensorError
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    from faceapp.patch_embedding import compute_patches_as_matmul

    name = config["MODEL_NAME"]
    models_dir = config["MODELS_DIR"]
    folder = resolve_model_folder(name, models_dir)
    if folder is None and config.get("MODEL_AUTO_PULL"):
        log.info("model %s is not in %s; pulling it from the hub", name, models_dir)
        try:
            folder = pull_model(name, models_dir, progress=False)
        except Exception as exc:  # noqa: BLE001 - any hub failure means "not available"
            raise RuntimeError(
                f"model {name!r} is not in the models folder {models_dir} and could not be "
                f"downloaded ({type(exc).__name__}); run `flask --app wsgi models pull {name}` "
                "where the Hugging Face hub is reachable, or set FACEAPP_MODEL_NAME to a local "
                "model folder"
            ) from exc
    if folder is None:
        raise RuntimeError(
            f"model {name!r} is not in the models folder {models_dir}; run "
            f"`flask --app wsgi models pull {name}`, or set FACEAPP_MODEL_NAME to a local "
            "model folder (`flask --app wsgi models random DIR` writes a random one)"
        )

    device = choose_device(config.get("DEVICE", "auto"))
    requested = str(config.get("DTYPE") or "auto").strip().lower()
    dtype = choose_dtype(requested, device)
    threads = torch_threads(config)
    pin_torch_threads(threads)
    manifest = read_manifest(folder) or build_manifest(folder, name, None, source="folder")
    started = time.perf_counter()
    hf_logging.disable_progress_bar()

    def from_folder_as(path: str, dtype: Any) -> Any:
        return CLIPModel.from_pretrained(path, dtype=dtype).to(device).eval()

    def from_folder(dtype: Any) -> Any:
        return from_folder_as(folder, dtype)

    try:
        # bfloat16 on the CPU comes from its own file (below): the original is only mapped.
        model = from_folder(torch.float32 if dtype == torch.bfloat16 and device == "cpu" else dtype)
        processor = CLIPProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise RuntimeError(
            f"model folder {folder} could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); pull it again with `flask --app wsgi models pull`"
        ) from exc
    image_session = choice = None
    if requested == "int8":
        image_session = _int8_image_session(model, models_dir, manifest, threads)
    elif requested == "auto":
        choice = _auto_dtype(model, processor, device, models_dir, manifest, threads)
        dtype = getattr(torch, choice.dtype)
    if dtype == torch.bfloat16 and device == "cpu":
        # One bfloat16 file per weights version, memory-mapped: workers share its pages, as
        # float32 workers share the original's (converted in memory, each held ~300 MB alone).
        model = from_folder_as(bfloat16_copy(folder, models_dir, manifest), dtype)
    elif model.dtype != dtype:  # DTYPE=auto kept float32 after its bfloat16 trial
        model = from_folder(dtype)
    if device == "cpu":  # after the int8 export (its graph keeps the convolution)
        compute_patches_as_matmul(model)
    load_ms = (time.perf_counter() - started) * 1000
    return LoadedModel(
        name=name if not os.path.isdir(name) else manifest.get("id", name),
        folder=folder,
        manifest=manifest,
        device=device,
        dtype=dtype,
        model=model,
        processor=processor,
        load_ms=load_ms,
        image_session=image_session,
        dtype_choice=choice,
        pixel_recipe=PixelRecipe.of(processor.image_processor),
        threads=threads,
    )


def _auto_dtype(
    model: Any, processor: Any, device: str, models_dir: str, manifest: dict, threads: int
) -> auto_dtype.Choice:
    """DTYPE=auto: float32 or bfloat16 for this machine (faceapp/auto_dtype.py); converts `model`
    to bfloat16 when that is kept (float32 chosen after the trial: the caller loads it again)."""
    import numpy as np
    import torch

    if device != "cpu":
        return auto_dtype.Choice("float32", f"DTYPE=auto measures CPUs only; {device} runs float32")
    crops = warmup_crops()
    pixels = np.stack(processor.image_processor(images=crops, return_tensors="np")["pixel_values"])

    def encode() -> Any:
        tensor = torch.from_numpy(pixels).to(model.dtype)
        with torch.inference_mode():
            features = _pooled(model.get_image_features(pixel_values=tensor))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    trial = auto_dtype.Trial(
        encode=encode,
        to_bfloat16=lambda: model.to(torch.bfloat16),
        weights_version=weights_version(manifest),
        threads=threads,
    )
    return auto_dtype.choose(trial, models_dir)


BFLOAT16_FOLDER = ".bfloat16"


def bfloat16_copy(folder: str, models_dir: str, manifest: dict) -> str:
    """The model's weights saved in bfloat16 once per weights version (MODELS_DIR/.bfloat16/),
    so that bfloat16 workers memory-map one file and share its pages."""
    import torch
    from transformers import CLIPModel

    target = os.path.join(models_dir, BFLOAT16_FOLDER, weights_version(manifest))
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    with staging_folder(os.path.dirname(target), ".convert-") as staging:
        CLIPModel.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(staging)
        replace_folder(staging, target)
    log.info("bfloat16 weights of %s saved to %s", weights_version(manifest), target)
    return target


def _int8_image_session(model: Any, models_dir: str, manifest: dict, threads: int) -> Any:
    """DTYPE=int8: the image encoder exported (once per weights version) and quantized."""
    try:
        from faceapp import onnx_int8

        path = onnx_int8.ensure_image_encoder(
            model, int(model.config.vision_config.image_size), models_dir, weights_version(manifest)
        )
        return onnx_int8.ImageSession(path, threads)
    except ImportError as exc:
        raise RuntimeError(
            f"DTYPE=int8 needs ONNX Runtime ({exc.name} is missing): "
            "pip install 'faceapp[int8]' (onnx; onnxruntime comes with faceapp)"
        ) from exc


# --------------------------------------------------------------------------------------------
# The Flask extension: one model per worker process
# --------------------------------------------------------------------------------------------


@dataclass
class _HolderState:
    config: dict
    loader: Callable[[Mapping[str, Any]], LoadedModel]
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: str = "not_loaded"  # not_loaded, loading, ready, failed
    model: LoadedModel | None = None
    error: str | None = None
    pid: int = field(default_factory=os.getpid)
    on_ready: list[Callable[[LoadedModel], None]] = field(default_factory=list)


class ModelHolder:
    """Flask extension holding this worker's model: loaded once, behind a lock, after fork."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, loader: Callable[..., LoadedModel] | None = None) -> None:
        """Keep `app`'s model settings; the model loads later (:meth:`load`), after fork."""
        keys = (
            "MODEL_NAME",
            "MODELS_DIR",
            "DEVICE",
            "DTYPE",
            "WORKERS",
            "TORCH_THREADS",
            "MODEL_AUTO_PULL",
        )
        config = {key: app.config.get(key) for key in keys}
        SLOT.register(app, _HolderState(config=config, loader=loader or load_clip))

    def _state(self, app: Flask | None = None) -> _HolderState:
        app = app or current_app
        state = SLOT.get(app)
        if state.pid != os.getpid():
            # A forked child must never use a model (or a lock) inherited from its parent.
            app.extensions[EXTENSION_KEY] = state = _HolderState(
                config=state.config, loader=state.loader, on_ready=state.on_ready
            )
        return state

    def share_cores(self, app: Flask, processes: int) -> None:
        """Say how many processes of this host share its cores (torch threads are divided among
        them): Celery's worker command learns it after the app was made."""
        self._state(app).config["WORKERS"] = processes

    def add_ready_hook(self, app: Flask, hook: Callable[[LoadedModel], None]) -> None:
        """Call `hook(model)` after each load, before the model is reported ready (warm-ups)."""
        self._state(app).on_ready.append(hook)

    def load(self, app: Flask | None = None, *, retry: bool = False) -> LoadedModel | None:
        """Load and warm the model once; a failure is remembered (and logged once) until `retry`.

        Loading, warm-up and the ready hooks run on this worker's inference thread
        (faceapp/engine.py), like every other torch call.
        """
        app = app or current_app._get_current_object()
        state = self._state(app)
        if state.status == "ready" or (state.status == "failed" and not retry):
            return state.model
        with state.lock:
            if state.status == "ready" or (state.status == "failed" and not retry):
                return state.model
            state.status, state.error = "loading", None
            try:
                model = engine.get(app).run(lambda: self._load_now(state), timeout=LOAD_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - any load failure must leave the service up
                state.status, state.error = "failed", str(exc) or type(exc).__name__
                log.error("model not ready: %s", state.error)
                return None
            state.model, state.status = model, "ready"
            log.info(
                "model %s (version %s) ready on %s/%s in %.0f ms, warm-up %.0f ms",
                model.name,
                model.version,
                model.device,
                model.describe()["dtype"],
                model.load_ms,
                model.warmup_ms,
            )
            return model

    @staticmethod
    def _load_now(state: _HolderState) -> LoadedModel:
        model = state.loader(state.config)
        model.warm_up()
        for hook in state.on_ready:
            hook(model)
        return model

    def load_in_background(self, app: Flask) -> threading.Thread | None:
        """Start loading in a thread (gunicorn's post_worker_init), if LOAD_MODEL_ON_START."""
        if not app.config.get("LOAD_MODEL_ON_START", True):
            return None
        thread = threading.Thread(
            target=self.load, args=(app,), name="faceapp-model-load", daemon=True
        )
        thread.start()
        return thread

    def get(self) -> LoadedModel:
        """The ready model for a request, loading it on first use; else 503 model.not_ready."""
        model = self.load()
        if model is None:
            raise FaceappError("model.not_ready", self.reason())
        return model

    def peek(self) -> LoadedModel | None:
        """The model if it is ready now, without loading it."""
        state = self._state()
        return state.model if state.status == "ready" else None

    def reason(self) -> str:
        """Why the model is not ready, in words (empty when it is)."""
        state = self._state()
        if state.status == "ready":
            return ""
        if state.status == "failed":
            return f"failed: {state.error}"
        if state.status == "loading":
            return "loading: the model is being loaded by this worker"
        return "not loaded yet: POST /api/setup loads it"

    def status(self) -> str:
        return self._state().status


models = ModelHolder()
