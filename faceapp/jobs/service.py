"""The service functions behind /api/jobs and the tester's Jobs page: make, read, list, cancel.

A job belongs to the key that made it (its key id; ``-`` on a service without keys). Another
key is told 404 ``job.not_found``, as for a job that never existed; an admin key sees every job.
Redis not answering is 503 ``jobs.unavailable`` here, never a 500.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from flask import current_app
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from faceapp import analysis
from faceapp.access import Caller
from faceapp.errors import FaceappError
from faceapp.jobs import jobs, unavailable_error
from faceapp.jobs.archive import read_archive
from faceapp.jobs.store import TokenReused, TooManyActive, is_job_id, new_job_id
from faceapp.store import IMAGE_ID_RE

ANONYMOUS = "-"  # the owner of jobs made without a key (API_KEYS unset)
LIST_LIMIT = 100
MAX_URL_CHARS = 4096


@contextmanager
def answering_outages() -> Iterator[None]:
    """Redis or the broker not answering becomes 503 jobs.unavailable."""
    try:
        yield
    except (RedisError, OperationalError) as exc:
        raise unavailable_error(f"Redis does not answer: {type(exc).__name__}") from exc


def owner_of(caller: Caller) -> str:
    """Whose a job is: the caller's key id, or ``-`` without a key."""
    return caller.key_id or ANONYMOUS


def check_items(raw: Any, max_items: int) -> list[dict]:
    """The items of a JSON job, each ``{"image_url": str}`` or ``{"image_id": str}``; the first
    bad one is 400 input.invalid naming its index, and too many is 413 jobs.too_many_items."""
    if not isinstance(raw, list) or not raw:
        raise FaceappError("input.invalid", "items: give a non-empty list.", field="items")
    if len(raw) > max_items:
        raise FaceappError(
            "jobs.too_many_items",
            f"items: {len(raw)} given; a job takes at most {max_items} (MAX_JOB_ITEMS).",
            field="items",
        )
    for index, item in enumerate(raw):
        problem = _item_problem(item)
        if problem:
            raise FaceappError(
                "input.invalid", f"items[{index}]: {problem}", field=f"items[{index}]"
            )
    return raw


def _item_problem(item: Any) -> str | None:
    if not isinstance(item, dict) or len(item) != 1:
        return "give an object with exactly one of image_url and image_id."
    ((key, value),) = item.items()
    if key == "image_url":
        if not isinstance(value, str) or not 0 < len(value) <= MAX_URL_CHARS:
            return f"image_url must be a string of 1 to {MAX_URL_CHARS} characters."
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            return "image_url must be an http or https URL."
        return None
    if key == "image_id":
        if not isinstance(value, str) or not IMAGE_ID_RE.fullmatch(value):
            return "image_id must be 64 lowercase hex characters (the image's SHA-256)."
        return None
    return f"{str(key)[:40]!r} is not image_url or image_id."


def create_job(
    caller: Caller,
    options: Mapping[str, Any],
    items: list[dict] | None,
    archive: IO[bytes] | None,
) -> tuple[dict, bool]:
    """Make a job of `items` (or of `archive`'s entries) and queue its first chunks.

    Returns the job's answer and whether it is new (False: its client_token made it before).
    """
    from faceapp.jobs.tasks import queue_chunk

    config = current_app.config
    store = jobs.store  # 503 jobs.unavailable without Redis, before the items are looked at
    analysis.check_attribute_names(options.get("attributes"))  # a typo: 400 now, not per item
    if options.get("max_faces") is not None:  # over MAX_FACES_LIMIT: 400 now, not per item
        analysis.check_max_faces(options["max_faces"], config)
    owner = owner_of(caller)
    token = options.get("client_token")
    analyze_options = {key: value for key, value in options.items() if key != "client_token"}
    with answering_outages():
        existing = store.token_job(owner, token)
        if existing is not None and (job := store.get(existing)) is not None:
            return describe(job), False
        blobs: dict[int, bytes] = {}
        if archive is not None:
            items, blobs = read_archive(archive, config)
            kind = "archive"
        else:
            items = check_items(items, int(config["MAX_JOB_ITEMS"]))
            kind = "items"
        job_id = new_job_id()
        chunk_size = int(config["JOBS_CHUNK_SIZE"])
        window = int(config["JOBS_WINDOW"])
        store.write_items(job_id, items, blobs)
        try:
            first = store.create(
                job_id,
                owner,
                total=len(items),
                chunk_size=chunk_size,
                window=window,
                options=analyze_options,
                kind=kind,
                max_active=int(config["MAX_ACTIVE_JOBS"]),
                token=token,
                token_ttl=int(config["JOB_TTL"]),
            )
        except TokenReused as reused:
            return describe(_owned(reused.job_id, caller)), False
        except TooManyActive as busy:
            raise FaceappError(
                "jobs.too_many_active",
                f"This key has {busy.active} jobs queued or running, the most allowed "
                "(MAX_ACTIVE_JOBS); wait for one to finish or cancel one.",
            ) from None
        job = store.get(job_id)
        try:
            for chunk in range(first):
                queue_chunk(job_id, chunk)
        except (RedisError, OperationalError) as exc:
            reason = {"code": "jobs.unavailable", "message": "The job could not be queued."}
            store.end(job, "failed", int(config["JOB_TTL"]), reason)
            message = f"the broker did not take the job: {type(exc).__name__}"
            raise unavailable_error(message) from exc
        return describe(job), True


