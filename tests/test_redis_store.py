"""The Redis store's own edges (`make mutants` found them unchecked): a store exactly at its size
limit after a removal, another worker's eviction in progress, what `recent` asks the server for,
and key prefixes made of glob characters. Against a real redis-server, like the shared tests in
tests/test_store_backends.py."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
import redis

from faceapp.store.redis_backend import RedisStore
from tests.test_store_backends import _image, _put

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


def test_storing_an_image_clears_leftovers_of_an_earlier_one(make_store):
    """A results hash and a trace left by an earlier copy of the image (a delete cut short, or
    keys Redis evicted by itself) are not inherited by the image stored now."""
    store = make_store()
    image_id, data = _image(1, 64)
    store.client.hset(f"{store.prefix}results:{image_id}", "old-key", '{"faces": []}')
    store.client.rpush(f"{store.prefix}trace:{image_id}", '{"event": "analyzed"}')
    assert store.put_image(image_id, data, {"image_id": image_id, "created": time.time()})
    assert store.get_result(image_id, "old-key") is None
    assert store.events(image_id) == []


def test_a_wipe_leaves_foreign_keys_under_the_prefix_alone(make_store):
    store = make_store()
    image_id = _put(store, 1, created=time.time())
    foreign = [f"{store.prefix}image:not-an-id", f"{store.prefix}trace:notes"]
    store.client.hset(foreign[0], "meta", "{}")
    store.client.rpush(foreign[1], "kept")
    store.client.zadd(f"{store.prefix}created", {"someone-else": 1})
    store.client.hset(f"{store.prefix}bytes", "someone-else", 5)
    try:
        assert store.wipe() == 1
        assert store.get_meta(image_id) is None
        assert store.client.exists(*foreign) == 2
    finally:
        store.client.delete(*foreign)


def _commands(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The names of the complete RESP commands at the start of `buffer`, and what is left."""
    names = []
    while buffer.startswith(b"*"):
        head, found, rest = buffer.partition(b"\r\n")
        parts: list[bytes] = []
        for _ in range(int(head[1:]) if found else 0):
            size, found, rest = rest.partition(b"\r\n")
            if not found or len(rest) < int(size[1:]) + 2:
                return names, buffer
            parts.append(rest[: int(size[1:])])
            rest = rest[int(size[1:]) + 2 :]
        if not parts:
            return names, buffer
        names.append(parts[0].upper())
        buffer = rest
    return names, buffer


def _hung_redis(listener: socket.socket, connections: list[socket.socket]) -> None:
    """A server that completes redis-py's handshake (HELLO, CLIENT SETINFO) like Redis, then
    never answers a command: a hung server, or a proxy whose backend went away."""
    conn = listener.accept()[0]
    connections.append(conn)
    buffer = b""
    while data := conn.recv(65536):
        names, buffer = _commands(buffer + data)
        for name in names:
            if name == b"HELLO":
                conn.sendall(b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n")
            elif name in (b"CLIENT", b"SELECT"):
                conn.sendall(b"+OK\r\n")


def test_a_server_that_never_answers_does_not_hang_the_caller():
    """The read timeout turns a server that stops answering into a TimeoutError (which the app
    answers as 503 store.unavailable) instead of a worker waiting for ever."""
    connections: list[socket.socket] = []
    errors: list[BaseException] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        server = threading.Thread(target=_hung_redis, args=(listener, connections), daemon=True)
        server.start()
        store = RedisStore(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout=0.2)

        def ping() -> None:
            try:
                store.ping()
            except BaseException as exc:  # noqa: BLE001 - checked by the test thread
                errors.append(exc)

        caller = threading.Thread(target=ping, daemon=True)
        caller.start()
        caller.join(30)
        hung = caller.is_alive()
        for conn in connections:  # a failing run leaves no thread waiting behind
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        caller.join(5)
        store.close()
    assert not hung, "the caller waited on a server that never answered"
    assert errors and isinstance(errors[0], redis.exceptions.TimeoutError), errors
    # It is the store's timeout that bounds the wait: redis-py 6 and later fall back to their own
    # 5 s, redis-py 5 (which setup.cfg allows) to none at all, which is the hang above.
    assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 0.2


def test_the_urls_socket_timeout_wins_over_the_stores():
    store = RedisStore("redis://127.0.0.1:1/0?socket_timeout=7", timeout=0.2)
    assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 7
    store.close()


def test_the_eviction_lock_expires_if_its_worker_dies(make_store, monkeypatch):
    """A worker killed mid-eviction cannot release the lock: its expiry must, or no worker would
    ever evict again."""
    store = make_store()
    _put(store, 1, created=time.time())
    store.max_bytes = 1
    expiries = []
    evict = store._evict

    def look_at_the_lock() -> int:
        expiries.append(store.client.pttl(f"{store.prefix}evicting"))
        return evict()

    monkeypatch.setattr(store, "_evict", look_at_the_lock)
    assert store.evict() == 1
    assert 0 < expiries[0] <= RedisStore.EVICT_LOCK_MS  # -1 would be a lock kept for ever


def test_a_sign_in_is_held_for_its_lifetime_and_no_longer(make_store):
    store = make_store()
    session_id = "s" * 32
    store.put_session(session_id, 90.0)
    assert store.has_session(session_id)
    expiry = store.client.pttl(f"{store.prefix}session:{session_id}")
    assert 0 < expiry <= 90_000  # in ms; -1 (none) or longer would outlive SESSION_MAX_AGE
    store.drop_session(session_id)
    assert not store.has_session(session_id)
