"""The models folder: one folder per model, each with a manifest, and where versions come from.

MODELS_DIR holds one folder per model (``openai--clip-vit-base-patch32``), each with a
``faceapp-manifest.json``: the id, the revision, and every file's name, size and SHA-256.
``model.weights_version`` is derived from it, so it changes whenever the weights do. Folders are
written beside their final place and renamed in, so nobody sees a half-written one.

A pull stages into ``MODELS_DIR/.pull-<host>-<pid>-*``. One killed on the way (SIGKILL, a power
cut) leaves that folder behind: every later pull removes those of processes of this host that
are gone, and any older than :data:`STALE_PULL_SECONDS`. A detector pull has an overall deadline
(``DETECTOR_PULL_DEADLINE``) over connect, headers and body.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from faceapp.atomic import replace_folder, staging_folder, write_json

MANIFEST_NAME = "faceapp-manifest.json"
STAGING_PREFIX = ".pull-"
#: A staging folder untouched this long belongs to no running pull, whoever made it.
STALE_PULL_SECONDS = 24 * 3600
_STAGING_OWNER = re.compile(r"^\.pull-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)-")
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


def random_weights_configured(config: Mapping[str, Any]) -> bool:
    """Whether the configured model folder's manifest says random weights (read, not loaded)."""
    folder = resolve_model_folder(config["MODEL_NAME"], config["MODELS_DIR"])
    try:
        manifest = read_manifest(folder) if folder else None
    except (OSError, ValueError):
        return False
    return bool(manifest and manifest.get("random_weights"))


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def staging_prefix() -> str:
    """The prefix of this process's staging folders: ``.pull-<host>-<pid>-``."""
    return f"{STAGING_PREFIX}{_host()}-{os.getpid()}-"


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def _last_touched(folder: str) -> float:
    latest = os.path.getmtime(folder)
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                latest = max(latest, os.path.getmtime(os.path.join(root, name)))
            except OSError:
                pass
    return latest


def remove_stale_pulls(models_dir: str, max_age: float = STALE_PULL_SECONDS) -> list[str]:
    """Remove the staging folders of pulls that died: this host's whose process is gone, and
    anybody's untouched for `max_age` seconds. Returns the names removed."""
    removed: list[str] = []
    if not os.path.isdir(models_dir):
        return removed
    host, now = _host(), time.time()
    for name in sorted(os.listdir(models_dir)):
        folder = os.path.join(models_dir, name)
        if not name.startswith(STAGING_PREFIX) or not os.path.isdir(folder):
            continue
        owner = _STAGING_OWNER.match(name)
        try:
            dead = owner is not None and owner["host"] == host and _process_gone(int(owner["pid"]))
            stale = dead or now - _last_touched(folder) > max_age
        except OSError:
            continue  # removed meanwhile
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(name)
    return removed


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
    remove_stale_pulls(models_dir)
    final = os.path.join(models_dir, folder_name(model_id))
    with staging_folder(models_dir, staging_prefix()) as staging:
        (enable_progress_bars if progress else disable_progress_bars)()
        snapshot_download(
            repo_id=model_id, revision=revision, local_dir=staging, allow_patterns=PULL_PATTERNS
        )
        shutil.rmtree(os.path.join(staging, ".cache"), ignore_errors=True)
        info = HfApi().model_info(model_id, revision=revision)
        write_manifest(staging, build_manifest(staging, model_id, info.sha, source="hub"))
        replace_folder(staging, final)
    return final


# --------------------------------------------------------------------------------------------
# The face detector: one ONNX file, fetched by URL and pinned by its SHA-256
# --------------------------------------------------------------------------------------------

#: OpenCV Zoo's YuNet (MIT), as OpenCV publishes it on the Hugging Face hub. The hub's copy is the
#: same file as ``models/face_detection_yunet/face_detection_yunet_2023mar.onnx`` in the
#: opencv/opencv_zoo repository (its Git LFS object: this SHA-256 and size). docs/DETECTOR.md
#: says why this source was chosen.
YUNET = {
    "id": "opencv/face_detection_yunet",
    "file": "face_detection_yunet_2023mar.onnx",
    "revision": "2023mar",
    "url": (
        "https://huggingface.co/opencv/face_detection_yunet/resolve/main/"
        "face_detection_yunet_2023mar.onnx"
    ),
    "sha256": "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    "size": 232_589,
}
#: A detector file is a few hundred kB; a server that sends far more is not sending it.
MAX_DETECTOR_BYTES = 64 * 1024 * 1024


class DownloadError(RuntimeError):
    """A model file could not be fetched, or what came was not the expected file."""


