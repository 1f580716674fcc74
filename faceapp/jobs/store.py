"""Job records, their items, progress and result lines, in Redis (the broker's or the store's).

Every key starts with ``<prefix>`` (``faceapp:jobs:``)::

    job:<id>            hash: owner, state, total, done, failed, created/started/finished (epoch
                        seconds), options (JSON), chunks, chunk_size, next (next chunk to queue),
                        served (when it was last handed a chunk), attempts:<chunk> (tries of a
                        chunk that gave up)
    job:<id>:items      list of item JSON objects, in index order
    job:<id>:blobs      hash index -> bytes of an archive entry (dropped once answered)
    job:<id>:results    hash index -> the finished item's result line (JSON, one line)
    job:<id>:fed        hash chunk -> the chunk its completion queued, ``<job id>:<chunk>``
                        (another job of the same owner's, maybe; '' for none)
    owner:<owner>       sorted set of an owner's job ids by creation time
    active:<owner>      set of an owner's queued or running job ids (MAX_ACTIVE_JOBS)
    inflight:<owner>    sorted set of the owner's chunks queued or running, ``<job id>:<chunk>``,
                        by when each was queued or last started (the owner's window)
    inflight_owners     set of the owners with chunks in flight (the sweeper's round)
    all                 sorted set of every job id by creation time (admin listings)
    figures             hash: items_done, items_failed, chunks_requeued, chunks_released (every
                        job's, ever: metrics)
    worker_items        hash: worker (host:pid) -> items it answered
    worker_seen         hash: worker -> when it last answered one (epoch seconds)
    token:<owner>:<h>   the job id a client_token made (h: SHA-256 of the token)

What makes a redelivered chunk harmless lives here, in Lua scripts Redis runs atomically:
:meth:`JobStore.record` writes a result with HSETNX and counts it only when it was the first, so
each index is answered exactly once however often it is processed; :meth:`JobStore.feed` gives
each finished chunk one successor, once (a redelivery queues none). A job that ends (every item
answered, or cancelled) gets ``JOB_TTL`` on all its keys.

Fairness is per owner (API key): an owner has at most ``JOBS_WINDOW`` chunks queued or running,
over all its jobs. A finished chunk hands its place to the owner's job served longest ago, so
the owner's jobs take turns, and another owner's chunks wait behind at most a window of each
owner's, however many jobs and items that owner has.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
JOB_ID_LENGTH = 32
ITEM_PUSH_BATCH = 2000  # items per RPUSH: a 10,000-item job is five commands in one pipeline
RESULTS_PAGE = 500  # result lines per HMGET while streaming

# Hands the owner's next chunk out, unless its window is full: the chunk `next` of the owner's
# active job served longest ago (its `served` time, then its creation), recorded in flight.
# Returns '<job id>:<chunk>', or '' for none. `prefix` is the job hashes' key prefix.
_SUCCESSOR = """
local function successor(inflight, active, prefix, now, window)
  if redis.call('ZCARD', inflight) >= window then return '' end
  local best, best_key = nil, nil
  for _, id in ipairs(redis.call('SMEMBERS', active)) do
    local f = redis.call('HMGET', prefix .. id, 'state', 'next', 'chunks', 'served', 'created')
    if (f[1] == 'queued' or f[1] == 'running') and tonumber(f[2]) < tonumber(f[3]) then
      local key = {tonumber(f[4] or 0), tonumber(f[5])}
      if best == nil or key[1] < best_key[1] or (key[1] == best_key[1] and key[2] < best_key[2])
      then best, best_key = id, key end
    end
  end
  if best == nil then return '' end
  local chunk = redis.call('HINCRBY', prefix .. best, 'next', 1) - 1
  redis.call('HSET', prefix .. best, 'served', now)
  local member = best .. ':' .. chunk
  redis.call('ZADD', inflight, now, member)
  return member
end
"""

# KEYS: job, active, owner, all, token ('' when none), inflight, inflight_owners. ARGV: job_id,
# max_active, created, token ttl, window, chunks, owner, then field/value pairs of the job hash.
# Returns {'made', id, chunks queued now} | {'existing', id} | {'busy', active count}. The new
# job takes what is free of its owner's window; the rest comes as the owner's chunks finish.
_CREATE = """
if KEYS[5] ~= '' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {'existing', existing} end
end
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local state = redis.call('HGET', prefix .. id, 'state')
  if state ~= 'queued' and state ~= 'running' then redis.call('SREM', KEYS[2], id) end
