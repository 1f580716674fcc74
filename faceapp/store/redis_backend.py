"""The Redis store backend: the same images, results and traces as :class:`FileStore`, in Redis.

Chosen by ``STORE_URL=redis://host:port/db`` (see :func:`faceapp.store.open_backend`). Every key
starts with a prefix (``faceapp:`` by default), so several apps can share one database::

    <prefix>image:<image_id>     hash {image: bytes received, meta: JSON, part:<name>: bytes...,
                                 owner:<key id>: 1 for each key that sent it}
                                 (one key: all of them or none)
    <prefix>results:<image_id>   hash {result key: JSON document}
    <prefix>trace:<image_id>     list of JSON events, oldest first (the last max_events)
    <prefix>created              sorted set of image_ids scored by creation time (recent, eviction)
    <prefix>bytes                hash image_id -> bytes stored for it (the size limit)
    <prefix>evicting             short-lived lock so one worker at a time evicts
    <prefix>session:<id>         a tester sign-in, until it expires or is signed out

wipe() finds ids with SCAN (never KEYS or FLUSHDB) and removes only keys under the prefix.

Every change that touches more than one key runs as a Lua script, which Redis executes
atomically: a reader never sees an image without its metadata, a result or event never outlives
its image, and two workers storing the same image store one copy.

Errors: an unreachable server raises :class:`redis.exceptions.ConnectionError`, a server too slow
to answer raises :class:`redis.exceptions.TimeoutError` (both are ``redis.exceptions.RedisError``);
they are not turned into :class:`~faceapp.errors.FaceappError` here: :meth:`RedisStore.is_outage`
tells the store extension (faceapp/store/__init__.py) to answer them as 503 store.unavailable.

The server should run with ``maxmemory-policy noeviction`` (or a ``volatile-*`` policy): keys
Redis evicts by itself would leave ids in the index, which :meth:`RedisStore.recent` and
:meth:`RedisStore.evict` skip and clean up, but their images are gone without notice.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping

import redis

from faceapp.store.base import (
    IMAGE_ID_RE,
    EvictionSchedule,
    check_image_id,
    check_key_id,
    check_part_name,
    check_session_id,
    keep_last,
    log_evicted,
    not_found,
    oldest_first,
)

OWNER_FIELD = "owner:"  # + a key id: a field of the image hash (:meth:`RedisStore.add_owner`)

# KEYS: image, results, trace, created, bytes. ARGV: image_id, image bytes, meta JSON, score,
# then (part field, part bytes) pairs.
_PUT_IMAGE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
local size = #ARGV[2] + #ARGV[3]
redis.call('HSET', KEYS[1], 'image', ARGV[2], 'meta', ARGV[3])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  size = size + #ARGV[i + 1]
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], size)
return 1
"""

# KEYS: image, created, bytes. ARGV: image_id, meta JSON, score ('' keeps the old one).
_SET_META = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HSTRLEN', KEYS[1], 'meta')
redis.call('HSET', KEYS[1], 'meta', ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], #ARGV[2] - old)
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1]) end
return 1
"""

# KEYS: image, results, bytes. ARGV: image_id, result key, document JSON.
_PUT_RESULT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local grown = #ARGV[3]
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  grown = grown - redis.call('HSTRLEN', KEYS[2], ARGV[2])
else
  grown = grown + #ARGV[2]
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[1], grown)
return 1
"""

# KEYS: image, results, bytes. ARGV: image_id.
_DROP_RESULTS = """
local freed = 0
for _, part in ipairs(redis.call('HGETALL', KEYS[2])) do freed = freed + #part end
redis.call('DEL', KEYS[2])
if freed > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[1], -freed)
end
return freed
"""

# KEYS: image, results, bytes. ARGV: image_id, the result keys to drop.
_DROP_SOME_RESULTS = """
local freed = 0
for i = 2, #ARGV do
  local size = redis.call('HSTRLEN', KEYS[2], ARGV[i])
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then freed = freed + size + #ARGV[i] end
end
if freed > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[1], -freed)
end
return freed
"""

