"""The inference thread: one per worker process, and the only thread that calls torch.

Every OS thread that runs torch gets its own OpenMP team, and two teams on the same cores fight
over them (the same forward took 49 ms on the first thread and 69 ms on a second one). So the
request threads never call the model: they hand it work here and wait, with a timeout.

The thread sleeps while the queue is empty (no polling, no fixed batching delay). When it wakes,
it takes the oldest job and every queued job that can share its forward pass (same batch
function), up to ``INFERENCE_MAX_BATCH`` items, runs them as one batch, and hands each job its own
rows. A batch that fails is run again job by job, so an error reaches only the request it belongs
to. Every job taken off the queue is settled (result or error) before the next one starts, so a
failure never hangs the queue. :meth:`InferenceEngine.stop` (gunicorn's worker_exit and
worker_int hooks) refuses new work, finishes what is queued and joins the thread.

This is the dynamic batcher of Triton, TorchServe and clip-as-service without their batching
window: a window only adds latency on a machine where the model itself is the bottleneck, since
requests pile up on their own while a batch runs.
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

from flask import Flask, current_app

from faceapp.errors import FaceappError

log = logging.getLogger(__name__)

EXTENSION_KEY = "faceapp.engine"
BatchFn = Callable[[list], Any]


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
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)
    started: float = 0.0


_STOP = object()


class InferenceEngine:
    """One worker's inference thread and its queue (plain object; see :class:`Engine` for Flask)."""

    def __init__(self, max_batch: int = 8, timeout: float = 60.0, name: str = "faceapp-infer"):
        if max_batch < 1:
            raise ValueError("INFERENCE_MAX_BATCH must be at least 1")
        self.max_batch = max_batch
        self.timeout = timeout
        self.name = name
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self.batches = 0  # forward passes run (tests and the bench read it)

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
    ) -> tuple[Any, JobStats]:
        """`batch_fn(items)` (batched with other jobs of the same batch_fn), then `finish(rows)`.

        `batch_fn` maps a list to a tensor-like value with one row per item; `finish` runs on the
        inference thread too, on this job's rows only (for work that must stay off the request
        threads, like the scoring that follows an encoding).
        """
        if not items:
            raise ValueError("encode needs at least one item")
        return self._wait(_Job(list(items), batch_fn, None, finish), timeout)

    def in_engine_thread(self) -> bool:
        """True on the inference thread (work it does for itself runs directly, not queued)."""
        return threading.current_thread() is self._thread

    def _submit(self, job: _Job) -> _Job:
        with self._cond:
            if not self._accepting:
                raise FaceappError(
                    "model.not_ready", "This worker is shutting down; send the request again."
                )
            self._start_locked()
            self._queue.append(job)
            self._cond.notify()
        return job

    def _wait(self, job: _Job, timeout: float | None) -> tuple[Any, JobStats]:
        if self.in_engine_thread():  # work the thread asks for itself (a load hook): run inline
            self._run_alone(job)
        else:
            self._submit(job)
        limit = self.timeout if timeout is None else timeout
        try:
            return job.future.result(timeout=limit)
        except FutureTimeout:
            job.future.cancel()  # still queued: it never runs; already running: it finishes unseen
            raise FaceappError(
                "model.busy",
                f"The model did not get to this request within {limit:g} s; try again later.",
            ) from None

    # -- the thread --------------------------------------------------------------------------
    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                first = self._queue.popleft()
                if first is _STOP:
                    return
                batch = [first] + self._take_companions_locked(first)
            self._run(batch)

    def _take_companions_locked(self, first: _Job) -> list[_Job]:
        """Queued jobs that can share `first`'s forward pass, oldest first, up to max_batch."""
        if first.batch_fn is None:
            return []
        taken, size = [], len(first.items)
        for job in list(self._queue):
            if job is _STOP:
                break  # what was queued after stop() was asked for is not ours to take
            if job.batch_fn != first.batch_fn or size + len(job.items) > self.max_batch:
                continue
            self._queue.remove(job)
            taken.append(job)
            size += len(job.items)
        return taken

    def _run(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        if len(batch) == 1:
            self._run_alone(batch[0], running=True)
            return
        started = time.perf_counter()
        items = [item for job in batch for item in job.items]
        try:
            rows = batch[0].batch_fn(items)
        except Exception:  # noqa: BLE001 - find the job at fault: each is run again alone
            log.warning("a batch of %d jobs failed; running them one by one", len(batch))
            for job in batch:
                self._run_alone(job, running=True)
            return
        self.batches += 1
        compute_ms = (time.perf_counter() - started) * 1000
        start = 0
        for job in batch:
            part = rows[start : start + len(job.items)]
            start += len(job.items)
            stats = JobStats((started - job.queued) * 1000, compute_ms, len(items))
            self._settle(job, lambda job=job, part=part: _finish(job, part), stats)

    def _run_alone(self, job: _Job, running: bool = False) -> None:
        if not running and not job.future.set_running_or_notify_cancel():
            return
        started = time.perf_counter()

        def work() -> Any:
            if job.call is not None:
                return job.call()
            self.batches += 1
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
            thread = self._thread
            if thread is None:
                return True
            self._queue.append(_STOP)
            self._cond.notify()
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        if thread.is_alive():
            log.warning("inference thread still busy after %.0f s; leaving it", timeout)
            return False
        return True

    def pending(self) -> int:
        """Jobs waiting in the queue (not counting the batch being run)."""
        with self._cond:
            return sum(1 for job in self._queue if job is not _STOP)


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
        app.extensions[EXTENSION_KEY] = _EngineSlot(
            max_batch=int(app.config["INFERENCE_MAX_BATCH"]),
            timeout=float(app.config["INFERENCE_TIMEOUT"]),
        )

    def get(self, app: Flask | None = None) -> InferenceEngine:
        """This process's engine (a forked child gets a fresh one: threads do not survive fork)."""
        app = app or current_app
        try:
            slot = app.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError("Engine is used before init_app(app) was called") from None
        return slot.current()

    def stop(self, app: Flask, timeout: float = 30.0) -> bool:
        """Drain and stop this process's engine (gunicorn's worker_exit / worker_int)."""
        slot = app.extensions.get(EXTENSION_KEY)
        return slot.stop(timeout) if slot is not None else True


@dataclass
class _EngineSlot:
    max_batch: int
    timeout: float
    engine: InferenceEngine | None = None
    pid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> InferenceEngine:
        with self.lock:
            if self.engine is None or self.pid != os.getpid():
                self.engine = InferenceEngine(self.max_batch, self.timeout)
                self.pid = os.getpid()
            return self.engine

    def stop(self, timeout: float) -> bool:
        with self.lock:
            engine = self.engine if self.pid == os.getpid() else None
        return engine.stop(timeout) if engine is not None else True


engine = Engine()