end
local active = redis.call('SCARD', KEYS[2])
if active >= tonumber(ARGV[2]) then return {'busy', tostring(active)} end
local first = tonumber(ARGV[5]) - redis.call('ZCARD', KEYS[6])
first = math.max(0, math.min(first, tonumber(ARGV[6])))
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('HSET', KEYS[1], 'next', first, 'served', ARGV[3])
for chunk = 0, first - 1 do redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1] .. ':' .. chunk) end
redis.call('SADD', KEYS[7], ARGV[7])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[4]) end
return {'made', ARGV[1], tostring(first)}
"""

# Ends a job: its state, finish time, no longer active, and its keys expire after the TTL.
# Used by the scripts below (KEYS[1] job, KEYS[2] active, KEYS[3..6] the job's other keys).
_FINISH = """
local function finish(state, now, ttl, job_id)
  redis.call('HSET', KEYS[1], 'state', state, 'finished', now)
  redis.call('SREM', KEYS[2], job_id)
  for _, i in ipairs({1, 3, 4, 5, 6}) do redis.call('EXPIRE', KEYS[i], ttl) end
end
"""

# KEYS: job, active, results, items, blobs, fed, figures, worker_items, worker_seen. ARGV:
# index, line, failed (1/0), now, ttl, job_id, worker. Returns 1 (recorded), 0 (answered
# before: nothing changes), -1 (no such job).
_RECORD = (
    _FINISH
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[5], ARGV[1])
local done = redis.call('HINCRBY', KEYS[1], 'done', 1)
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
  redis.call('HINCRBY', KEYS[7], 'items_failed', 1)
end
redis.call('HINCRBY', KEYS[7], 'items_done', 1)
redis.call('HINCRBY', KEYS[8], ARGV[7], 1)
redis.call('HSET', KEYS[9], ARGV[7], ARGV[4])
local state = redis.call('HGET', KEYS[1], 'state')
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if state == 'queued' or state == 'running' then
  if done >= total then finish('succeeded', ARGV[4], ARGV[5], ARGV[6]) end
else  -- a line of an item in flight when its job ended: it expires with the job
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
end
return 1
"""
)

# KEYS: job, active, results, items, blobs, fed. ARGV: new state, now, ttl, job_id, reason JSON.
# Ends an active job (cancelled or failed); returns its state afterwards ('' when none).
_END = (
    _FINISH
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state ~= 'queued' and state ~= 'running' then return state end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
finish(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return ARGV[1]
"""
)

# KEYS: job, inflight. ARGV: now, the chunk's member. A queued job becomes running; returns the
# state afterwards. The chunk's time in flight restarts: it is not lost, a worker has it.
_START = """
redis.call('ZADD', KEYS[2], 'XX', ARGV[1], ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[1])
  return 'running'
end
return state
"""

# KEYS: job, fed, inflight, active (the owner's). ARGV: the chunk that finished, job_id, now,
# window. The chunk leaves the owner's window and hands its place on (_SUCCESSOR), whatever its
# job's state. Returns the chunk to queue next ('<job id>:<chunk>', or '' for none), once: a
# redelivered chunk queues nothing, so a duplicate does not run on down the chain. (A run that
# died between this and queueing the chunk leaves it in flight and unheld: the sweeper's.)
_FEED = (
    _SUCCESSOR
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return '' end
redis.call('ZREM', KEYS[3], ARGV[2] .. ':' .. ARGV[1])
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[2])
local nxt = successor(KEYS[3], KEYS[4], prefix, ARGV[3], tonumber(ARGV[4]))
local ttl = redis.call('TTL', KEYS[1])
if ttl ~= -2 then
  redis.call('HSET', KEYS[2], ARGV[1], nxt)
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
end
return nxt
"""
)

# KEYS: inflight, active (the owner's), inflight_owners, figures. ARGV: member, its score when
# read, now, window, owner, job key prefix. A chunk in flight that no worker and no queue holds
# (the sweeper, faceapp/jobs/sweeper.py): queued again if its job is active, else its place goes
# to the owner's next chunk; counted either way in the figures (chunks_requeued or
# chunks_released). Returns the chunk to queue ('' for none; nothing when the chunk was started
# or finished since it was read).
_RESCUE = (
    _SUCCESSOR
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return '' end
local job_id = string.match(ARGV[1], '^(.*):')
local state = redis.call('HGET', ARGV[6] .. job_id, 'state')
local nxt = ''
if state == 'queued' or state == 'running' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'chunks_requeued', 1)
  nxt = ARGV[1]
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'chunks_released', 1)
  nxt = successor(KEYS[1], KEYS[2], ARGV[6], ARGV[3], tonumber(ARGV[4]))
