"""The store as the API uses it: result keys that cannot collide, outages as 503, readiness,
items of an older format dropped, and the face contexts analyze reads instead of the image."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from faceapp import create_app, stored_image
from faceapp.face_geometry import FILL, aligned_crop
from faceapp.store import store
from tests.conftest import ADMIN
from tests.servers import free_port


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.slow)])
def any_store_client(request, config):
    """A client whose app keeps its store in a folder, or in a real Redis."""
    if request.param == "redis":
        config = {**config, "STORE_URL": request.getfixturevalue("redis_url")}
    app = create_app(config)
    client = app.test_client()
    yield client
    client.post("/api/cache/wipe", headers=ADMIN)


def _validate(client, data: bytes) -> str:
    answer = client.post("/api/validate", data={"file": (io.BytesIO(data), "a.jpg")})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["image_id"]


def test_labels_joined_differently_never_share_a_cached_result(any_store_client, astronaut_jpeg):
    client = any_store_client
    image_id = _validate(client, astronaut_jpeg)
    planted = client.post(
        "/api/analyze", json={"image_id": image_id, "labels": ["poison\u001fvictim"]}
    ).get_json()
    assert planted["cached"] is False
    for labels in (["poison", "victim"], ["poison\u001f", "victim"], ["poison,victim"]):
        answer = client.post("/api/analyze", json={"image_id": image_id, "labels": labels})
        body = answer.get_json()
        assert body["cached"] is False, labels
        assert list(body["faces"][0]["labels"]) == labels
    again = client.post(
        "/api/analyze", json={"image_id": image_id, "labels": ["poison", "victim"]}
    ).get_json()
    assert again["cached"] is True and list(again["faces"][0]["labels"]) == ["poison", "victim"]


def test_options_are_part_of_the_key(any_store_client, astronaut_jpeg):
    client = any_store_client
    image_id = _validate(client, astronaut_jpeg)
    plain = client.post("/api/analyze", json={"image_id": image_id}).get_json()
    embedded = client.post(
        "/api/analyze", json={"image_id": image_id, "include_embedding": True}
    ).get_json()
    assert plain["cached"] is False and embedded["cached"] is False
    assert "embedding" in embedded["faces"][0] and "embedding" not in plain["faces"][0]
    subset = client.post(
        "/api/analyze", json={"image_id": image_id, "attributes": ["expression"]}
    ).get_json()
    assert subset["cached"] is False and list(subset["faces"][0]["attributes"]) == ["expression"]


def test_analyze_reads_the_face_context_not_the_image(
    any_store_client, astronaut_jpeg, monkeypatch
):
    client = any_store_client
    image_id = _validate(client, astronaut_jpeg)
    with client.application.app_context():
        backend = store.backend
        meta = backend.get_meta(image_id)
        original = backend.get_image(image_id)
    assert original == astronaut_jpeg  # stored as received: no re-encoding
    [placement] = meta["stored"]["faces"]
    assert placement["part"] == "face-0.jpg"
    first = client.post("/api/analyze", json={"image_id": image_id}).get_json()

    def no_original(image_id):
        raise AssertionError("analyze read the original image")

    raw = client.application.extensions["faceapp.store"].inner
    monkeypatch.setattr(raw, "get_image", no_original)
    answer = client.post("/api/analyze", json={"image_id": image_id, "wipe_cache": True})
    assert answer.status_code == 200
    assert answer.get_json()["faces"][0]["box"] == first["faces"][0]["box"]


def test_a_face_crop_from_its_context_matches_the_crop_from_the_image():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (900, 1400, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(pixels).resize((1400, 900), Image.Resampling.BOX))
    image = Image.fromarray(np.kron(pixels[::20, ::20], np.ones((20, 20, 1), np.uint8)))
    tilted = [[640, 380], [860, 420], [750, 480], [660, 560], [840, 590]]  # eyes 10 degrees off
    for box, landmarks in (
        ({"x": 600, "y": 300, "width": 300, "height": 340}, tilted),  # context shrunk to 512 px
        ({"x": 700, "y": 400, "width": 80, "height": 90}, None),  # context kept at full size
        ({"x": 1340, "y": 850, "width": 80, "height": 80}, None),  # cut by the image's corner
    ):
        direct = aligned_crop(image, box, landmarks).resize((64, 64), Image.Resampling.BOX)
        context, placement = stored_image.cut_context(image, box)
        assert context.width == context.height <= stored_image.CONTEXT_MAX_SIDE
        mapped = aligned_crop(
            context,
            stored_image.to_context(placement, box),
            stored_image.points_to_context(placement, landmarks),
        )
        via_context = mapped.resize((64, 64), Image.Resampling.BOX)
        difference = np.abs(
            np.asarray(direct, dtype=np.int16) - np.asarray(via_context, dtype=np.int16)
        )
        assert difference.mean() < 6, box


def test_a_context_at_the_edge_is_padded_and_keeps_the_face_where_it_was():
    image = Image.new("RGB", (200, 200), (200, 50, 50))
    box = {"x": 0, "y": 0, "width": 100, "height": 100}
    context, placement = stored_image.cut_context(image, box)
    assert context.size == (220, 220) and (placement["left"], placement["top"]) == (-60, -60)
    assert context.getpixel((10, 10)) == FILL  # beyond the image: the aligned crop's own fill
    assert context.getpixel((100, 100)) == (200, 50, 50)
    assert stored_image.to_context(placement, box) == {
        "x": 60.0,
        "y": 60.0,
        "width": 100.0,
        "height": 100.0,
    }
    assert stored_image.points_to_context(placement, [[10, 20], [30, 40]]) == [
        [70.0, 80.0],
        [90.0, 100.0],
    ]


def test_forced_whole_image_analysis_reads_the_preview(client, app):
    blank = io.BytesIO()
    Image.new("RGB", (2400, 1200), (90, 120, 150)).save(blank, "JPEG")
    image_id = _validate(client, blank.getvalue())
    with app.app_context():
        meta = store.backend.get_meta(image_id)
    assert meta["stored"]["faces"] == []
    # Decoded at 2000x1000 (STORED_MAX_SIDE), then halved: the largest whole-factor reduction
    # within PREVIEW_MAX_SIDE, aspect kept.
    assert (meta["stored"]["preview"]["width"], meta["stored"]["preview"]["height"]) == (1000, 500)
    answer = client.post("/api/analyze", json={"image_id": image_id, "force": True})
    assert answer.status_code == 200, answer.get_json()
    [face] = answer.get_json()["faces"]
    assert face["detected"] is False and face["box"]["width"] == meta["width"]


def test_items_of_an_older_format_are_dropped_then_stored_again(client, app, astronaut_jpeg):
    image_id = _validate(client, astronaut_jpeg)
    with app.app_context():
        meta = store.backend.get_meta(image_id)
        store.backend.set_meta(image_id, {k: v for k, v in meta.items() if k != "stored"})
    answer = client.post("/api/analyze", json={"image_id": image_id})
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "image_id.not_found"
    assert _validate(client, astronaut_jpeg) == image_id
    assert client.post("/api/analyze", json={"image_id": image_id}).status_code == 200


# -- outages ------------------------------------------------------------------------------------
STORE_ROUTES = [
    ("post", "/api/validate", {"data": {"image_base64": "aGVsbG8="}}),
    ("post", "/api/analyze", {"json": {"image_id": "a" * 64}}),
    ("get", "/api/images/" + "a" * 64, {}),
    ("get", "/api/images/" + "a" * 64 + "/trace", {}),
    ("delete", "/api/images/" + "a" * 64, {"headers": ADMIN}),
    ("post", "/api/cache/wipe", {"headers": ADMIN}),
    ("get", "/api/ready", {}),
    ("get", "/app/images/" + "a" * 64 + "/preview.jpg", {}),
]


def test_every_route_answers_503_while_redis_is_down(config):
    down = f"redis://127.0.0.1:{free_port()}/0?socket_timeout=1"
    # The rate limiter keeps its counts in the same Redis: it falls back to memory, never a 500.
    app = create_app({**config, "STORE_URL": down, "RATELIMIT_ENABLED": True})
    client = app.test_client()
    for method, path, options in STORE_ROUTES:
        answer = getattr(client, method)(path, **options)
        assert answer.status_code == 503, path
        if path.startswith("/api/"):  # the tester's pages answer with an HTML page
            assert answer.get_json()["error"]["code"] == "store.unavailable", path
    assert client.get("/api/health").status_code == 200  # liveness does not need the store


def test_readiness_covers_the_folder_store(client, app):
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    assert client.get("/api/ready").status_code == 200
    images = os.path.join(app.config["STORE_URL"], "images")
    shutil.rmtree(images)
    with open(images, "w") as fh:  # the store cannot take a write any more
        fh.write("x")
    answer = client.get("/api/ready")
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "store.unavailable"
    os.unlink(images)
    os.mkdir(images)
    assert client.get("/api/ready").status_code == 200


def test_rate_limits_still_count_while_their_redis_is_down(config):
    down = f"redis://127.0.0.1:{free_port()}/0?socket_timeout=1"
    app = create_app(
        {**config, "STORE_URL": down, "RATELIMIT_ENABLED": True, "RATELIMIT": "3 per minute"}
    )
    client = app.test_client()
    codes = [client.get("/api/images/" + "a" * 64).status_code for _ in range(4)]
    assert codes == [503, 503, 503, 429]  # counted in this worker's memory meanwhile
