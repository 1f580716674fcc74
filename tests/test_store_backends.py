"""The store contract, run against every backend: FileStore in a temporary folder and RedisStore
against a real redis-server started on a free loopback port."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid

import pytest
import redis

from faceapp.errors import FaceappError
from faceapp.store import FileStore, image_id_for, open_backend
from faceapp.store.redis_backend import RedisStore
from tests.servers import free_port

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # every byte value: the store is binary-safe


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.slow)])
def make_store(request, tmp_path):
    """Build stores of the parametrised backend (each Redis one under its own key prefix)."""
    made = []

    def make(**options):
        if request.param == "file":
            store = FileStore(str(tmp_path / "store"), **options)
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisStore(url, prefix=f"test-{uuid.uuid4().hex[:8]}:", **options)
        made.append(store)
        return store

    yield make
    for store in made:
        if isinstance(store, RedisStore):
            store.wipe()
            store.close()


@pytest.fixture
def store(make_store):
    return make_store()


def _image(n: int, size: int = 64) -> tuple[str, bytes]:
    data = PNG + n.to_bytes(4, "big") + os.urandom(size)
    return image_id_for(data), data


def _put(store, n: int, created: float, size: int = 64) -> str:
    """Store image `n` as if it was made at `created` (FileStore dates its meta.json file)."""
    image_id, data = _image(n, size)
    assert store.put_image(image_id, data, {"image_id": image_id, "created": created})
    if isinstance(store, FileStore):
        meta = os.path.join(store._dir(image_id), FileStore.META)
        os.utime(meta, (created, created))
    return image_id


def _run_threads(count: int, target) -> list:
    """Run target(i) in `count` threads started together; their results, re-raising any error."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# -- images -----------------------------------------------------------------------------------
def test_put_and_get_roundtrip(store):
    image_id, data = _image(1)
    meta = {"image_id": image_id, "created": 1700000000.5, "valid": True, "errors": []}
    assert store.get_meta(image_id) is None and store.get_image(image_id) is None
    assert store.put_image(image_id, data, meta) is True
    assert store.get_image(image_id) == data
    assert store.get_meta(image_id) == meta


def test_second_put_of_same_image_changes_nothing(store):
    image_id, data = _image(1)
    assert store.put_image(image_id, data, {"n": 1}) is True
    assert store.put_image(image_id, b"other bytes", {"n": 2}) is False
    assert store.get_image(image_id) == data
    assert store.get_meta(image_id) == {"n": 1}


def test_concurrent_puts_of_same_image_store_one(store):
    image_id, data = _image(1, size=100_000)
    stored = _run_threads(8, lambda i: store.put_image(image_id, data, {"thread": i}))
    assert stored.count(True) == 1 and stored.count(False) == 7  # each other put says False
    assert store.get_image(image_id) == data
    assert store.get_meta(image_id) == {"thread": stored.index(True)}


def test_set_meta_replaces_meta_and_needs_the_image(store):
    image_id, data = _image(1)
    store.put_image(image_id, data, {"valid": None})
    store.set_meta(image_id, {"valid": True})
    assert store.get_meta(image_id) == {"valid": True}
    other, _ = _image(2)
    with pytest.raises(FaceappError) as raised:
        store.set_meta(other, {"valid": True})
    assert raised.value.code == "image_id.not_found"
    assert store.get_meta(other) is None


# -- results ----------------------------------------------------------------------------------
def test_results_put_get_and_drop(store):
    image_id, data = _image(1)
    store.put_image(image_id, data, {})
    key = "analysis:v1:attributes=expression,age"
    store.put_result(image_id, key, {"faces": [1]})
    store.put_result(image_id, "other", {"faces": [2]})
    assert store.get_result(image_id, key) == {"faces": [1]}
    store.put_result(image_id, key, {"faces": [3]})
    assert store.get_result(image_id, key) == {"faces": [3]}
    assert store.get_result(image_id, key + ":x") is None  # a different key is a miss
    store.drop_results(image_id)
    assert store.get_result(image_id, key) is None
    assert store.get_result(image_id, "other") is None
    assert store.get_meta(image_id) == {}  # the image itself stays
    store.drop_results(image_id)  # nothing left to drop: no error