end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[5]) end
return nxt
"""
)

# KEYS: inflight, inflight_owners. ARGV: owner. An owner with nothing in flight leaves the round.
_FORGET_OWNER = """
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
"""

# KEYS: job. ARGV: the field counting a chunk's tries. Counts one more, unless the job is gone.
_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


class TokenReused(Exception):
    """The client_token made a job already: `job_id` is that job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class TooManyActive(Exception):
    """The owner has MAX_ACTIVE_JOBS queued or running jobs already."""

    def __init__(self, active: int) -> None:
        super().__init__(active)
        self.active = active


def _chunk_of(member: bytes | str) -> tuple[str, int] | None:
    """``b'<job id>:<chunk>'`` as (job id, chunk); None for ``b''``."""
    text = member.decode() if isinstance(member, bytes) else member
    if not text:
        return None
    job_id, _, chunk = text.rpartition(":")
    return job_id, int(chunk)


def new_job_id() -> str:
    """A fresh job id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    """Whether `value` has the shape of a job id (anything else is simply not found)."""
    return len(value) == JOB_ID_LENGTH and all(c in "0123456789abcdef" for c in value)


class JobStore:
    """Jobs in one Redis database: records, items, results, and the scripts that change them."""

    def __init__(self, url: str, prefix: str = "faceapp:jobs:", timeout: float = 5.0) -> None:
        self.prefix = prefix
        self.client = redis.Redis.from_url(
            url, decode_responses=False, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._create = self.client.register_script(_CREATE)
        self._record = self.client.register_script(_RECORD)
        self._end = self.client.register_script(_END)
        self._start = self.client.register_script(_START)
        self._feed = self.client.register_script(_FEED)
        self._rescue = self.client.register_script(_RESCUE)
        self._forget_owner = self.client.register_script(_FORGET_OWNER)
        self._attempt = self.client.register_script(_ATTEMPT)

    # -- keys ------------------------------------------------------------------------------------
    def _job(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}job:{job_id}{':' + part if part else ''}"

    def _job_keys(self, job_id: str, owner: str) -> list[str]:
        """The keys the finishing scripts take: job, active, results, items, blobs, fed."""
        return [
            self._job(job_id),
            f"{self.prefix}active:{owner}",
            self._job(job_id, "results"),
            self._job(job_id, "items"),
            self._job(job_id, "blobs"),
            self._job(job_id, "fed"),
        ]

    def _inflight(self, owner: str) -> str:
        return f"{self.prefix}inflight:{owner}"

    def _token_key(self, owner: str, token: str) -> str:
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        return f"{self.prefix}token:{owner}:{digest}"

    # -- making a job ----------------------------------------------------------------------------
    def token_job(self, owner: str, token: str | None) -> str | None:
        """The job a client_token of this owner made, if any (checked before items are written)."""
        if not token:
            return None
        found = self.client.get(self._token_key(owner, token))
        return found.decode() if found else None

    def write_items(
        self, job_id: str, items: Sequence[Mapping[str, Any]], blobs: Mapping[int, bytes]
    ) -> None:
        """Write a job's items (and archive entries) before the job itself exists."""
        pipe = self.client.pipeline(transaction=False)
        encoded = [json.dumps(item, separators=(",", ":")) for item in items]
        for start in range(0, len(encoded), ITEM_PUSH_BATCH):
            pipe.rpush(self._job(job_id, "items"), *encoded[start : start + ITEM_PUSH_BATCH])
        for index, data in blobs.items():
            pipe.hset(self._job(job_id, "blobs"), str(index), data)
        pipe.execute()

    def create(
        self,
        job_id: str,
        owner: str,
        *,
        total: int,
        chunk_size: int,
        window: int,
        options: Mapping[str, Any],
        kind: str,
        max_active: int,
        token: str | None,
        token_ttl: int,
    ) -> int:
        """Make the job record (queued), unless the token made one (TokenReused) or the owner
        has `max_active` active jobs (TooManyActive); then the written items are removed.

        Returns how many chunks to queue now (chunks 0 to n-1): what the owner's `window` has
        free; the others are handed out as the owner's chunks finish (:meth:`feed`)."""
        now = time.time()
        chunks = -(-total // chunk_size)
        fields = {
            "job_id": job_id,
            "owner": owner,
            "state": "queued",
            "kind": kind,
            "total": total,
            "done": 0,
            "failed": 0,
            "created": repr(now),
            "options": json.dumps(options, separators=(",", ":")),
            "chunk_size": chunk_size,
            "chunks": chunks,
        }
        flat = [str(value) for pair in fields.items() for value in pair]
        keys = [
            self._job(job_id),
            f"{self.prefix}active:{owner}",
            f"{self.prefix}owner:{owner}",
            f"{self.prefix}all",
            self._token_key(owner, token) if token else "",
            self._inflight(owner),
            f"{self.prefix}inflight_owners",
        ]
        args = [job_id, max_active, repr(now), token_ttl, window, chunks, owner, *flat]
        outcome, value, *first = (part.decode() for part in self._create(keys, args))
        if outcome != "made":
            self.client.delete(self._job(job_id, "items"), self._job(job_id, "blobs"))
            if outcome == "existing":
                raise TokenReused(value)
            raise TooManyActive(int(value))
        return int(first[0])

    # -- reading ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict | None:
        """A job's record as a dict (numbers as numbers), or None."""
        raw = self.client.hgetall(self._job(job_id))
        if not raw:
            return None
        record = {key.decode(): value.decode() for key, value in raw.items()}
        for name in ("total", "done", "failed", "chunk_size", "chunks", "next"):
            record[name] = int(record.get(name, 0))
        for name in ("created", "started", "finished"):
            record[name] = float(record[name]) if record.get(name) else None
        record["options"] = json.loads(record.get("options") or "{}")
        record["error"] = json.loads(record["error"]) if record.get("error") else None
        return record

    def list_ids(self, owner: str | None, limit: int) -> list[str]:
        """The newest job ids of an owner (None: of everyone), newest first."""
        key = f"{self.prefix}all" if owner is None else f"{self.prefix}owner:{owner}"
        return [raw.decode() for raw in self.client.zrevrange(key, 0, limit - 1)]

    def forget_listed(self, owner: str | None, job_ids: Sequence[str]) -> None:
        """Drop expired jobs from the listings (their records are gone)."""
        if job_ids:
            self.client.zrem(f"{self.prefix}all", *job_ids)
            if owner is not None:
                self.client.zrem(f"{self.prefix}owner:{owner}", *job_ids)

    def items(self, job_id: str, start: int, stop: int) -> list[dict]:
        """Items start..stop-1 of a job."""
        raw = self.client.lrange(self._job(job_id, "items"), start, stop - 1)
        return [json.loads(item) for item in raw]

    def blob(self, job_id: str, index: int) -> bytes | None:
        """The bytes of an archive entry not answered yet."""
        return self.client.hget(self._job(job_id, "blobs"), str(index))

    def answered(self, job_id: str, indexes: Sequence[int]) -> list[bool]:
        """Which of these indexes have a result line already."""
        if not indexes:
            return []
        pipe = self.client.pipeline(transaction=False)
        for index in indexes:
            pipe.hexists(self._job(job_id, "results"), str(index))
        return [bool(found) for found in pipe.execute()]

    def state(self, job_id: str) -> str | None:
        """A job's state now (None when it does not exist)."""
        raw = self.client.hget(self._job(job_id), "state")
        return raw.decode() if raw is not None else None

    def result_lines(self, job_id: str, after: int, total: int) -> Iterator[bytes]:
        """Result lines of indexes after `after`, in order, up to the first not yet answered."""
        index = after + 1
        while index < total:
            stop = min(total, index + RESULTS_PAGE)
            fields = [str(i) for i in range(index, stop)]
            for line in self.client.hmget(self._job(job_id, "results"), fields):
                if line is None:
                    return
                yield line
            index = stop

    # -- changing a job ----------------------------------------------------------------------------
    def start(self, job: Mapping[str, Any], chunk: int) -> str | None:
        """A worker begins `chunk`: a queued job becomes running; returns the job's state
        (None: gone)."""
        keys = [self._job(job["job_id"]), self._inflight(job["owner"])]
        state = self._start(keys, [repr(time.time()), f"{job['job_id']}:{chunk}"]).decode()
        return state or None

    def record(
        self, job: Mapping[str, Any], index: int, line: Mapping[str, Any], ttl: int, worker: str
    ) -> bool:
        """Store an item's result line unless it has one; True when this call answered it."""
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=False)
        failed = "1" if "error" in line else "0"
        keys = self._job_keys(job["job_id"], job["owner"]) + [
            f"{self.prefix}figures",
            f"{self.prefix}worker_items",
            f"{self.prefix}worker_seen",
        ]
        args = [index, text, failed, repr(time.time()), ttl, job["job_id"], worker]
        return self._record(keys, args) == 1

    def end(
        self, job: Mapping[str, Any], state: str, ttl: int, reason: Mapping | None = None
    ) -> str | None:
        """Cancel or fail an active job; returns its state afterwards (None: no such job)."""
        keys = self._job_keys(job["job_id"], job["owner"])
        text = json.dumps(reason) if reason else ""
        args = [state, repr(time.time()), ttl, job["job_id"], text]
        return self._end(keys, args).decode() or None

    def feed(self, job: Mapping[str, Any], chunk: int, window: int) -> tuple[str, int] | None:
        """The chunk to queue now that `chunk` of `job` is done, as (job id, chunk): maybe
        another job's of the same owner (None: none, and always None on a redelivery)."""
        job_id, owner = job["job_id"], job["owner"]
        keys = [
            self._job(job_id),
            self._job(job_id, "fed"),
            self._inflight(owner),
            f"{self.prefix}active:{owner}",
        ]
        return _chunk_of(self._feed(keys, [chunk, job_id, repr(time.time()), window]))

    def attempt(self, job_id: str, chunk: int) -> int:
        """Count one more try of a chunk that could not be done; returns the tries so far
        (0: the job is gone)."""
        return int(self._attempt([self._job(job_id)], [f"attempts:{chunk}"]))

    # -- the sweeper (faceapp/jobs/sweeper.py) -------------------------------------------------
    def stale_in_flight(self, older_than: float) -> dict[str, list[tuple[str, float]]]:
        """Chunks in flight, queued or last started more than `older_than` seconds ago, by
        owner: ``{owner: [(member, score), ...]}``; owners with none in flight leave the round."""
        owners = [raw.decode() for raw in self.client.smembers(f"{self.prefix}inflight_owners")]
        ceiling = time.time() - older_than
        found: dict[str, list[tuple[str, float]]] = {}
        for owner in owners:
            key = self._inflight(owner)
            stale = self.client.zrangebyscore(key, "-inf", ceiling, withscores=True)
            if stale:
                found[owner] = [(member.decode(), score) for member, score in stale]
            else:
                self._forget_owner([key, f"{self.prefix}inflight_owners"], [owner])
        return found

    def rescue(self, owner: str, member: str, score: float, window: int) -> tuple[str, int] | None:
        """A chunk in flight that nothing holds: the chunk to queue for it (itself, or the
        owner's next when its job has ended), or None."""
        keys = [
            self._inflight(owner),
            f"{self.prefix}active:{owner}",
            f"{self.prefix}inflight_owners",
            f"{self.prefix}figures",
        ]
        args = [member, repr(score), repr(time.time()), window, owner, self._job("")]
        return _chunk_of(self._rescue(keys, args))

    # -- figures -------------------------------------------------------------------------------
    def counts_by_state(self, limit: int = 10_000) -> dict[str, int]:
        """Jobs by state among the newest `limit` (metrics)."""
        ids = self.list_ids(None, limit)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self._job(job_id), "state")
        counts = dict.fromkeys(STATES, 0)
        for raw in pipe.execute():
            if raw is not None and raw.decode() in counts:
                counts[raw.decode()] += 1
        return counts

    def figures(self, queue_key: str, forget_after: float) -> dict:
        """Items answered and failed, chunks waiting, lost chunks the sweeper recovered, and each
        worker's items and last answer (workers silent for `forget_after` seconds are dropped)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(f"{self.prefix}figures")
        pipe.llen(queue_key)
        pipe.hgetall(f"{self.prefix}worker_items")
        pipe.hgetall(f"{self.prefix}worker_seen")
        totals, depth, items, seen = pipe.execute()
        now = time.time()
        workers, stale = {}, []
        for raw, when in seen.items():
            name = raw.decode()
            if now - float(when) > forget_after:
                stale.append(raw)
            else:
                workers[name] = (int(items.get(raw, 0)), now - float(when))
        if stale:
            self.client.hdel(f"{self.prefix}worker_seen", *stale)
            self.client.hdel(f"{self.prefix}worker_items", *stale)
        return {
            "items_done": int(totals.get(b"items_done", 0)),
            "items_failed": int(totals.get(b"items_failed", 0)),
            "chunks_requeued": int(totals.get(b"chunks_requeued", 0)),
            "chunks_released": int(totals.get(b"chunks_released", 0)),
            "queue_depth": int(depth),
            "workers": workers,
        }

    def ping(self) -> None:
        self.client.ping()
