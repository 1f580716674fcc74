"""The Redis store's own edges (`make mutants` found them unchecked): a store exactly at its size
limit after a removal, another worker's eviction in progress, what `recent` asks the server for,
and key prefixes made of glob characters. Against a real redis-server, like the shared tests in
tests/test_store_backends.py."""

from __future__ import annotations

import time
import uuid

import pytest

from faceapp.store.redis_backend import RedisStore
from tests.test_store_backends import _put

pytestmark = pytest.mark.slow


@pytest.fixture
def make_store(redis_url):
    made = []

    def make(prefix: str | None = None, **options) -> RedisStore:
        store = RedisStore(redis_url, prefix=prefix or f"edge-{uuid.uuid4().hex[:8]}:", **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.wipe()
        store.close()


def test_eviction_stops_as_soon_as_the_store_is_exactly_full(make_store):
    store = make_store()
    now = time.time()
    oldest = _put(store, 1, created=now - 300, size=700)
    oldest_bytes = store.usage()[1]
    others = [_put(store, n, created=now - 100 * (3 - n), size=700) for n in (2, 3)]
    store.max_bytes = store.usage()[1] - oldest_bytes  # the two newer ones fill it exactly
    assert store.evict() == 1
    assert store.get_meta(oldest) is None
    assert all(store.get_meta(i) is not None for i in others)


def test_an_eviction_another_worker_is_running_is_left_to_it(make_store):
    store = make_store()
    ids = [_put(store, n, created=time.time() - 10 * n) for n in range(3)]
    store.max_bytes = 1  # everything must go
    lock = f"{store.prefix}evicting"
    store.client.set(lock, "another worker's token", px=60_000)
    assert store.evict() == 0
    assert all(store.get_meta(i) is not None for i in ids)
    assert store.client.get(lock) == b"another worker's token"  # not released by this one
    store.client.delete(lock)  # that worker is done
    assert store.evict() == 3
    assert store.client.exists(lock) == 0  # this pass released its own lock


def test_recent_asks_the_server_only_for_the_page_it_returns(make_store):
    store = make_store()
    now = time.time()
    ids = [_put(store, n, created=now - 10 * n) for n in range(8)]
    store.client.config_resetstat()
    assert [m["image_id"] for m in store.recent(3)] == ids[:3]
    stats = store.client.info("commandstats")
    assert stats["cmdstat_zrevrange"]["calls"] == 1
    assert stats["cmdstat_hget"]["calls"] == 3  # not the metadata of all 8 images


def test_wipe_finds_strays_under_a_prefix_made_of_glob_characters(make_store):
    store = make_store(prefix="odd\\[a-z]*?:")
    neighbour = make_store(prefix="odd[:")
    kept = _put(neighbour, 1, created=time.time())
    image_id = _put(store, 1, created=time.time())
    # A results hash and a trace left without their image (a writer killed mid-way).
    stray = _put(store, 2, created=time.time())
    stray_keys = [f"{store.prefix}results:{stray}", f"{store.prefix}trace:{stray}"]
    store.client.hset(stray_keys[0], "k", "{}")
    store.client.rpush(stray_keys[1], "{}")
    store.client.delete(f"{store.prefix}image:{stray}")
    store.client.zrem(f"{store.prefix}created", stray)
    store.client.hdel(f"{store.prefix}bytes", stray)

    assert store.wipe() == 1  # the whole image; the stray had none left
    assert store.get_meta(image_id) is None
    assert store.client.exists(*stray_keys) == 0
    assert neighbour.get_meta(kept) is not None  # another app's keys are not touched