def test_put_result_needs_the_image(store):
    image_id, _ = _image(1)
    with pytest.raises(FaceappError) as raised:
        store.put_result(image_id, "k", {})
    assert raised.value.code == "image_id.not_found"
    assert store.get_result(image_id, "k") is None
    assert store.get_meta(image_id) is None


# -- traces -----------------------------------------------------------------------------------
def test_events_from_many_threads_all_arrive_whole_and_in_order(store):
    image_id, data = _image(1)
    store.put_image(image_id, data, {})
    store.append_event(image_id, {"event": "validated", "seq": -1})

    def emit(thread: int) -> None:
        for seq in range(40):
            store.append_event(
                image_id,
                {"event": "analyzed", "thread": thread, "seq": seq, "pad": f"{thread}" * 500},
            )

    _run_threads(8, emit)
    events = store.events(image_id)
    assert events[0] == {"event": "validated", "seq": -1}
    assert len(events) == 1 + 8 * 40
    for thread in range(8):
        mine = [e for e in events[1:] if e["thread"] == thread]
        assert [e["seq"] for e in mine] == list(range(40))
        assert all(e["pad"] == f"{thread}" * 500 for e in mine)


def test_events_come_back_oldest_first_whatever_order_they_landed_in(store):
    # Two requests each take their event's time, then append: the later one may land first.
    image_id, data = _image(1)
    store.put_image(image_id, data, {})
    times = ["2026-12-05T10:00:00.200Z", "2026-12-05T10:00:00.100Z", "2026-12-05T10:00:00.300Z"]
    for n, moment in enumerate(times):
        store.append_event(image_id, {"event": "analyzed", "n": n, "time": moment})
    store.append_event(image_id, {"event": "analyzed", "n": 3, "time": times[2]})  # a tie
    assert [e["n"] for e in store.events(image_id)] == [1, 0, 2, 3]


def test_events_of_unknown_image_are_empty_and_not_recorded(store):
    image_id, _ = _image(1)
    store.append_event(image_id, {"event": "analyzed"})
    assert store.events(image_id) == []
    assert store.put_image(image_id, b"x", {}) is True
    assert store.events(image_id) == []


def _moment(n: int) -> str:
    return f"2026-12-05T10:00:{n // 1000:02d}.{n % 1000:03d}Z"


def test_a_trace_keeps_its_last_max_events_oldest_dropped(make_store):
    store = make_store(max_events=5)
    image_id, data = _image(1)
    store.put_image(image_id, data, {})
    for n in range(23):
        store.append_event(image_id, {"event": "analyzed", "n": n, "time": _moment(n)})
    assert [e["n"] for e in store.events(image_id)] == [18, 19, 20, 21, 22]
    if isinstance(store, FileStore):  # trimmed on disk too, a quarter of slack at most
        with open(os.path.join(store._dir(image_id), FileStore.TRACE), "rb") as fh:
            assert len(fh.read().splitlines()) <= 6
    else:  # trimmed in Redis, and the dropped events' bytes no longer counted
        assert store.client.llen(store._key("trace", image_id)) == 5
        kept = store.client.lrange(store._key("trace", image_id), 0, -1)
        counted = int(store.client.hget(store._bytes, image_id))
        assert counted == len(data) + len(b"{}") + sum(len(line) for line in kept)


def test_a_capped_trace_under_concurrent_appends_keeps_whole_newest_events(make_store):
    store = make_store(max_events=50)
    image_id, data = _image(1)
    store.put_image(image_id, data, {})

    def emit(thread: int) -> None:
        for seq in range(40):
            event = {"event": "analyzed", "thread": thread, "seq": seq, "pad": f"{thread}" * 300}
            store.append_event(image_id, event)

    _run_threads(8, emit)
    events = store.events(image_id)
    assert len(events) == 50
    for thread in range(8):  # each thread's newest events, none dropped between two kept
        mine = [e["seq"] for e in events if e["thread"] == thread]
        assert mine == list(range(40 - len(mine), 40))
        assert all(e["pad"] == f"{e['thread']}" * 300 for e in events)


def test_without_a_bound_a_trace_keeps_everything(store):
    image_id, data = _image(1)
    store.put_image(image_id, data, {})
    for n in range(30):
        store.append_event(image_id, {"event": "analyzed", "n": n})
    assert len(store.events(image_id)) == 30


