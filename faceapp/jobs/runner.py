"""One chunk of a job: its items through the pipeline, each line recorded once, the owner's next
chunk queued.

A chunk may run more than once (a worker lost mid-chunk, a visibility timeout passed): items
already answered are skipped, a line is recorded only if the index has none
(:meth:`JobStore.record`), and only the first run queues a chunk after it
(:meth:`JobStore.feed`). So a redelivery costs little and changes nothing.

The chunk's items run on a few threads, so that their faces meet in the worker's inference
batches (faceapp/engine.py) and one item's download overlaps another's decoding.

Passing trouble (Redis restarting, the model still loading) is waited out here, while the task
is still held; if it lasts, the task goes back to the queue (:class:`Retry`), never lost, up to
``JOBS_MAX_ATTEMPTS`` tries. Then the chunk's items get an error line (``model.unavailable`` for
a model that never loads) and the job fails: a chunk does not come back forever.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask, current_app, g
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from faceapp.access import Caller
from faceapp.inputs import ImageSource
from faceapp.jobs import item as pipeline
from faceapp.jobs import jobs

log = logging.getLogger(__name__)

#: Error codes of a line that say "try again later", not "this item is bad".
TRANSIENT_CODES = frozenset({"store.unavailable", "model.busy", "model.not_ready"})
# Redis not answering, to the job store or to Celery's publisher (kombu's OperationalError).
REDIS_OUTAGES = (RedisConnectionError, RedisTimeoutError, OperationalError)
#: The code of the line an item gets when its chunk gives up (JOBS_MAX_ATTEMPTS), by trouble.
GIVE_UP_CODES = {
    "model.not_ready": "model.unavailable",
    "model.busy": "model.unavailable",
    "store.unavailable": "store.unavailable",
}
ITEM_THREADS = 4
PATIENCE_S = 60.0  # how long passing trouble is waited out before the chunk goes back


class Retry(Exception):
    """The chunk could not be done now (Redis or the model unavailable): queue it again."""


def run_chunk(job_id: str, chunk: int, queue_chunk: Callable[[str, int], None]) -> str:
    """Answer the items of one chunk, then queue the owner's next chunk; returns what happened.

    An unexpected error fails the whole job (state failed, with the reason), so that a job never
    waits forever on a chunk that cannot be done.
    """
    store = jobs.store
    job = _patiently(lambda: store.get(job_id))
    if job is None:
        return "gone"  # expired, or lost with Redis's data: the API answers 404 for it
    try:
        outcome = _run(store, job, chunk)
    except (Retry, *REDIS_OUTAGES):
        raise
    except Exception:
        log.exception("job %s chunk %d failed; the job fails", job_id[:8], chunk)
        reason = {"code": "internal", "message": "A worker hit an unexpected error (logged)."}
        _patiently(lambda: store.end(job, "failed", _ttl(), reason))
        raise
    # Whatever became of this chunk's job, its place in the owner's window goes on.
    window = int(current_app.config["JOBS_WINDOW"])
    nxt = _patiently(lambda: store.feed(job, chunk, window))
    if nxt is not None:
        _patiently(lambda: queue_chunk(*nxt))
    return outcome


def _run(store: Any, job: dict, chunk: int) -> str:
    job_id = job["job_id"]
    state = _patiently(lambda: store.start(job, chunk))
    if state != "running":
        return state or "gone"  # cancelled or finished: nothing more to do
    first = chunk * job["chunk_size"]
    last = min(job["total"], first + job["chunk_size"])
    items = _patiently(lambda: store.items(job_id, first, last))
    if len(items) != last - first:
        reason = {
            "code": "jobs.unavailable",
            "message": "The job's items were lost from Redis (restarted without persistence?).",
        }
        _patiently(lambda: store.end(job, "failed", _ttl(), reason))
        log.error("job %s failed: its items are gone", job_id[:8])
        return "failed"
    done = _patiently(lambda: store.answered(job_id, list(range(first, last))))
    todo = [(first + k, spec) for k, spec in enumerate(items) if not done[k]]
    if todo:
        app = current_app._get_current_object()
        outcomes = list(_item_pool().map(lambda pair: _answer(app, job, *pair), todo))
        troubles = [outcome for outcome in outcomes if outcome not in ("done", "skipped")]
        if troubles:
            return _give_up_or_retry(store, job, chunk, todo, troubles[0])
    return "done"


def _give_up_or_retry(store: Any, job: dict, chunk: int, todo: list, trouble: str) -> str:
    """A chunk whose items met lasting trouble goes back to the queue (Retry), up to
    JOBS_MAX_ATTEMPTS tries; then its unanswered items get an error line and the job fails,
    rather than a chunk coming back forever (a model that never loads)."""
    job_id = job["job_id"]
    attempts = _patiently(lambda: store.attempt(job_id, chunk))
    limit = int(current_app.config["JOBS_MAX_ATTEMPTS"])
    if attempts < limit:
        raise Retry(f"job {job_id[:8]} chunk {chunk}: {trouble} (try {attempts} of {limit})")
    code = GIVE_UP_CODES.get(trouble, "jobs.unavailable")
    message = f"Gave up after {attempts} tries of {PATIENCE_S:.0f} s: {trouble}."
    _patiently(lambda: store.end(job, "failed", _ttl(), _error(code, message)))
    for index, spec in todo:  # after the end, so that the job does not count as succeeded
        line = {"index": index, "source": source_name(spec), "error": _error(code, message)}
        _patiently(lambda i=index, line=line: store.record(job, i, line, _ttl(), worker_name()))
    log.error("job %s failed: chunk %d gave up (%s): %s", job_id[:8], chunk, code, message)
    return "failed"


def _answer(app: Flask, job: Mapping[str, Any], index: int, spec: Mapping[str, Any]) -> str:
    """Process and record one item (unless the job ended meanwhile): 'done' or 'skipped', else
    the trouble that lasted PATIENCE_S (an error code, or the Redis error's name)."""
    with app.app_context():
        store = jobs.store
        g.request_id = f"job-{job['job_id'][:12]}"  # traces name the job that asked
        g.caller = Caller(key_id=job["owner"] if job["owner"] != "-" else None)
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                if store.state(job["job_id"]) != "running":
                    return "skipped"  # cancelled: items not started are never processed
                line = _line(job, index, spec)
                code = line.get("error", {}).get("code")
                if code not in TRANSIENT_CODES:
                    store.record(job, index, line, _ttl(), worker_name())
                    return "done"
            except REDIS_OUTAGES as exc:
                code = type(exc).__name__
            if time.monotonic() > deadline:
                log.warning(
                    "job %s item %d: still %s; the chunk goes back", job["job_id"][:8], index, code
                )
                return code
            time.sleep(1.0)


def _line(job: Mapping[str, Any], index: int, spec: Mapping[str, Any]) -> dict:
    """The result line of one item: index and source first, then the pipeline's fields."""
    name = source_name(spec)
    if "error" in spec:  # refused when the job was made (an archive's bad entry)
        return {"index": index, "source": name, "error": spec["error"]}
    options = job["options"]
    if "image_url" in spec:
        source = ImageSource("image_url", spec["image_url"])
    elif "image_id" in spec:
        source = spec["image_id"]
    else:
        data = jobs.store.blob(job["job_id"], index)
        if data is None:  # answered meanwhile by another run of this chunk
            return {"index": index, "source": name, "error": _gone()}
        source = pipeline.entry_source(name, data)
    try:
        answer = pipeline.process_item(source, options)
    except REDIS_OUTAGES:
        raise
    except Exception:  # noqa: BLE001 - one broken item must not stop the job; it is logged
        log.exception("job %s item %d failed unexpectedly", job["job_id"][:8], index)
        answer = {"error": _error("internal", "The item hit an unexpected error.")}
    return {"index": index, "source": name, **answer}


def source_name(spec: Mapping[str, Any]) -> str:
    """An item's ``source`` in its line: the URL, the image id or the archive entry's name."""
    for field in ("image_url", "image_id", "archive", "source"):
        if field in spec:
            return spec[field]
    raise ValueError(f"an item without a source: {sorted(spec)}")


_POOL: dict[int, ThreadPoolExecutor] = {}


def _item_pool() -> ThreadPoolExecutor:
    """This process's item threads, kept from chunk to chunk: each thread's face detector (one
    per thread, faceapp/faces.py) is built once, not again for every chunk."""
    pid = os.getpid()
    if pid not in _POOL:  # a forked child never uses its parent's threads
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(ITEM_THREADS, thread_name_prefix="faceapp-job-item")
    return _POOL[pid]


def worker_name() -> str:
    """This pool process, as the per-worker metrics name it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone() -> dict:
    return _error("internal", "The archive entry was no longer stored.")


def _error(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def _ttl() -> int:
    return int(current_app.config["JOB_TTL"])


def _patiently(call: Callable[[], Any]) -> Any:
    """`call()`, retried while Redis does not answer, for up to PATIENCE_S; then Retry."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            return call()
        except REDIS_OUTAGES as exc:
            if time.monotonic() > deadline:
                raise Retry(f"Redis unavailable: {exc}") from exc
            time.sleep(1.0)
