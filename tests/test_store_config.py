"""The store as the configuration sets it up: STORE_MAX_AGE_SECONDS, STORE_URL schemes, init_app."""

from __future__ import annotations

import io
import time

import pytest
from flask import Flask
from PIL import Image

from faceapp import create_app
from faceapp.errors import FaceappError
from faceapp.store import FileStore, ImageStore, store


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), colour).save(buffer, "PNG")
    return buffer.getvalue()


def upload(config: dict, data: bytes) -> str:
    """Store an image through the API of a freshly started app; return its image_id."""
    client = create_app(config).test_client()
    answer = client.post("/api/validate", data={"file": (io.BytesIO(data), "x.png")})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["image_id"]


def is_stored(config: dict, image_id: str) -> bool:
    status = create_app(config).test_client().get(f"/api/images/{image_id}").status_code
    assert status in (200, 404)
    return status == 200


@pytest.mark.parametrize(("max_age", "kept"), [(1, False), (3600, True)])
def test_store_max_age_seconds_from_the_config_evicts_old_images(config, max_age, kept):
    config = {**config, "STORE_MAX_AGE_SECONDS": max_age}
    old = upload(config, png((200, 30, 30)))
    time.sleep(1.5)
    # A fresh app (as a restarted worker would) storing something new evicts what is too old.
    new = upload(config, png((30, 200, 30)))
    assert is_stored(config, new)
    assert is_stored(config, old) is kept


@pytest.mark.parametrize("url", ["s3://bucket/faces", "gs://bucket", "http://store.example/x"])
def test_an_unknown_store_url_scheme_fails_the_start(config, tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="STORE_URL"):
        create_app({**config, "STORE_URL": url})
    assert list(tmp_path.iterdir()) == [], "no folder may be made in its place"


def test_a_file_url_names_a_folder(config, tmp_path):
    folder = tmp_path / "by-url"
    config = {**config, "STORE_URL": f"file://{folder}"}
    image_id = upload(config, png((10, 20, 30)))
    assert is_stored(config, image_id)
    assert any(path.is_file() for path in folder.rglob("*")), "the image lives in that folder"


def test_the_store_used_before_init_app_says_so():
    bare = Flask(__name__)
    with bare.app_context(), pytest.raises(RuntimeError, match="init_app"):
        store.backend.get_meta("0" * 64)


def test_the_guarded_backend_passes_errors_and_attributes_through(tmp_path):
    """Only outages become 503 store.unavailable: the backend's own answers and a bug's
    exception reach the caller unchanged, and its settings read as they are."""
    bare = Flask(__name__)
    bare.config.update(STORE_URL=str(tmp_path / "own"), STORE_MAX_BYTES=1234)
    bare.config.update(STORE_MAX_AGE_SECONDS=0, TRACE_MAX_EVENTS=0)
    ImageStore(bare)  # the extension set up by its constructor
    with bare.app_context():
        backend = store.backend
        assert isinstance(backend.inner, FileStore)  # the backend itself, unguarded
        assert not isinstance(backend, FileStore)  # what views get is the guarded view of it
        assert backend.max_bytes == 1234
        with pytest.raises(FaceappError) as raised:
            backend.set_meta("0" * 64, {})
        assert raised.value.code == "image_id.not_found"
        with pytest.raises(ValueError, match="bad part name"):
            backend.get_part("0" * 64, "../escape")