def test_owners_outlast_a_capped_trace_and_go_with_the_image(make_store):
    store = make_store(max_events=3)
    image_id, data = _image(1)
    store.add_owner(image_id, "a" * 20)  # not stored yet: nothing recorded
    assert store.owners(image_id) == set()
    store.put_image(image_id, data, {})
    for owner in ("a" * 20, "b" * 20, "a" * 20):
        store.add_owner(image_id, owner)
    for n in range(10):  # the trace cap drops every event that named the owners
        store.append_event(image_id, {"event": "analyzed", "n": n})
    assert store.owners(image_id) == {"a" * 20, "b" * 20}
    if isinstance(store, RedisStore):  # counted in the image's bytes, once each
        kept = store.client.lrange(store._key("trace", image_id), 0, -1)
        counted = int(store.client.hget(store._bytes, image_id))
        owners = 2 * len(f"owner:{'a' * 20}") + 2
        assert counted == len(data) + len(b"{}") + sum(map(len, kept)) + owners
    with pytest.raises(ValueError):
        store.add_owner(image_id, "../../etc\n")
    assert store.delete(image_id) is True
    store.add_owner(image_id, "a" * 20)  # deleted meanwhile: not brought back
    assert store.put_image(image_id, data, {}) is True
    assert store.owners(image_id) == set()


# -- removal ----------------------------------------------------------------------------------
def test_delete_forgets_image_meta_results_and_trace(store):
    image_id, data = _image(1)
    store.put_image(image_id, data, {"n": 1})
    store.put_result(image_id, "k", {"r": 1})
    store.append_event(image_id, {"event": "validated"})
    assert store.delete(image_id) is True
    assert store.get_image(image_id) is None
    assert store.get_meta(image_id) is None
    assert store.get_result(image_id, "k") is None
    assert store.events(image_id) == []
    assert store.delete(image_id) is False
    assert store.put_image(image_id, data, {"n": 2}) is True  # stored afresh, nothing inherited
    assert store.get_result(image_id, "k") is None
    assert store.events(image_id) == []


def test_wipe_counts_and_removes_everything(store):
    ids = [_put(store, n, created=1000 + n) for n in range(3)]
    store.put_result(ids[0], "k", {})
    store.append_event(ids[1], {"event": "validated"})
    assert store.wipe() == 3
    assert all(store.get_meta(i) is None and store.events(i) == [] for i in ids)
    assert store.recent(10) == []
    assert store.wipe() == 0
    if isinstance(store, RedisStore):  # nothing at all is left under the prefix
        assert list(store.client.scan_iter(match=f"{store.prefix}*")) == []


def test_recent_is_newest_first(store):
    now = time.time()
    ids = [_put(store, n, created=now - age) for n, age in enumerate([300, 100, 200, 400])]
    assert [m["image_id"] for m in store.recent(10)] == [ids[1], ids[2], ids[0], ids[3]]
    assert [m["image_id"] for m in store.recent(2)] == [ids[1], ids[2]]
    assert store.recent(0) == []
    store.delete(ids[1])
    assert [m["image_id"] for m in store.recent(1)] == [ids[2]]


def test_evict_drops_images_past_the_age_limit(store):
    now = time.time()
    old = _put(store, 1, created=now - 1000)
    older = _put(store, 2, created=now - 5000)
    fresh = _put(store, 3, created=now - 10)
    assert store.evict() == 0  # no limits configured
    store.max_age = 100
    assert store.evict() == 2
    assert store.get_meta(old) is None and store.get_meta(older) is None
    assert store.get_image(fresh) is not None


def test_evict_drops_oldest_until_size_fits(store):
    now = time.time()
    ids = [_put(store, n, created=now - 100 * (4 - n), size=2000) for n in range(4)]
    store.max_bytes = 5500  # each image is about 2.4 kB: two of the four fit
    assert store.evict() == 2
    assert [store.get_meta(i) is not None for i in ids] == [False, False, True, True]
    assert store.evict() == 0


