"""The inference thread: one per worker process, and the only thread that calls torch.

Every OS thread that runs torch gets its own OpenMP team, and two teams on the same cores fight
over them (the same forward took 49 ms on the first thread and 69 ms on a second one). So the
request threads never call the model: they hand it work here and wait, with a timeout.

Throughput work on the CPU (``flask batch``) may run ``INFERENCE_THREADS`` such threads over one
queue instead, each with ``TORCH_THREADS`` of the cores' share (one each on 2 cores): a forward
on one torch thread has no team and no barriers, so pool threads decoding and detecting beside
it slow it by the time they take, not by twice that as when one of two team threads is
preempted; and one thread per core gets more images per second from the cores than one team
across them (34.6 against 30.2 images/s at batch 8, 2-core AMD EPYC).

The thread sleeps while the queue is empty (no polling, no fixed batching delay). When it wakes,
it fills one batch of up to ``INFERENCE_MAX_BATCH`` items (faces, or labels) from every queued job
that can share its forward pass (same batch function), runs it, and hands each job its own rows.

The queue is fair between clients (an API key, or an address without keys), and it counts
items, not requests: each client has its own queue, the clients take turns to start a batch,
and a batch is shared out equally between the clients waiting (a client with less waiting leaves
its share to the others); the clients served go behind those that were not. A job of many faces
is served a share at a time over several batches, so it never stands in front of another
client's single face: that face waits for the batch running now and is in the next one (with
more clients waiting than a batch holds, they take turns). Measured before this (issue 22):
three 100-face requests from one key made another key's one-face analyze wait 28 s. A client
may also have only ``INFERENCE_MAX_WAITING_PER_CLIENT`` items waiting at a time; more is 429
``rate.limited``, so a flood does not hold the worker's request threads either.

A batch that fails is run again piece by piece, so an error reaches only the request it belongs
to. Every piece taken off the queue is settled (rows, or its job's error) before the next batch
starts, so a failure never hangs the queue. :meth:`InferenceEngine.stop` (gunicorn's worker_exit and
worker_int hooks) refuses new work, finishes what is queued and joins the thread.

This is the dynamic batcher of Triton, TorchServe and clip-as-service, with a batching window
that opens only when more work is known to be coming. Requests pile up on their own while a batch
runs, but clients that wait for each answer before sending again (most clients, and every
benchmark of closed-loop load) all come back together a few milliseconds after their batch ends:
without a window the first of them starts a batch of one, the rest queue behind it, and the
batches settle into alternating sizes (a mean of 2.3-2.5 with 8 clients over 2 workers, where 4
was possible; on one thread the encoder takes 72% of its batch-1 time per image at batch 4). So the
thread remembers the demand of its last few batches (the items in each batch plus those that
came while it ran) and, when fewer items wait than that, waits for the rest: at most
``INFERENCE_BATCH_WAIT`` seconds, and never more than a tenth of the last batch's compute time. A
lone client's demand is 1, so it never waits; demand forgets a client that left after a few batches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from faceapp.errors import FaceappError
from faceapp.extension import Slot

log = logging.getLogger(__name__)

EXTENSION_KEY = "faceapp.engine"
SLOT = Slot(EXTENSION_KEY, "faceapp.engine.engine.init_app(app)")
BatchFn = Callable[[list], Any]
#: Batches whose demand the window remembers (items in each plus those that came while it ran).
DEMAND_MEMORY = 4
#: The window never waits more than this fraction of the last batch's compute time.
WAIT_FRACTION = 0.1


@dataclass(frozen=True)
class JobStats:
    """How a job fared: time queued, time in its batch's forward pass, and that batch's size."""

    queue_ms: float
    compute_ms: float
    batch_size: int


@dataclass(eq=False)  # a job is itself: the queue removes it by identity, never by its items
class _Job:
    items: list
    batch_fn: BatchFn | None  # None: `call` runs alone
    call: Callable[[], Any] | None
    finish: Callable[[Any], Any] | None
    client: str = ""  # whose turn it takes in the queue (a key id or an address)
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)
    taken: int = 0  # items handed to batches so far (a job of many faces spans several)
    blocks: list = field(default_factory=list)  # (start, rows) of the items computed so far
    done: int = 0  # items whose rows are in
    stats: JobStats | None = None  # of its first batch; compute_ms summed over its batches
    abandoned: bool = False  # its waiter gave up: the items not yet taken never run


@dataclass
class _Demand:
    """What the last batches of one kind asked for: the items in each plus those waiting when it
    ended (the batching window's target), and the last batch's compute time (the window's cap)."""

    recent: deque[int] = field(default_factory=lambda: deque(maxlen=DEMAND_MEMORY))
    compute_s: float = 0.0


@dataclass
class _Piece:
    """Items ``job.items[start:end]``, one job's share of a batch."""

    job: _Job
    start: int
    end: int


class InferenceEngine:
    """One worker's inference thread and its queue (plain object; see :class:`Engine` for Flask)."""

    def __init__(
        self,
        max_batch: int = 8,
        timeout: float = 60.0,
        name: str = "faceapp-infer",
        max_client_items: int = 0,
        batch_wait: float = 0.0,
        threads: int = 1,
    ):
        if max_batch < 1:
            raise ValueError("INFERENCE_MAX_BATCH must be at least 1")
        if threads < 1:
            raise ValueError("INFERENCE_THREADS must be at least 1")
        self.max_batch = max_batch
        self.threads = threads
        self.timeout = timeout
        self.name = name
        # Items (faces, labels) one client may have waiting; 0: no limit. A job larger than
        # this is still taken when the client has nothing else waiting.
        self.max_client_items = max_client_items
        # Seconds a batch may wait for the items its recent demand says are coming; 0: never.
        self.batch_wait = batch_wait
        self._demand: dict[BatchFn, _Demand] = {}  # per kind of batch (images, texts)
        self._queues: dict[str, deque[_Job]] = {}  # per client, oldest first
        self._ring: deque[str] = deque()  # clients with work waiting, whose turn is next first
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.batches = 0  # forward passes run (tests and the bench read it)
        self.waits = 0  # batches that waited for more items (the batching window opened)
        self.served: list[list[tuple[str, int]]] = []  # (client, items) per batch; see `record`
        self.record = False  # tests and the bench turn it on to see the order served

    # -- request side ------------------------------------------------------------------------
    def run(self, call: Callable[[], Any], *, timeout: float | None = None) -> Any:
        """Run `call()` on the inference thread, alone, and return what it returns."""
        result, _ = self._wait(_Job([], None, call, None), timeout)
        return result

    def encode(
        self,
        batch_fn: BatchFn,
        items: Sequence[Any],
        finish: Callable[[Any], Any] | None = None,
        *,
        timeout: float | None = None,
        client: str = "",
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[Any, JobStats]:
        """`batch_fn(items)` (batched with other jobs of the same batch_fn), then `finish(rows)`.

        `batch_fn` maps a list to a tensor-like value with one row per item; `finish` runs on the
        inference thread too, on this job's rows only (for work that must stay off the request
        threads, like the scoring that follows an encoding). `client` names whose turn the job
        takes: clients are served in turn, a fair share of each batch's items each, so many
        items from one client never stand in front of another's few. `meanwhile` runs on this
        thread once the job is queued, while the model works (what raises there cancels the job
        and is raised here).
        """
        if not items:
            raise ValueError("encode needs at least one item")
        job = _Job(list(items), batch_fn, None, finish, client)
        return self._wait(job, timeout, meanwhile)

    def in_engine_thread(self) -> bool:
        """True on the inference thread (work it does for itself runs directly, not queued)."""
        return threading.current_thread() in self._threads

    def _submit(self, job: _Job) -> _Job:
        with self._cond:
            if not self._accepting:
                raise FaceappError(
                    "model.not_ready", "This worker is shutting down; send the request again."
                )
            self._check_client_share_locked(job)
            self._start_locked()
            queue = self._queues.get(job.client)
            if queue is None:
                queue = self._queues[job.client] = deque()
                self._ring.append(job.client)
            queue.append(job)
            if self.threads > 1:  # each looks: one may be gathering a batch this job completes
                self._cond.notify_all()
            else:
                self._cond.notify()
        return job

    def _check_client_share_locked(self, job: _Job) -> None:
        """429 rate.limited when this client already has its share of items waiting."""
        queue = self._queues.get(job.client)
        if not self.max_client_items or not queue:
            return
        waiting = sum(len(j.items) - j.taken for j in queue)
        if waiting + len(job.items) > self.max_client_items:
            error = FaceappError(
                "rate.limited",
                f"This client already has {waiting} faces or labels waiting for the model "
                f"(at most {self.max_client_items} at a time); retry when they are done.",
            )
            error.retry_after = 1
            raise error

    def _wait(
        self, job: _Job, timeout: float | None, meanwhile: Callable[[], None] | None = None
    ) -> tuple[Any, JobStats]:
        if self.in_engine_thread():  # work the thread asks for itself (a load hook): run inline
            self._run_alone(job)
        else:
            self._submit(job)
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                job.abandoned = True  # taken already: its other items are skipped
                job.future.cancel()  # still queued: it never runs
                raise
        limit = self.timeout if timeout is None else timeout
        try:
            return job.future.result(timeout=limit)
        except FutureTimeout:
            # Still queued: it never runs. Part-way through: its other items are skipped.
            job.abandoned = True
            job.future.cancel()
            raise FaceappError(
                "model.busy",
                f"The model did not get to this request within {limit:g} s; try again later.",
            ) from None

    # -- the thread --------------------------------------------------------------------------
    def _start_locked(self) -> None:
        if self._threads:
            return
        for index in range(self.threads):
            name = self.name if self.threads == 1 else f"{self.name}-{index}"
            thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while not self._ring and not self._stopping:
                        self._cond.wait()
                    if not self._ring:
                        return  # stopping, and everything queued is done
                    self._gather_locked()
                    if self._ring:  # another inference thread may have taken it all meanwhile
                        break
                alone, pieces = self._next_batch_locked()
            if alone is not None:
                self._run_alone(alone)
            elif pieces:
                self._run(pieces)

    def _gather_locked(self) -> None:
        """Wait (briefly, the lock released) for the items recent demand says are coming."""
        head = self._queues[self._ring[0]][0]
        demand = self._demand.get(head.batch_fn) if head.batch_fn is not None else None
        if self.batch_wait <= 0 or demand is None or not demand.recent:
            return
        target = min(self.max_batch, max(demand.recent))
        limit = min(self.batch_wait, WAIT_FRACTION * demand.compute_s)
        if limit <= 0 or self._waiting_locked(head.batch_fn) >= target:
            return
        self.waits += 1
        deadline = time.perf_counter() + limit
        while not self._stopping and self._waiting_locked(head.batch_fn) < target:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._cond.wait(left)

    def _note_demand(self, batch_fn: BatchFn, items: int, compute_s: float) -> None:
        """A batch of `items` just ran: its demand is those plus the items that came meanwhile
        (counted before its answers go out, so the clients it served are not counted twice)."""
        with self._cond:
            self.batches += 1
            demand = self._demand.setdefault(batch_fn, _Demand())
            demand.recent.append(items + self._waiting_locked(batch_fn))
            demand.compute_s = compute_s

    def _count_batch(self) -> None:
        with self._cond:
            self.batches += 1

    def _waiting_locked(self, batch_fn: BatchFn) -> int:
        """Items of `batch_fn` queued and not yet handed to a batch."""
        return sum(
            len(job.items) - job.taken
            for queue in self._queues.values()
            for job in queue
            if job.batch_fn == batch_fn and not job.abandoned
        )

    def _next_batch_locked(self) -> tuple[_Job | None, list[_Piece]]:
        """The next batch: the client whose turn it is first, then every client with work of
        the same batch function, a fair share of the items each (a plain call runs alone)."""
        client = self._ring[0]
        head = self._queues[client][0]
        if head.batch_fn is None:
            self._queues[client].popleft()
            self._end_turn_locked(client)
            return head, []
        pieces: list[_Piece] = []
        budget = self.max_batch
        served = [client]
        while budget > 0:
            takers = [c for c in self._ring if self._head_matches_locked(c, head.batch_fn)]
            if not takers:
                break
            share = max(1, budget // len(takers))
            for taker in takers:
                budget -= self._take_locked(taker, head.batch_fn, min(share, budget), pieces)
                served.append(taker)
                if budget == 0:
                    break
        for taker in dict.fromkeys(served):  # served now: behind those that were not
            self._end_turn_locked(taker)
        return None, pieces

    def _head_matches_locked(self, client: str, batch_fn: BatchFn) -> bool:
        """Whether `client` has a job of `batch_fn` waiting."""
        return any(job.batch_fn == batch_fn for job in self._queues.get(client, ()))

    def _take_locked(self, client: str, batch_fn: BatchFn, limit: int, pieces: list) -> int:
        """Up to `limit` items from `client`'s oldest jobs of `batch_fn`, as pieces."""
        queue, taken = self._queues[client], 0
        for job in list(queue):
            if taken >= limit:
                break
            if job.batch_fn != batch_fn:
                continue  # another request's kind of work (texts beside images): its own batch
            if job.abandoned or (job.taken == 0 and not job.future.set_running_or_notify_cancel()):
                queue.remove(job)  # its waiter timed out: what is left of it never runs
                continue
            count = min(limit - taken, len(job.items) - job.taken)
            pieces.append(_Piece(job, job.taken, job.taken + count))
            job.taken += count
            taken += count
            if job.taken == len(job.items):
                queue.remove(job)
        if not queue:
            del self._queues[client]
            self._ring.remove(client)
        return taken

    def _end_turn_locked(self, client: str) -> None:
        """A client just served goes to the back of the turns (or leaves, nothing waiting)."""
        queue = self._queues.get(client)
        if queue is not None and not queue:
            del self._queues[client]
        if client in self._ring:
            self._ring.remove(client)
            if client in self._queues:
                self._ring.append(client)

    def _run(self, pieces: list[_Piece]) -> None:
        items = [item for p in pieces for item in p.job.items[p.start : p.end]]
        if self.record:
            self.served.append([(p.job.client, p.end - p.start) for p in pieces])
        started = time.perf_counter()
        try:
            rows = pieces[0].job.batch_fn(items)
        except Exception:  # noqa: BLE001 - find the job at fault: each piece is run again alone
            log.warning("a batch of %d pieces failed; running them one by one", len(pieces))
            for piece in pieces:
                self._run_piece_alone(piece)
            return
        compute_ms = (time.perf_counter() - started) * 1000
        self._note_demand(pieces[0].job.batch_fn, len(items), compute_ms / 1000)
        offset = 0
        for piece in pieces:
            count = piece.end - piece.start
            self._piece_done(piece, rows[offset : offset + count], started, compute_ms, len(items))
            offset += count

    def _run_piece_alone(self, piece: _Piece) -> None:
        job = piece.job
        if job.future.done():
            return  # an earlier piece of it failed already
        started = time.perf_counter()
        try:
            rows = job.batch_fn(job.items[piece.start : piece.end])
        except Exception as exc:  # noqa: BLE001 - the waiter gets it, the thread lives on
            self._fail(job, exc)
            return
        self._count_batch()
        compute_ms = (time.perf_counter() - started) * 1000
        self._piece_done(piece, rows, started, compute_ms, piece.end - piece.start)

    def _piece_done(
        self, piece: _Piece, rows: Any, started: float, compute_ms: float, batch_size: int
    ) -> None:
        job = piece.job
        if job.future.done():
            return
        # Queue time until its first batch, and that batch's size; compute over all of them.
        first = job.stats or JobStats((started - job.queued) * 1000, 0.0, batch_size)
        job.stats = JobStats(first.queue_ms, first.compute_ms + compute_ms, first.batch_size)
        job.blocks.append((piece.start, rows))
        job.done += piece.end - piece.start
        if job.done < len(job.items):
            return
        blocks = [rows for _, rows in sorted(job.blocks, key=lambda block: block[0])]
        self._settle(job, lambda: _finish(job, _join(blocks)), job.stats)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        job.abandoned = True  # its other items are not worth computing
        if not job.future.done():
            job.future.set_exception(exc)

    def _run_alone(self, job: _Job, running: bool = False) -> None:
        if not running and not job.future.set_running_or_notify_cancel():
            return
        started = time.perf_counter()

        def work() -> Any:
            if job.call is not None:
                return job.call()
            self._count_batch()
            return _finish(job, job.batch_fn(job.items))

        queue_ms = (started - job.queued) * 1000
        self._settle(job, work, JobStats(queue_ms, 0.0, len(job.items)), started)

    def _settle(
        self, job: _Job, work: Callable[[], Any], stats: JobStats, timed: float | None = None
    ) -> None:
        """Run `work` and hand its result or its error to this job's waiter, whatever happens."""
        try:
            value = work()
        except BaseException as exc:  # noqa: BLE001 - the waiter gets it, the thread lives on
            job.future.set_exception(exc)
            return
        if timed is not None:
            stats = JobStats(stats.queue_ms, (time.perf_counter() - timed) * 1000, stats.batch_size)
        job.future.set_result((value, stats))

    # -- shutdown ----------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> bool:
        """Refuse new work, finish what is queued, join the thread; False if it outlives timeout."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            threads = list(self._threads)
            if not threads:
                return True
            self._cond.notify_all()
        if threading.current_thread() in threads:
            return False
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            log.warning("inference thread still busy after %.0f s; leaving it", timeout)
            return False
        return True

    def pending(self) -> int:
        """Jobs waiting in the queue, wholly or in part (not counting the batch being run)."""
        with self._cond:
            return sum(len(queue) for queue in self._queues.values())


def inference_threads(config: Any) -> int:
    """INFERENCE_THREADS, or 1 when unset (``flask batch`` sets it to the cores first)."""
    return max(1, int(config.get("INFERENCE_THREADS") or 1))


def _join(blocks: list) -> Any:
    """One job's rows from the blocks its batches gave, in order (lists, or torch tensors)."""
    if len(blocks) == 1:
        return blocks[0]
    if all(isinstance(block, list | tuple) for block in blocks):
        return [row for block in blocks for row in block]
    import torch  # only a job spread over several batches gets here, on the inference thread

    return torch.cat(list(blocks))


def _finish(job: _Job, rows: Any) -> Any:
    return job.finish(rows) if job.finish is not None else rows


# --------------------------------------------------------------------------------------------
# The Flask extension: one engine per worker process
# --------------------------------------------------------------------------------------------


class Engine:
    """Flask extension giving each worker process its own :class:`InferenceEngine`."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Give `app` its engine's settings; the engine itself starts on first use."""
        slot = _EngineSlot(
            max_batch=int(app.config["INFERENCE_MAX_BATCH"]),
            timeout=float(app.config["INFERENCE_TIMEOUT"]),
            max_client_items=int(app.config.get("INFERENCE_MAX_WAITING_PER_CLIENT") or 0),
            batch_wait=float(app.config.get("INFERENCE_BATCH_WAIT") or 0),
            config=app.config,
        )
        SLOT.register(app, slot)

    def get(self, app: Flask | None = None) -> InferenceEngine:
        """This process's engine (a forked child gets a fresh one: threads do not survive fork)."""
        return SLOT.get(app).current()

    def stop(self, app: Flask, timeout: float = 30.0) -> bool:
        """Drain and stop this process's engine (gunicorn's worker_exit / worker_int)."""
        return SLOT.get(app).stop(timeout) if SLOT.registered(app) else True


@dataclass
class _EngineSlot:
    max_batch: int
    timeout: float
    max_client_items: int = 0
    batch_wait: float = 0.0
    config: Any = None  # the app's config: INFERENCE_THREADS is read when the engine is made
    engine: InferenceEngine | None = None
    pid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> InferenceEngine:
        with self.lock:
            if self.engine is None or self.pid != os.getpid():
                self.engine = InferenceEngine(
                    self.max_batch,
                    self.timeout,
                    max_client_items=self.max_client_items,
                    batch_wait=self.batch_wait,
                    threads=inference_threads(self.config or {}),
                )
                self.pid = os.getpid()
            return self.engine

    def stop(self, timeout: float) -> bool:
        with self.lock:
            engine = self.engine if self.pid == os.getpid() else None
        return engine.stop(timeout) if engine is not None else True


engine = Engine()
