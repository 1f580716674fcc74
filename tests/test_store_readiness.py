"""Issue 22 item 5: readiness notices a Redis that answers PING but refuses writes."""

from __future__ import annotations

import pytest
import redis

from faceapp import create_app
from tests.conftest import ADMIN
from tests.servers import free_port, redis_server


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own: the test changes its settings."""
    folder = tmp_path / "redis"
    folder.mkdir()
    with redis_server(str(folder)) as url:
        yield url


def test_ready_is_503_while_redis_refuses_writes(config, own_redis):
    config.update(STORE_URL=own_redis, RATELIMIT_STORAGE_URI="memory://")
    client = create_app(config).test_client()
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    assert client.get("/api/ready").status_code == 200
    server = redis.Redis.from_url(own_redis)
    refusals = [
        (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0")),  # OOM
        (("REPLICAOF", "127.0.0.1", str(free_port())), ("REPLICAOF", "NO", "ONE")),  # read-only
    ]
    try:
        for refuse, restore in refusals:
            server.execute_command(*refuse)
            assert server.ping()  # PING still answers: it alone would say ready
            answer = client.get("/api/ready")
            assert answer.status_code == 503, refuse
            assert answer.get_json()["error"]["code"] == "store.unavailable"
            server.execute_command(*restore)
            assert client.get("/api/ready").status_code == 200
    finally:
        server.execute_command("CONFIG", "SET", "maxmemory", "0")
        server.execute_command("REPLICAOF", "NO", "ONE")
        server.close()
