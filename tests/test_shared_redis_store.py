"""Two instances sharing one real Redis store: an image_id made by one is served by the other."""

from __future__ import annotations

import io

import pytest

from faceapp import create_app
from faceapp.store.redis_backend import RedisStore
from tests.conftest import ADMIN
from tests.servers import redis_server

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_url(tmp_path):
    with redis_server(str(tmp_path)) as url:
        yield url


def test_validate_on_one_instance_analyze_on_another(config, tmp_path, redis_url, astronaut_jpeg):
    first = create_app({**config, "STORE_URL": redis_url, "MODELS_DIR": str(tmp_path / "a")})
    second = create_app({**config, "STORE_URL": redis_url, "MODELS_DIR": str(tmp_path / "b")})
    with first.app_context():
        from faceapp.store import store

        assert isinstance(store.backend.inner, RedisStore)
    image_id = (
        first.test_client()
        .post("/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
        .get_json()["image_id"]
    )
    other = second.test_client()
    analysed = other.post("/api/analyze", json={"image_id": image_id})
    assert analysed.status_code == 200 and analysed.get_json()["cached"] is False
    again = first.test_client().post("/api/analyze", json={"image_id": image_id}).get_json()
    assert again["cached"] is True  # the result stored by the other instance
    events = other.get(f"/api/images/{image_id}/trace").get_json()["events"]
    assert [e["event"] for e in events] == ["validated", "analyzed", "cache_hit"]
    assert other.post("/api/cache/wipe", headers=ADMIN).get_json() == {"wiped": 1}
    assert first.test_client().get(f"/api/images/{image_id}").status_code == 404
