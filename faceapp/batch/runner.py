"""Running a batch: inputs in, lines out, the per-input work overlapped in a thread pool.

Each pool thread takes one input through the whole pipeline: read, decode, detect, crop (PIL,
OpenCV and file reads release the GIL, so two threads keep two cores busy), then hand its crops
to the inference engine and wait. While threads wait, the engine's queue fills, so its next
forward pass takes up to INFERENCE_MAX_BATCH crops at once, and the next inputs are decoded
during it: the decoding overlaps the encoder's batches, on the engine the service uses (in
``--server`` mode the threads wait on HTTP answers instead). At most ``in_flight`` inputs are
submitted and not yet written, so memory stays flat however many inputs there are.

The main thread alone writes, in the order inputs finish. A stop (the first Ctrl-C or
SIGTERM) submits nothing more and lets the inputs in flight finish and be written; an abort
(the second) drops them. Either way the writer is left with whole lines only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from faceapp.batch.output import source_key
from faceapp.batch.progress import Progress, Tally

POLL_S = 0.5  # how often a waiting main thread looks at the stop flags and the progress line


class Stop(Exception):
    """Raised by the per-input work when the run cannot go on (a deployment that no longer
    answers): that input is not written, so the next run does it, and the run stops."""


class Flags:
    """The run's stop and abort flags, set by signal handlers (or a :class:`Stop`)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """First call: stop submitting; second: abort (drop what is in flight)."""
        if self.stop.is_set():
            self.abort.set()
        else:
            self.reason = reason
            self.stop.set()


def run(
    inputs: Iterable[str],
    process: Callable[[str], dict],
    writer,
    tally: Tally,
    progress: Progress,
    *,
    workers: int,
    in_flight: int | None = None,
    flags: Flags | None = None,
) -> str | None:
    """Answer every input `writer` does not have yet; returns why the run stopped early (None:
    it did not)."""
    flags = flags or Flags()
    limit = max(1, in_flight or 2 * workers)
    pending: set[Future] = set()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faceapp-batch")

    def collect(timeout: float | None) -> None:
        nonlocal pending
        done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            try:
                line = future.result()
            except Stop as exc:
                flags.request_stop(str(exc) or "stopped")
                continue
            writer.write(line)
            tally.add(line)
            progress.update(line)
        if not done:
            progress.update()

    try:
        for source in inputs:
            if flags.stop.is_set():
                break
            if writer.answered(source):
                tally.skipped += 1
                continue
            writer.done.add(source_key(source))  # claimed: listed again in this run, it is skipped
            pending.add(pool.submit(process, source))
            while len(pending) >= limit and not flags.abort.is_set():
                collect(POLL_S)
        while pending and not flags.abort.is_set():
            collect(POLL_S)
    finally:
        for future in pending:
            future.cancel()
        # Aborted: the threads still running finish unseen; nothing more is written.
        pool.shutdown(wait=not flags.abort.is_set(), cancel_futures=True)
    return flags.reason
