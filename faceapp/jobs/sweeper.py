"""The sweeper: chunks lost between the queue and a worker are queued again.

Celery's Redis transport (kombu) takes a task off the queue with ``BRPOP`` and only then, in a
second round trip, writes it into the ``unacked`` hash that the visibility timeout restores
from. A worker killed between the two (SIGKILL, a host gone) takes the task with it: it is in no
queue and not unacked, so nothing ever restores it (kombu #305, celery #4354). A job is a few
chains of chunks, each queuing the next, so one such task left its job short for ever. It was
seen, not guessed: in one of three CI runs a whole worker SIGKILLed right after it finished a
chunk left its job at 20 of 24 items; the Redis append-only file showed the next chunk's
``RPOP`` and no ``ZADD unacked_index`` after it.

So the job store keeps its own record of what is in flight (``inflight:<owner>``, by when each
chunk was queued or last started; faceapp/jobs/store.py), and every worker looks, each few
seconds, for chunks in flight longer than ``JOBS_VISIBILITY_TIMEOUT`` that neither a queue nor
the unacked hash holds. Those go back to the queue (or, when their job has ended, their place in
the owner's window goes to the owner's next chunk). A chunk that was in transit at that instant
runs twice at worst, which chunks are made to survive (faceapp/jobs/runner.py). Each chunk
recovered so is counted in Redis, in the same script that takes it
(``faceapp_jobs_chunks_recovered_total`` in /metrics): a count that keeps rising means workers
keep dying between taking a task and recording it.

The sweep reads the queue and the unacked hash whole, which costs a few kB per chunk waiting;
it does so only when some chunk has been in flight longer than the visibility timeout.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import bootsteps
from flask import Flask

from faceapp.jobs import jobs
from faceapp.jobs.tasks import TASK_NAME, queue_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerKeys:
    """Where the broker keeps tasks: its queue lists and its unacked hash
    (faceapp/jobs/celery_app.py knows the names)."""

    queues: tuple[str, ...]
    unacked: str


def sweep_interval(visibility_timeout: int) -> float:
    """Seconds between sweeps: as often as kombu looks for timed-out unacked tasks."""
    return float(max(1, min(10, visibility_timeout // 4)))


def held_chunks(client: Any, keys: BrokerKeys) -> set[str]:
    """The chunks (``<job id>:<chunk>``) the broker holds: queued, or handed to a worker and not
    yet acknowledged. Read in one transaction, so that a task moving between the two is seen."""
    pipe = client.pipeline(transaction=True)
    for key in keys.queues:
        pipe.lrange(key, 0, -1)
    pipe.hvals(keys.unacked)
    *queues, unacked = pipe.execute()
    messages: list[Any] = [raw for queue in queues for raw in queue]
    messages += [_first(raw) for raw in unacked]
    return {chunk for chunk in map(task_chunk, messages) if chunk}


def sweep(app: Flask, keys: BrokerKeys) -> int:
    """Queue again the chunks in flight that nothing holds; returns how many were queued."""
    with app.app_context():
        store = jobs.store
        older_than = int(app.config["JOBS_VISIBILITY_TIMEOUT"])
        window = int(app.config["JOBS_WINDOW"])
        stale = store.stale_in_flight(older_than)
        if not stale:
            return 0
        held = held_chunks(store.client, keys)
        queued = 0
        for owner, members in stale.items():
            for member, score in _not_held(members, held):
                nxt = store.rescue(owner, member, score, window)
                if nxt is not None:
                    log.warning("chunk %s was lost in transit; queued %s:%d again", member, *nxt)
                    queue_chunk(*nxt)
                    queued += 1
        return queued


def _not_held(members: Iterable[tuple[str, float]], held: set[str]) -> list[tuple[str, float]]:
    return [(member, score) for member, score in members if member not in held]


def _first(raw: bytes) -> Any:
    """An unacked entry is ``[message, exchange, routing key]``."""
    try:
        return json.loads(raw)[0]
    except (ValueError, LookupError, TypeError):
        return None


def task_chunk(raw: Any) -> str | None:
    """``<job id>:<chunk>`` of a run_chunk task message, else None."""
    try:
        message = json.loads(raw) if isinstance(raw, bytes | str) else raw
        if message["headers"]["task"] != TASK_NAME:
            return None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return f"{args[0]}:{int(args[1])}"
    except (ValueError, LookupError, TypeError):
        return None


def worker_step(app: Flask, keys: BrokerKeys) -> type[bootsteps.StartStopStep]:
    """A worker bootstep that sweeps every :func:`sweep_interval` seconds on the worker's timer
    (Celery's "Extensions and Bootsteps"). Every worker sweeps; two at once queue nothing
    twice (:meth:`JobStore.rescue` takes a chunk only if no one moved it since it was read)."""
    interval = sweep_interval(int(app.config["JOBS_VISIBILITY_TIMEOUT"]))

    def sweep_logged() -> None:
        try:
            sweep(app, keys)
        except Exception:  # noqa: BLE001 - Redis away, say: the next sweep tries again
            log.warning("the sweep for lost chunks failed; next in %.0f s", interval, exc_info=True)

    class LostChunkSweeper(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.tref = None

        def start(self, worker: Any) -> None:
            self.tref = worker.timer.call_repeatedly(interval, sweep_logged, priority=10)

        def stop(self, worker: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None

    return LostChunkSweeper