def detector_path(models_dir: str) -> str:
    """Where `models pull` puts the YuNet file: <MODELS_DIR>/opencv--face_detection_yunet/."""
    return os.path.join(models_dir, folder_name(YUNET["id"]), YUNET["file"])


def pull_file(
    url: str,
    sha256: str,
    models_dir: str,
    *,
    model_id: str = YUNET["id"],
    filename: str = YUNET["file"],
    revision: str | None = YUNET["revision"],
    size: int | None = None,
    progress: bool = True,
    timeout: float = 10.0,
    deadline: float = 120.0,
) -> str:
    """Download one model file into its folder in MODELS_DIR, check its SHA-256, write a manifest.

    Nothing is left behind on failure; an older copy stays until the new one is complete.
    `size`, when known, tells a truncated download from a different file. `timeout` bounds each
    wait for the server, `deadline` the whole download. Returns the path.
    """
    import requests
    from tqdm import tqdm

    from faceapp.deadlines import DeadlineAdapter, overall_deadline

    expected = sha256.strip().lower()
    os.makedirs(models_dir, exist_ok=True)
    remove_stale_pulls(models_dir)
    final = os.path.join(models_dir, folder_name(model_id))
    with (
        staging_folder(models_dir, staging_prefix()) as staging,
        overall_deadline(deadline) as watch,
        requests.Session() as session,
    ):
        session.mount("http://", DeadlineAdapter())
        session.mount("https://", DeadlineAdapter())
        target = os.path.join(staging, filename)
        digest, received = hashlib.sha256(), 0
        try:
            with session.get(url, stream=True, timeout=timeout) as response:
                if response.status_code != 200:
                    raise DownloadError(f"{url} answered HTTP {response.status_code}")
                total = int(response.headers.get("Content-Length") or 0) or None
                with (
                    open(target, "wb") as fh,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=filename,
                        disable=not progress,
                    ) as bar,
                ):
                    for chunk in response.iter_content(chunk_size=64 * 1024):
                        received += len(chunk)
                        if received > MAX_DETECTOR_BYTES:
                            raise DownloadError(f"{url} sent more than {MAX_DETECTOR_BYTES} bytes")
                        digest.update(chunk)
                        fh.write(chunk)
                        bar.update(len(chunk))
        except requests.RequestException as exc:
            if watch.expired:
                raise _overdue(url, deadline) from exc
            raise DownloadError(f"could not download {url}: {type(exc).__name__}") from exc
        if watch.expired:  # the sockets were shut down: what came is cut short
            raise _overdue(url, deadline)
        if size is not None and received != size:
            raise DownloadError(
                f"{url} sent {received} of the expected {size} bytes (truncated or a different "
                "file); nothing was stored"
            )
        if digest.hexdigest() != expected:
            raise DownloadError(
                f"{url} sent {received} bytes with SHA-256 {digest.hexdigest()}, not the expected "
                f"{expected}; nothing was stored"
            )
        write_manifest(staging, build_manifest(staging, model_id, revision, source="url", url=url))
        replace_folder(staging, final)
    return os.path.join(final, filename)


def _overdue(url: str, deadline: float) -> DownloadError:
    return DownloadError(
        f"could not download {url} within {deadline:g} s (DETECTOR_PULL_DEADLINE); "
        "nothing was stored"
    )


def detector_source(config: Mapping[str, Any]) -> dict[str, Any]:
    """Where the detector is pulled from: DETECTOR_URL / DETECTOR_SHA256, else the pinned file
    (whose size is known too)."""
    url = config.get("DETECTOR_URL") or YUNET["url"]
    sha256 = config.get("DETECTOR_SHA256") or YUNET["sha256"]
    size = YUNET["size"] if (url, sha256) == (YUNET["url"], YUNET["sha256"]) else None
    return {"url": url, "sha256": sha256, "size": size}


def check_against_manifest(path: str) -> dict | None:
    """The manifest of the folder `path` lies in, after checking the file's SHA-256 against it.

    None when the folder has no manifest (a file the operator placed); ValueError when the file
    is not the one the manifest lists (damaged, or replaced by hand).
    """
    manifest = read_manifest(os.path.dirname(os.path.abspath(path)))
    if manifest is None:
        return None
    name = os.path.basename(path)
    listed = {item["name"]: item for item in manifest["files"]}
    if name not in listed:
        return None
    if sha256_file(path) != listed[name]["sha256"]:
        raise ValueError(
            f"{path} does not match its manifest's SHA-256 (damaged or replaced); "
            "run `flask --app wsgi models pull` to fetch it again"
        )
    return manifest