# KEYS: image, trace, bytes. ARGV: image_id, event JSON, the most events kept (0: all). The
# oldest events beyond the bound are trimmed (LTRIM), and their bytes no longer counted.
_APPEND_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local count = redis.call('RPUSH', KEYS[2], ARGV[2])
local added = #ARGV[2]
local limit = tonumber(ARGV[3])
if limit > 0 and count > limit then
  for _, event in ipairs(redis.call('LRANGE', KEYS[2], 0, count - limit - 1)) do
    added = added - #event
  end
  redis.call('LTRIM', KEYS[2], count - limit, -1)
end
redis.call('HINCRBY', KEYS[3], ARGV[1], added)
return 1
"""

# KEYS: image, bytes. ARGV: image_id, the owner's hash field. An owner is a field of the image's
# own hash, so it goes with the image (delete, eviction, wipe); counted in its bytes.
_ADD_OWNER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[2], '1') == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], #ARGV[2] + 1)
end
return 1
"""

# KEYS: image, results, trace, created, bytes. ARGV: image_id. Returns {deleted, bytes freed}.
_DELETE = """
local freed = tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0')
local deleted = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return {deleted, freed}
"""

# KEYS: lock. ARGV: token. Release the lock only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore(EvictionSchedule):
    """The store in a Redis database, shared by every worker and instance that points at it."""

    EVICT_LOCK_MS = 60_000

    def __init__(
        self,
        url: str,
        max_bytes: int = 0,
        max_age_seconds: float = 0,
        evict_interval: float = 30.0,
        prefix: str = "faceapp:",
        max_events: int = 0,
        timeout: float = 5.0,
    ) -> None:
        # Options given in the URL (?socket_timeout=...) win over these defaults.
        self.client = redis.Redis.from_url(
            url, decode_responses=False, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self.prefix = prefix
        self.max_bytes = int(max_bytes or 0)
        self.max_age = float(max_age_seconds or 0)
        self.max_events = int(max_events or 0)  # per image's trace; 0: no bound
        self.evict_interval = evict_interval
        self._last_evict = 0.0
        self._evict_lock = threading.Lock()
        self._created = f"{prefix}created"
        self._bytes = f"{prefix}bytes"
        self._evicting = f"{prefix}evicting"
        script = self.client.register_script
        self._put_image = script(_PUT_IMAGE)
        self._set_meta = script(_SET_META)
        self._put_result = script(_PUT_RESULT)
        self._drop_results = script(_DROP_RESULTS)
        self._drop_some_results = script(_DROP_SOME_RESULTS)
        self._append_event = script(_APPEND_EVENT)
        self._add_owner = script(_ADD_OWNER)
        self._delete = script(_DELETE)
        self._unlock = script(_UNLOCK)

    def close(self) -> None:
        """Close the connections to the server (the store is unusable afterwards)."""
        self.client.close()

    # -- keys ----------------------------------------------------------------------------------
    def _key(self, kind: str, image_id: str) -> str:
        # check_image_id is the only gate to a key: an id is 64 hex characters, nothing else.
        return f"{self.prefix}{kind}:{check_image_id(image_id)}"

    def _keys(self, image_id: str) -> list[str]:
        """image, results, trace, created and bytes keys of one image (the scripts' KEYS)."""
        return [
            self._key("image", image_id),
            self._key("results", image_id),
            self._key("trace", image_id),
            self._created,
            self._bytes,
        ]

    # -- images --------------------------------------------------------------------------------
    def put_image(
        self,
        image_id: str,
        image_bytes: bytes,
        meta: dict,
        parts: Mapping[str, bytes] | None = None,
    ) -> bool:
        """Store an image, its metadata and parts; False (and no change) when already stored."""
        keys = self._keys(image_id)
        args = [image_id, image_bytes, json.dumps(meta), _score(meta, default=time.time())]
        for name, data in (parts or {}).items():
            args += [f"part:{check_part_name(name)}", data]
        stored = self._put_image(keys=keys, args=args)
        if not stored:
            return False
        self.maybe_evict()
        return True

    def get_meta(self, image_id: str) -> dict | None:
        return _loads(self.client.hget(self._key("image", image_id), "meta"))

    def set_meta(self, image_id: str, meta: dict) -> None:
        keys = [self._key("image", image_id), self._created, self._bytes]
        if not self._set_meta(keys=keys, args=[image_id, json.dumps(meta), _score(meta, "")]):
            raise not_found(image_id)

    def get_image(self, image_id: str) -> bytes | None:
        return self.client.hget(self._key("image", image_id), "image")

    def get_part(self, image_id: str, name: str) -> bytes | None:
        return self.client.hget(self._key("image", image_id), f"part:{check_part_name(name)}")

    # -- results -------------------------------------------------------------------------------
    def put_result(self, image_id: str, key: str, document: dict) -> None:
        keys = [self._key("image", image_id), self._key("results", image_id), self._bytes]
        if not self._put_result(keys=keys, args=[image_id, key, json.dumps(document)]):
            raise not_found(image_id)

    def get_result(self, image_id: str, key: str) -> dict | None:
        return _loads(self.client.hget(self._key("results", image_id), key))

    def drop_results(self, image_id: str, where: Callable[[str, dict], bool] | None = None) -> None:
        keys = [self._key("image", image_id), self._key("results", image_id), self._bytes]
        if where is None:
            self._drop_results(keys=keys, args=[image_id])
            return
        stored = self.client.hgetall(keys[1])
        picked = [
            key
            for key, line in stored.items()
            if where(key.decode("utf-8", "replace"), _loads(line) or {})
        ]
        if picked:
            self._drop_some_results(keys=keys, args=[image_id, *picked])

    # -- traces --------------------------------------------------------------------------------
    def append_event(self, image_id: str, event: dict) -> None:
        # Nothing when the image was deleted meanwhile: its trace went with it.
        keys = [self._key("image", image_id), self._key("trace", image_id), self._bytes]
        line = json.dumps(event, separators=(",", ":"))
        self._append_event(keys=keys, args=[image_id, line, self.max_events])

    def events(self, image_id: str) -> list[dict]:
        found = []
        for line in self.client.lrange(self._key("trace", image_id), 0, -1):
            event = _loads(line)
            if event is not None:
                found.append(event)
        return keep_last(oldest_first(found), self.max_events)

    # -- owners --------------------------------------------------------------------------------
    def add_owner(self, image_id: str, key_id: str) -> None:
        # Nothing when the image was deleted meanwhile, as for its trace.
        keys = [self._key("image", image_id), self._bytes]
        self._add_owner(keys=keys, args=[image_id, OWNER_FIELD + check_key_id(key_id)])

    def owners(self, image_id: str) -> set[str]:
        fields = self.client.hkeys(self._key("image", image_id))
        prefix = OWNER_FIELD.encode()
        return {field[len(prefix) :].decode() for field in fields if field.startswith(prefix)}

    # -- removal -------------------------------------------------------------------------------
    def _remove(self, image_id: str) -> tuple[bool, int]:
        deleted, freed = self._delete(keys=self._keys(image_id), args=[image_id])
        return bool(deleted), int(freed)

    def delete(self, image_id: str) -> bool:
        return self._remove(image_id)[0]

    def _scan(self, pattern: str) -> Iterator[bytes]:
        return self.client.scan_iter(match=_glob_escape(self.prefix) + pattern, count=500)

    def wipe(self) -> int:
        """Delete every image under this prefix; the number of images deleted."""
        # Every id anything is kept for, each removed by the delete script: never half an image.
        ids: set[bytes] = set()
        for kind in ("image", "results", "trace"):
            skip = len(f"{self.prefix}{kind}:".encode())
            ids.update(key[skip:] for key in self._scan(f"{kind}:*"))
        ids.update(member for member, _ in self.client.zscan_iter(self._created))
        ids.update(self.client.hkeys(self._bytes))
        count = 0
        for raw in ids:
            image_id = raw.decode(errors="replace")
            if IMAGE_ID_RE.fullmatch(image_id):  # else a foreign key: not ours to remove
                count += self._remove(image_id)[0]
        return count

    def recent(self, limit: int) -> list[dict]:
        """The metadata of the newest `limit` images, newest first (by meta["created"])."""
        metas: list[dict] = []
        start = 0
        while len(metas) < limit:
            ids = self.client.zrevrange(self._created, start, start + limit - 1)
            if not ids:
                break
            start += len(ids)
            with self.client.pipeline(transaction=False) as pipe:
                for raw in ids:
                    pipe.hget(f"{self.prefix}image:".encode() + raw, "meta")
                found = pipe.execute()
            metas.extend(meta for meta in map(_loads, found) if meta is not None)
        metas.sort(key=lambda m: m.get("created", 0), reverse=True)
        return metas[: max(limit, 0)]

    def evict(self) -> int:
        """Drop images past the age limit, then the oldest until the store fits its size limit."""
        if not self._evict_lock.acquire(blocking=False):
            return 0
        token = uuid.uuid4().hex
        try:
            self._last_evict = time.monotonic()
            # One evicting worker at a time: two would both count the same total and free twice.
            if not self.client.set(self._evicting, token, nx=True, px=self.EVICT_LOCK_MS):
                return 0
            try:
                evicted = self._evict()
            finally:
                self._unlock(keys=[self._evicting], args=[token])
            log_evicted(evicted, self.max_bytes, self.max_age)
            return evicted
        finally:
            self._evict_lock.release()

    def _evict(self) -> int:
        evicted = 0
        if self.max_age:
            cutoff = time.time() - self.max_age
            for raw in self.client.zrangebyscore(self._created, "-inf", f"({cutoff}"):
                evicted += self._remove(raw.decode())[0]
        if self.max_bytes:
            total = sum(int(size) for size in self.client.hvals(self._bytes))
            while total > self.max_bytes:
                # Each pass removes what it read from the index, so the next starts at 0 again.
                oldest = self.client.zrange(self._created, 0, 99)
                if not oldest:
                    break
                for raw in oldest:
                    if total <= self.max_bytes:
                        break
                    deleted, freed = self._remove(raw.decode())
                    evicted += deleted
                    total -= freed
        return evicted

    def usage(self) -> tuple[int, int]:
        """How many images the store holds, and their bytes (with metadata and results)."""
        return self.client.hlen(self._bytes), sum(int(n) for n in self.client.hvals(self._bytes))

    # -- sessions (the tester's sign-ins) --------------------------------------------------------
    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}session:{check_session_id(session_id)}"

    def put_session(self, session_id: str, seconds: float) -> None:
        self.client.set(self._session_key(session_id), b"1", px=max(1, int(seconds * 1000)))

    def has_session(self, session_id: str) -> bool:
        return bool(self.client.exists(self._session_key(session_id)))

    def drop_session(self, session_id: str) -> None:
        self.client.delete(self._session_key(session_id))

    READY_PROBE_MS = 10_000

    def ping(self) -> None:
        """Raise (a redis.exceptions.RedisError) unless the server answers and takes a write.

        PING alone answers while Redis refuses every write (out of memory under noeviction, a
        read-only replica), when validate already fails: so readiness writes a short-lived key.
        """
        probe = f"{self.prefix}ready:{os.getpid()}:{threading.get_ident()}"
        self.client.set(probe, b"ok", px=self.READY_PROBE_MS)
        self.client.delete(probe)

    def is_outage(self, exc: BaseException) -> bool:
        """Connection, timeout, read-only replica, out of memory: the server, not the request."""
        return isinstance(exc, redis.exceptions.RedisError)


def _score(meta: dict, default: float | str) -> float | str:
    """The index score of an image: meta["created"] (epoch seconds) when it is a number."""
    created = meta.get("created")
    if isinstance(created, int | float) and not isinstance(created, bool):
        return float(created)
    return default


def _loads(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None  # like a trace line cut short in FileStore: skipped, not fatal


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern."""
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)