def test_usage_counts_images_and_their_bytes_and_a_store_at_its_limit_fits(store):
    assert store.usage() == (0, 0)
    now = time.time()
    ids = [_put(store, n, created=now - 100 * (3 - n), size=500) for n in range(3)]
    store.put_result(ids[0], "k", {"blob": "x" * 300})
    count, size = store.usage()
    assert count == 3 and size > 3 * (len(PNG) + 500) + 300
    store.max_bytes = size  # exactly full is not over the limit
    assert store.evict() == 0
    store.max_bytes = size - 1
    assert store.evict() == 1 and store.get_meta(ids[0]) is None
    assert store.usage()[0] == 2 and store.usage()[1] < size


def test_filestore_usage_is_the_bytes_of_image_and_meta(tmp_path):
    store = FileStore(str(tmp_path))
    image_id, data = _image(1)
    store.put_image(image_id, data, {"n": 1})
    assert store.usage() == (1, len(data) + len(b'{"n": 1}'))


def test_concurrent_evictions_count_each_image_once(store):
    now = time.time()
    for n in range(20):
        _put(store, n, created=now - 1000 + n, size=200)
    store.max_bytes = 1  # everything must go
    evicted = _run_threads(6, lambda i: store.evict())
    assert sum(evicted) == 20 and store.usage() == (0, 0)


def test_put_image_evicts_by_itself(make_store):
    store = make_store(max_bytes=1500, evict_interval=0)
    first = _put(store, 1, created=time.time() - 100, size=1000)
    second = _put(store, 2, created=time.time(), size=1000)
    assert store.get_meta(first) is None
    assert store.get_image(second) is not None


def test_put_image_evicts_at_most_once_per_interval(make_store):
    store = make_store(max_bytes=1500, evict_interval=3600)
    first = _put(store, 1, created=time.time() - 100, size=1000)  # this put's pass is the first
    second = _put(store, 2, created=time.time(), size=1000)  # over the limit, but no pass is due
    assert store.get_meta(first) is not None and store.get_meta(second) is not None
    assert store.evict() == 1  # an explicit pass still runs
    assert store.get_meta(first) is None


def test_results_and_traces_count_towards_the_size_limit(store):
    now = time.time()
    older = _put(store, 1, created=now - 100, size=100)
    newer = _put(store, 2, created=now, size=100)
    store.max_bytes = 3000
    assert store.evict() == 0
    store.put_result(older, "k", {"blob": "x" * 4000})
    assert store.evict() == 1
    assert store.get_meta(older) is None and store.get_meta(newer) is not None
    for _ in range(40):
        store.append_event(newer, {"event": "analyzed", "pad": "y" * 100})
    store.max_bytes = 2000
    assert store.evict() == 1
    assert store.recent(10) == []


def test_writes_racing_delete_never_leave_half_an_image(store):
    """Writes racing delete and drop_results: a 404 or success, never an error or a husk."""
    image_id, data = _image(1)
    stop = time.monotonic() + 0.5
    unexpected: list[BaseException] = []

    def churn(i: int) -> None:
        while time.monotonic() < stop:
            try:
                if i == 0:
                    store.put_image(image_id, data, {"n": 1})
                    store.delete(image_id)
                elif i == 1:
                    store.put_result(image_id, "k", {"r": 1})
                elif i == 2:
                    store.set_meta(image_id, {"n": 2})
                elif i == 3:
                    store.drop_results(image_id)
                else:
                    store.append_event(image_id, {"event": "analyzed"})
            except FaceappError as exc:
                assert exc.code == "image_id.not_found"
            except BaseException as exc:  # noqa: BLE001 - any other error is the failure
                unexpected.append(exc)
                return

    _run_threads(5, churn)
    assert unexpected == []
    if store.get_meta(image_id) is None:  # deleted last: it can be stored again, whole
        assert store.get_image(image_id) is None
        assert store.put_image(image_id, data, {"n": 3}) is True
    assert store.get_image(image_id) == data


# -- image_id validation ----------------------------------------------------------------------
BAD_IDS = [
    "../etc/passwd",
    "%2e%2e%2f",
    "../" + "a" * 61,
    "A" * 64,
    "a" * 63,
    "a" * 65,
    "a" * 10_000,
    "a" * 64 + "\n",
    "",
    None,
    12,
]


