"""Zero-shot face attributes with CLIP: face crops in, per-attribute label scores out.

One :class:`Analyzer` per worker, built when the model becomes ready. The attribute prompts are
encoded once per (model weights, attribute set) and kept on disk beside the models, so a worker
start reuses them and no request ever encodes them again. A request's free-text labels are
encoded for that request (with a small bounded cache).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask
from PIL import Image

from faceapp import scoring
from faceapp.atomic import atomic_path
from faceapp.attributes import AttributeSet, load_attribute_set
from faceapp.engine import InferenceEngine, JobStats, engine
from faceapp.errors import FaceappError
from faceapp.extension import Slot
from faceapp.face_models import LoadedModel, models

log = logging.getLogger(__name__)

EXTENSION_KEY = "faceapp.analyzer"
SLOT = Slot(EXTENSION_KEY, "faceapp.analysis.analyzers.init_app(app)")
FREE_TEXT_CACHE_SIZE = 512


@dataclass(frozen=True)
class Region:
    """A region to analyse: its box, the detector's confidence, and whether a detector found it;
    ``face`` is the detected face as stored (landmarks, pose, role), shown in the answer."""

    box: dict
    confidence: float
    detected: bool
    face: dict | None = None


class Analyzers:
    """Flask extension holding this worker's :class:`Analyzer`, built when its model is ready."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Load the attribute set now (a broken file fails the start); build once models load."""
        attributes = load_attribute_set(app.config.get("ATTRIBUTES_FILE"))
        cache_dir = os.path.join(app.config["MODELS_DIR"], ".label-embeddings")
        slot = _AnalyzerSlot(attributes, cache_dir)
        SLOT.register(app, slot)
        models.add_ready_hook(app, lambda model: slot.build(model, engine.get(app)))

    def _slot(self) -> _AnalyzerSlot:
        return SLOT.get()

    def get(self) -> Analyzer:
        """This worker's analyzer, loading the model on first use (503 model.not_ready)."""
        model = models.get()
        return self._slot().for_model(model)

    def peek(self) -> Analyzer | None:
        """The analyzer if the model is ready now, without loading it."""
        model = models.peek()
        return self._slot().for_model(model) if model is not None else None

    def attribute_set(self) -> AttributeSet:
        return self._slot().attributes


@dataclass
class _AnalyzerSlot:
    attributes: AttributeSet
    cache_dir: str
    analyzer: Analyzer | None = None

    def build(self, model: LoadedModel, inference: InferenceEngine) -> None:
        self.analyzer = Analyzer(model, self.attributes, self.cache_dir, inference)

    def for_model(self, model: LoadedModel) -> Analyzer:
        # The hook builds it before the model is reported ready, in the process that loaded it.
        if self.analyzer is None or self.analyzer.model is not model:
            raise RuntimeError("the model is ready but its analyzer was never built")
        return self.analyzer


analyzers = Analyzers()


def attribute_set() -> AttributeSet:
    """This app's attribute set."""
    return analyzers.attribute_set()


def analyzer() -> Analyzer:
    """This worker's analyzer (503 model.not_ready while the model is not ready)."""
    return analyzers.get()


