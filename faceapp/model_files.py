"""The models folder: one folder per model, each with a manifest, and where versions come from.

MODELS_DIR holds one folder per model (``openai--clip-vit-base-patch32``), each with a
``faceapp-manifest.json``: the id, the revision, and every file's name, size and SHA-256.
``model.weights_version`` is derived from it, so it changes whenever the weights do. Folders are
written beside their final place and renamed in, so nobody sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from faceapp.atomic import replace_folder, staging_folder, write_json

MANIFEST_NAME = "faceapp-manifest.json"
# Files a CLIP checkpoint needs; `models pull` fetches only these.
PULL_PATTERNS = ["*.json", "*.txt", "model.safetensors"]


def folder_name(model_id: str) -> str:
    """The folder a hub model id is stored under in MODELS_DIR (``org/name`` -> ``org--name``)."""
    return model_id.strip("/").replace("/", "--")


def sha256_file(path: str) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(folder: str, model_id: str, revision: str | None, **extra: Any) -> dict:
    """Describe every file of a model folder (name, size, SHA-256) for the manifest."""
    files = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name == MANIFEST_NAME or not os.path.isfile(path):
            continue
        files.append({"name": name, "size": os.path.getsize(path), "sha256": sha256_file(path)})
    return {
        "id": model_id,
        "revision": revision,
        "files": files,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def write_manifest(folder: str, manifest: dict) -> None:
    """Write the manifest beside the model files (temporary file, then rename)."""
    write_json(os.path.join(folder, MANIFEST_NAME), manifest, indent=2)


def read_manifest(folder: str) -> dict | None:
    """The folder's manifest, or None when it has none."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def weights_version(manifest: Mapping[str, Any]) -> str:
    """12 hex characters that change whenever the model's files do."""
    digest = hashlib.sha256(str(manifest.get("id")).encode())
    for item in sorted(manifest["files"], key=lambda f: f["name"]):
        digest.update(f"\n{item['name']}:{item['sha256']}".encode())
    return digest.hexdigest()[:12]


def list_models(models_dir: str) -> list[dict]:
    """The manifests of the models in MODELS_DIR, with the folder each lives in."""
    found = []
    if os.path.isdir(models_dir):
        for name in sorted(os.listdir(models_dir)):
            folder = os.path.join(models_dir, name)
            manifest = read_manifest(folder) if os.path.isdir(folder) else None
            if manifest:
                found.append({**manifest, "folder": folder, "version": weights_version(manifest)})
    return found


def resolve_model_folder(model_name: str, models_dir: str) -> str | None:
    """Where MODEL_NAME's files are: the folder it names, else its entry in MODELS_DIR."""
    if os.path.isdir(model_name):
        return os.path.abspath(model_name)
    candidate = os.path.join(models_dir, folder_name(model_name))
    return candidate if read_manifest(candidate) else None


def pull_model(
    model_id: str,
    models_dir: str,
    revision: str | None = None,
    progress: bool = True,
) -> str:
    """Download a hub model into MODELS_DIR with a progress bar and record its manifest."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    os.makedirs(models_dir, exist_ok=True)
    final = os.path.join(models_dir, folder_name(model_id))
    with staging_folder(models_dir, ".pull-") as staging:
        (enable_progress_bars if progress else disable_progress_bars)()
        snapshot_download(
            repo_id=model_id, revision=revision, local_dir=staging, allow_patterns=PULL_PATTERNS
        )
        shutil.rmtree(os.path.join(staging, ".cache"), ignore_errors=True)
        info = HfApi().model_info(model_id, revision=revision)
        write_manifest(staging, build_manifest(staging, model_id, info.sha, source="hub"))
        replace_folder(staging, final)
    return final