def readiness() -> dict:
    """/api/ready's ``jobs``: whether jobs are taken now, and why not (never fails the probe:
    the interactive API serves without them)."""
    if not jobs.available():
        return {"available": False, "reason": "no Redis: set STORE_URL=redis://... or BROKER_URL"}
    try:
        jobs.store.ping()
    except RedisError as exc:
        return {"available": False, "reason": f"Redis does not answer ({type(exc).__name__})"}
    return {"available": True}


def get_job(job_id: str, caller: Caller) -> dict:
    """GET /api/jobs/<id>: the job's state and progress."""
    with answering_outages():
        return describe(_owned(job_id, caller))


def list_jobs(caller: Caller, limit: int = LIST_LIMIT) -> dict:
    """GET /api/jobs: the caller's newest jobs (every job for an admin key), newest first."""
    store = jobs.store
    owner = None if caller.admin else owner_of(caller)
    with answering_outages():
        found, gone = [], []
        for job_id in store.list_ids(owner, limit):
            job = store.get(job_id)
            if job is None:
                gone.append(job_id)  # expired after JOB_TTL
            else:
                found.append(describe(job))
        store.forget_listed(owner, gone)
    return {"jobs": found}


def cancel_job(job_id: str, caller: Caller) -> dict:
    """DELETE /api/jobs/<id>: items not started are never processed; 409 once it has ended."""
    store = jobs.store
    with answering_outages():
        job = _owned(job_id, caller)
        state = store.end(job, "cancelled", int(current_app.config["JOB_TTL"]))
        if state not in ("cancelled", None):
            raise FaceappError("job.finished", f"The job has {state} already; nothing to cancel.")
        return describe(store.get(job_id) or job)


def result_lines(job_id: str, caller: Caller, after: int) -> tuple[dict, Iterator[bytes]]:
    """The job, and its result lines after index `after` in index order (NDJSON chunks), up to
    the first item not answered yet."""
    store = jobs.store
    with answering_outages():
        job = _owned(job_id, caller)

    def chunks() -> Iterator[bytes]:
        page: list[bytes] = []
        try:
            for line in store.result_lines(job_id, after, job["total"]):
                page.append(line)
                if len(page) >= 200:
                    yield b"\n".join(page) + b"\n"
                    page = []
        except RedisError:
            pass  # the stream ends early; the client resumes with ?after= its last index
        if page:
            yield b"\n".join(page) + b"\n"

    return describe(job), chunks()


def _owned(job_id: str, caller: Caller) -> dict:
    """The job if it exists and the caller may see it; else 404 job.not_found."""
    job = jobs.store.get(job_id) if is_job_id(job_id) else None
    if job is None or not (caller.admin or job["owner"] == owner_of(caller)):
        raise FaceappError(
            "job.not_found",
            "No job of yours has this id; it expired (JOB_TTL), or belongs to another key.",
            field="job_id",
        )
    return job


def describe(job: Mapping[str, Any]) -> dict:
    """A job's answer: state, counts, times, speed and ETA."""
    now = time.time()
    started, finished = job["started"], job["finished"]
    elapsed = ((finished or now) - started) if started else None
    done, total = job["done"], job["total"]
    rate = done / elapsed if elapsed and done else None
    active = job["state"] in ("queued", "running")
    eta = (total - done) / rate if rate and active else (0.0 if not active else None)
    answer = {
        "job_id": job["job_id"],
        "state": job["state"],
        "kind": job["kind"],
        "total": total,
        "done": done,
        "failed": job["failed"],
        "created_at": _iso(job["created"]),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "images_per_second": round(rate, 2) if rate else None,
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "options": job["options"],
        "results": f"/api/jobs/{job['job_id']}/results",
    }
    if job.get("error"):
        answer["error"] = job["error"]
    return answer


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