class Analyzer:
    """Scores face crops against an attribute set and free-text labels with one CLIP model.

    Every torch call goes through `engine` (the worker's inference thread); when the analyzer is
    built by the model's ready hook, that already is the inference thread and the calls run inline.
    """

    def __init__(
        self,
        model: LoadedModel,
        attributes: AttributeSet,
        cache_dir: str | None,
        inference: InferenceEngine,
    ) -> None:
        self.model = model
        self.attributes = attributes
        self.engine = inference
        # int8 and bfloat16 scores differ slightly from float32 ones: they never share cached
        # results (float32 keeps the identity it always had).
        runtime = "" if model.dtype_name == "float32" else f":{model.dtype_name}"
        identity = f"{model.version}:{attributes.digest}{runtime}"
        self.version = hashlib.sha256(identity.encode()).hexdigest()[:12]
        self.logit_scale = inference.run(lambda: model.logit_scale)
        self.label_embeddings = inference.run(lambda: self._label_embeddings(cache_dir))
        self._free_text: OrderedDict[str, Any] = OrderedDict()
        self._free_text_lock = threading.Lock()

    def describe(self) -> dict:
        """The answer's ``model`` object: weights and attribute set together make the version."""
        return {
            **self.model.describe(),
            "version": self.version,
            "weights_version": self.model.version,
            "attributes_version": self.attributes.digest,
        }

    # -- text side, computed once ----------------------------------------------------------------
    def _label_embeddings(self, cache_dir: str | None) -> dict[str, Any]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file

        # Keyed on the prompts only: recalibrating a temperature keeps the embeddings. The text
        # encoder runs in the model's torch dtype (int8's is float32), which is in the name.
        text_dtype = str(self.model.dtype).removeprefix("torch.")
        runtime = "" if text_dtype == "float32" else f"-{text_dtype}"
        name = f"{self.model.version}{runtime}-{self.attributes.prompts_digest()}.safetensors"
        path = os.path.join(cache_dir, name) if cache_dir else None
        if path and os.path.isfile(path):
            try:
                cached = load_file(path)
                if set(cached) == set(self.attributes.attributes):
                    log.info("label embeddings reused from %s", path)
                    return cached
            except (SafetensorError, OSError, ValueError):
                log.warning("label embedding cache %s is unreadable; recomputing", path)
        started = time.perf_counter()
        embeddings = {
            name: self._encode_label_prompts(attribute.prompts)
            for name, attribute in self.attributes.attributes.items()
        }
        log.info(
            "label embeddings for %d attributes computed in %.0f ms",
            len(embeddings),
            (time.perf_counter() - started) * 1000,
        )
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            with atomic_path(path) as tmp:  # other workers read the whole file or none of it
                save_file({k: v.contiguous() for k, v in embeddings.items()}, tmp)
        return embeddings

    def _encode_label_prompts(self, prompts: Sequence[Sequence[str]]):
        """One unit vector per label: the normalised mean of its prompts' embeddings."""
        import torch

        flat = [prompt for label_prompts in prompts for prompt in label_prompts]
        encoded = self.model.encode_texts(flat)
        rows, start = [], 0
        for label_prompts in prompts:
            rows.append(encoded[start : start + len(label_prompts)].mean(dim=0))
            start += len(label_prompts)
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def free_text_rows(self, labels: Sequence[str], client: str = "") -> list[Any]:
        """One embedding row per label of a request, encoding only those not seen recently.

        The missing labels go to the inference thread as one job, batched with other requests'.
        """
        with self._free_text_lock:
            for label in labels:  # this request's hits become the most recent before any eviction
                if label in self._free_text:
                    self._free_text.move_to_end(label)
            missing = [label for label in dict.fromkeys(labels) if label not in self._free_text]
        if missing:
            encoded, _ = self.engine.encode(self.model.encode_texts, missing, _rows, client=client)
            with self._free_text_lock:
                for label, row in zip(missing, encoded, strict=True):
                    self._free_text[label] = row
                while len(self._free_text) > FREE_TEXT_CACHE_SIZE:
                    self._free_text.popitem(last=False)
        with self._free_text_lock:
            found = {label: self._free_text.get(label) for label in labels}
        if any(row is None for row in found.values()):  # evicted by other requests meanwhile
            encoded, _ = self.engine.encode(
                self.model.encode_texts, list(labels), _rows, client=client
            )
            found = dict(zip(labels, encoded, strict=True))
        return [found[label] for label in labels]

    # -- image side, per request -------------------------------------------------------------
    def analyze(
        self,
        crops: Sequence[Image.Image],
        regions: Sequence[Region],
        attribute_names: Sequence[str],
        labels: Sequence[str] | None,
        include_embedding: bool,
        client: str = "",
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[list[dict], JobStats | None]:
        """Score each region's crop (one per region, in order) on the inference thread.

        Returns the faces in the order of `regions`, and how the job fared in the queue.
        `client` (a key or address) is whose turn the job takes in the fair queue. `meanwhile`
        runs on this thread while the model encodes the crops (right away when there are none).
        """
        if not regions:
            if meanwhile is not None:
                meanwhile()
            return [], None
        embedding = include_embedding
        label_rows = self.free_text_rows(labels, client) if labels else None

        def score(faces) -> list[dict]:  # on the inference thread, this request's rows only
            return self._answers(faces, regions, attribute_names, labels, label_rows, embedding)

        # The processor's resize and normalisation run here, on the request's own thread; the
        # inference thread only stacks the arrays and runs the forward pass.
        pixels = self.model.prepare_images(crops)
        return self.engine.encode(
            self.model.encode_pixels, pixels, score, client=client, meanwhile=meanwhile
        )

    def _answers(
        self,
        faces: Any,
        regions: Sequence[Region],
        attribute_names: Sequence[str],
        labels: Sequence[str] | None,
        label_rows: list[Any] | None,
        include_embedding: bool,
    ) -> list[dict]:
        import torch

        scale = self.logit_scale
        per_attribute = {
            name: scoring.attribute_answers(
                faces @ self.label_embeddings[name].T, self.attributes.attributes[name], scale
            )
            for name in attribute_names
        }
        label_probs = None
        if labels:
            label_probs = scoring.probabilities(faces @ torch.stack(label_rows).T, scale)
        results = []
        for index, region in enumerate(regions):
            face: dict[str, Any] = {
                "box": region.box,
                "confidence": region.confidence,
                "detected": region.detected,
                **_face_geometry(region.face),
                "attributes": {},
            }
            for name in attribute_names:
                face["attributes"][name] = per_attribute[name][index]
            if label_probs is not None:
                face["labels"] = dict(zip(labels, label_probs[index].tolist(), strict=True))
            if include_embedding:
                face["embedding"] = faces[index].tolist()
            results.append(face)
        return results


def _face_geometry(face: dict | None) -> dict:
    """The detector's landmarks, geometric pose and role of a face, for the answer."""
    return {key: face[key] for key in ("landmarks", "pose", "role") if face and key in face}


def _rows(tensor: Any) -> list[Any]:
    """A tensor's rows as separate tensors (cached one per label)."""
    return list(tensor.unbind(0))


def regions_for(meta: dict, force: bool, max_faces: int | None = None) -> list[Region]:
    """The regions to analyse: the detected faces (the `max_faces` largest; stored largest
    first), or (forced, none found) the whole image."""
    found = meta["faces"][:max_faces] if max_faces else meta["faces"]
    regions = [Region(face["box"], face["confidence"], True, face) for face in found]
    if not regions and force:
        whole = {"x": 0, "y": 0, "width": meta["width"], "height": meta["height"]}
        regions = [Region(whole, 0.0, False)]
    return regions


def face_count(meta: dict, max_faces: int, *, analysed: bool = True) -> dict[str, int]:
    """The answer's ``face_count``: the faces validation found, how many of them were left out
    by `max_faces` (the largest are analysed), and the `max_faces` in force. With `analysed`
    false (a batch or job line of an invalid photo, not forced), every face found was left out."""
    found = len(meta["faces"])
    left_out = max(0, found - max_faces) if analysed else found
    return {"found": found, "not_analysed": left_out, "max_faces": max_faces}


def check_attribute_names(
    requested: Sequence[str] | None, attributes: AttributeSet | None = None
) -> list[str]:
    """The attribute names to score (default all) of `attributes` (default the app's set); an
    unknown one is 400 input.invalid."""
    known = (attributes or attribute_set()).names()
    if not requested:
        return known
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise FaceappError(
            "input.invalid",
            f"Unknown attribute {unknown[0]!r}; known attributes: {', '.join(known)}.",
            field="attributes",
        )
    return list(dict.fromkeys(requested))


def check_max_faces(requested: int | None, config: Mapping[str, Any]) -> int:
    """The faces to analyse: the request's max_faces (at most MAX_FACES_LIMIT), else MAX_FACES."""
    limit = int(config["MAX_FACES_LIMIT"])
    if requested is not None and requested > limit:
        raise FaceappError(
            "input.invalid",
            f"max_faces: at most {limit} faces are analysed per request; ask for fewer.",
            field="max_faces",
        )
    return min(requested or int(config["MAX_FACES"]), limit)
