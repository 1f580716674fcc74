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
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from PIL import Image

from faceapp import scoring
from faceapp.attributes import AttributeSet, load_attribute_set
from faceapp.errors import FaceappError
from faceapp.face_models import LoadedModel, models
from faceapp.faces import aligned_crop

log = logging.getLogger(__name__)

ATTRIBUTES_KEY = "faceapp.attributes"
FREE_TEXT_CACHE_SIZE = 512


@dataclass(frozen=True)
class Region:
    """A region to analyse: its box, the detector's confidence, and whether a detector found it;
    ``face`` is the detected face as stored (landmarks, pose, role), shown in the answer."""

    box: dict
    confidence: float
    detected: bool
    face: dict | None = None


def init_app(app: Flask) -> None:
    """Load the attribute set now (a broken file fails the start) and analyse once models load."""
    attribute_set = load_attribute_set(app.config.get("ATTRIBUTES_FILE"))
    app.extensions[ATTRIBUTES_KEY] = attribute_set
    cache_dir = os.path.join(app.config["MODELS_DIR"], ".label-embeddings")
    models.add_ready_hook(
        app, lambda model: setattr(model, "analyzer", Analyzer(model, attribute_set, cache_dir))
    )


def attribute_set() -> AttributeSet:
    """This app's attribute set."""
    return current_app.extensions[ATTRIBUTES_KEY]


def analyzer() -> Analyzer:
    """This worker's analyzer (503 model.not_ready while the model is not ready)."""
    return models.get().analyzer


class Analyzer:
    """Scores face crops against an attribute set and free-text labels with one CLIP model."""

    def __init__(self, model: LoadedModel, attributes: AttributeSet, cache_dir: str | None) -> None:
        self.model = model
        self.attributes = attributes
        self.version = hashlib.sha256(f"{model.version}:{attributes.digest}".encode()).hexdigest()[
            :12
        ]
        self.label_embeddings = self._label_embeddings(cache_dir)
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

        path = (
            os.path.join(cache_dir, f"{self.model.version}-{self.attributes.digest}.safetensors")
            if cache_dir
            else None
        )
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
            handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=cache_dir)
            os.close(handle)
            try:
                save_file({k: v.contiguous() for k, v in embeddings.items()}, tmp)
                os.replace(tmp, path)  # other workers read the whole file or none of it
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
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

    def free_text_embeddings(self, labels: Sequence[str]):
        """Embeddings of a request's own labels, encoding only those not seen recently."""
        import torch

        with self._free_text_lock:
            missing = [label for label in dict.fromkeys(labels) if label not in self._free_text]
        if missing:
            encoded = self.model.encode_texts(missing)
            with self._free_text_lock:
                for label, row in zip(missing, encoded, strict=True):
                    self._free_text[label] = row
                while len(self._free_text) > FREE_TEXT_CACHE_SIZE:
                    self._free_text.popitem(last=False)
        with self._free_text_lock:
            for label in labels:
                self._free_text.move_to_end(label)
            return torch.stack([self._free_text[label] for label in labels])

    # -- image side, per request -------------------------------------------------------------
    def analyze(
        self,
        image: Image.Image,
        regions: Sequence[Region],
        attribute_names: Sequence[str],
        labels: Sequence[str] | None,
        include_embedding: bool,
    ) -> list[dict]:
        """Score every region in one batch; faces come back in the order of `regions`."""
        if not regions:
            return []
        crops = [
            aligned_crop(image, region.box, (region.face or {}).get("landmarks"))
            if region.detected
            else aligned_crop(image, region.box, None, margin=0.0)
            for region in regions
        ]
        faces = self.model.encode_images(crops)
        scale = self.model.logit_scale
        per_attribute = {
            name: scoring.attribute_answers(
                faces @ self.label_embeddings[name].T, self.attributes.attributes[name], scale
            )
            for name in attribute_names
        }
        label_probs = None
        if labels:
            label_probs = scoring.probabilities(faces @ self.free_text_embeddings(labels).T, scale)
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


def regions_for(meta: dict, force: bool, max_faces: int | None = None) -> list[Region]:
    """The regions to analyse: the detected faces (the `max_faces` largest; stored largest
    first), or (forced, none found) the whole image."""
    found = meta["faces"][:max_faces] if max_faces else meta["faces"]
    regions = [Region(face["box"], face["confidence"], True, face) for face in found]
    if not regions and force:
        whole = {"x": 0, "y": 0, "width": meta["width"], "height": meta["height"]}
        regions = [Region(whole, 0.0, False)]
    return regions


def check_attribute_names(requested: Sequence[str] | None) -> list[str]:
    """The attribute names to score (default all); an unknown one is 400 input.invalid."""
    known = attribute_set().names()
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