def _snapshot(root) -> dict:
    return {path: os.stat(path).st_mtime_ns for path, _, _ in os.walk(root)} | {
        os.path.join(path, name): os.stat(os.path.join(path, name)).st_mtime_ns
        for path, _, names in os.walk(root)
        for name in names
    }


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda b: repr(b)[:20])
def test_invalid_image_ids_are_refused_and_touch_nothing(store, bad, tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root")
    before = _snapshot(tmp_path)
    calls = [
        lambda: store.put_image(bad, b"x", {}),
        lambda: store.get_meta(bad),
        lambda: store.set_meta(bad, {}),
        lambda: store.get_image(bad),
        lambda: store.put_result(bad, "k", {}),
        lambda: store.get_result(bad, "k"),
        lambda: store.drop_results(bad),
        lambda: store.append_event(bad, {}),
        lambda: store.events(bad),
        lambda: store.delete(bad),
    ]
    for call in calls:
        with pytest.raises(FaceappError) as raised:
            call()
        assert raised.value.code == "image_id.invalid"
    assert _snapshot(tmp_path) == before
    if isinstance(store, RedisStore):
        assert list(store.client.scan_iter(match=f"{store.prefix}*")) == []


# -- backend specifics ------------------------------------------------------------------------
def test_filestore_crash_mid_put_leaves_no_partial_image(tmp_path, monkeypatch):
    store = FileStore(str(tmp_path / "store"))
    image_id, data = _image(1)

    def crash(src, dst):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", crash)
        with pytest.raises(OSError):
            store.put_image(image_id, data, {})
    leftovers = [name for _, dirs, files in os.walk(store.images) for name in dirs + files]
    assert image_id not in leftovers and all(len(name) == 2 for name in leftovers)
    assert os.listdir(store.scratch) == []
    assert store.get_meta(image_id) is None and store.get_image(image_id) is None
    assert store.put_image(image_id, data, {}) is True


def test_redis_prefixes_keep_apps_apart(redis_url):
    one = RedisStore(redis_url, prefix="app-one:")
    two = RedisStore(redis_url, prefix="app-two:")
    try:
        image_id, data = _image(1)
        assert one.put_image(image_id, data, {"app": 1}) is True
        assert two.get_meta(image_id) is None
        assert two.put_image(image_id, data, {"app": 2}) is True
        assert two.wipe() == 1
        assert one.get_meta(image_id) == {"app": 1}
        assert one.get_image(image_id) == data
    finally:
        one.wipe()
        one.close()
        two.close()


def test_redis_ping_raises_when_the_server_is_unreachable(redis_url):
    store = RedisStore(redis_url)
    store.ping()
    store.close()
    down = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            down.ping()
    finally:
        down.close()


def test_open_backend_picks_the_backend_from_the_url(redis_url, tmp_path):
    backend = open_backend(redis_url, max_bytes=10, max_age_seconds=5)
    try:
        assert isinstance(backend, RedisStore)
        assert (backend.max_bytes, backend.max_age) == (10, 5)
        backend.ping()
    finally:
        backend.close()
    assert isinstance(open_backend(str(tmp_path / "files")), FileStore)
    assert isinstance(open_backend(f"file://{tmp_path / 'files'}"), FileStore)


def test_filestore_sweeps_what_killed_writers_left_behind(tmp_path):
    store = FileStore(str(tmp_path))
    stale_dir = os.path.join(store.scratch, ".new-stale")
    stale_file = os.path.join(store.scratch, ".tmp-stale")
    fresh = os.path.join(store.scratch, ".new-in-progress")
    for folder in (stale_dir, fresh):
        os.makedirs(folder)
        with open(os.path.join(folder, "image.png"), "wb") as fh:
            fh.write(PNG)
    with open(stale_file, "wb") as fh:
        fh.write(b"half a meta.json")
    two_hours_ago = time.time() - 7200
    for path in (stale_dir, stale_file):
        os.utime(path, (two_hours_ago, two_hours_ago))
    FileStore(str(tmp_path))  # a worker (re)starting on the same folder
    assert sorted(os.listdir(store.scratch)) == [".new-in-progress"]
    os.utime(fresh, (two_hours_ago, two_hours_ago))
    assert store.sweep_scratch() == 1  # the count of leftovers removed
    assert os.listdir(store.scratch) == []


# -- parts, the format, outages ---------------------------------------------------------------
def test_parts_are_stored_with_the_image_and_go_with_it(store):
    image_id, data = _image(1)
    parts = {"preview.jpg": b"\xff\xd8preview", "face-0.jpg": bytes(range(256))}
    assert store.put_image(image_id, data, {"n": 1}, parts) is True
    assert store.get_image(image_id) == data
    assert store.get_part(image_id, "preview.jpg") == parts["preview.jpg"]
    assert store.get_part(image_id, "face-0.jpg") == parts["face-0.jpg"]
    assert store.get_part(image_id, "face-1.jpg") is None
    # A second put of the same bytes changes no part.
    assert store.put_image(image_id, data, {"n": 2}, {"preview.jpg": b"other"}) is False
    assert store.get_part(image_id, "preview.jpg") == parts["preview.jpg"]
    assert store.delete(image_id)
    assert store.get_part(image_id, "preview.jpg") is None


@pytest.mark.parametrize("name", ["../meta.json", "meta", "Preview.jpg", "a/b.jpg", "x" * 60])
def test_part_names_are_checked(store, name):
    image_id, data = _image(1)
    with pytest.raises(ValueError):
        store.put_image(image_id, data, {"n": 1}, {name: b"x"})
    assert store.get_meta(image_id) is None


def _delete_just_before(store, monkeypatch, image_id: str, method: str) -> None:
    """Make the image vanish between the backend's existence check and its write."""
    if isinstance(store, FileStore):
        real = store._atomic_write

        def write(path, data):
            store.delete(image_id)
            return real(path, data)

        monkeypatch.setattr(store, "_atomic_write", write)
    else:  # Redis checks and writes in one script: the delete lands just before it
        script = getattr(store, method)

        def run(*args, **kwargs):
            store.delete(image_id)
            return script(*args, **kwargs)

        monkeypatch.setattr(store, method, run)


@pytest.mark.parametrize(
    ("method", "write"),
    [
        ("_set_meta", lambda store, image_id: store.set_meta(image_id, {"n": 2})),
        ("_put_result", lambda store, image_id: store.put_result(image_id, "k", {"r": 1})),
    ],
)
def test_image_deleted_while_writing_is_not_found_and_leaves_no_husk(
    store, monkeypatch, method, write
):
    image_id, data = _image(1)
    assert store.put_image(image_id, data, {"n": 1})
    _delete_just_before(store, monkeypatch, image_id, method)
    with pytest.raises(FaceappError) as caught:
        write(store, image_id)
    assert caught.value.code == "image_id.not_found"
    monkeypatch.undo()
    assert store.get_meta(image_id) is None and store.get_result(image_id, "k") is None
    # Nothing half-made stands in the way: the same bytes are stored again, whole.
    assert store.put_image(image_id, data, {"n": 3}) is True
    assert store.get_meta(image_id) == {"n": 3} and store.get_image(image_id) == data


def test_filestore_ping_fails_when_the_store_cannot_be_written(tmp_path):
    store = FileStore(str(tmp_path / "store"))
    store.ping()
    shutil.rmtree(store.images)
    with open(store.images, "w") as fh:  # a file where the images folder was: nothing fits
        fh.write("not a folder")
    with pytest.raises(OSError) as caught:
        store.ping()
    assert store.is_outage(caught.value)


def test_outage_errors_are_told_apart_from_bugs(tmp_path):
    store = FileStore(str(tmp_path / "store"))
    assert store.is_outage(OSError(28, "No space left on device"))
    assert not store.is_outage(ValueError("a bug"))
    down = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        with pytest.raises(redis.exceptions.RedisError) as caught:
            down.get_meta("a" * 64)
        assert down.is_outage(caught.value) and not down.is_outage(KeyError("x"))
    finally:
        down.close()


def test_filestore_recent_reads_only_the_newest_metadata(tmp_path, monkeypatch):
    """The tester's recent list scans the store on every page load: a stat per image, and only
    the newest `limit` metadata files read (a store of thousands stays cheap)."""
    store = FileStore(str(tmp_path))
    now = time.time()
    ids = [_put(store, n, created=now - 10 * n) for n in range(30)]
    read = []
    real = store.get_meta
    monkeypatch.setattr(store, "get_meta", lambda image_id: read.append(image_id) or real(image_id))
    assert [m["image_id"] for m in store.recent(3)] == ids[:3]
    assert sorted(read) == sorted(ids[:3])
