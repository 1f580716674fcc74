"""Counting a batch run as it goes: a tqdm bar on a terminal, a line every few seconds off one,
and the summary at the end (images, valid, invalid and failed by code, faces, images/s, time)."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from faceapp.batch.pipeline import codes

LOG_EVERY_S = 5.0


@dataclass
class Tally:
    """What a run has answered so far."""

    images: int = 0
    valid: int = 0
    faces: int = 0
    invalid: Counter = field(default_factory=Counter)  # by validation error code
    failed: Counter = field(default_factory=Counter)  # by error code
    invalid_images: int = 0
    failed_images: int = 0
    skipped: int = 0  # answered already (by an earlier run, or listed twice): skipped
    not_images: int = 0  # files of a folder that are no image: skipped
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def add(self, line: dict) -> None:
        self.images += 1
        self.faces += len(line.get("faces") or [])
        if "error" in line:
            self.failed_images += 1
            self.failed.update(codes(line))
        elif line.get("valid"):
            self.valid += 1
        else:
            self.invalid_images += 1
            self.invalid.update(codes(line))

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self, *, interrupted: str | None = None) -> str:
        """The summary the command prints at the end."""
        lines = [
            f"{'Stopped (' + interrupted + ')' if interrupted else 'Done'}: {self.images} images "
            f"in {self.seconds:.1f} s ({self.rate:.1f} images/s), {self.faces} faces",
            f"  valid    {self.valid}",
            f"  invalid  {self.invalid_images}{_by_code(self.invalid)}",
            f"  failed   {self.failed_images}{_by_code(self.failed)}",
        ]
        skipped = [
            (self.skipped, "answered already"),
            (self.not_images, "not images"),
        ]
        if any(count for count, _ in skipped):
            lines.append(
                "  skipped  " + ", ".join(f"{count} {why}" for count, why in skipped if count)
            )
        return "\n".join(lines)


def _by_code(counter: Counter) -> str:
    if not counter:
        return ""
    return " (" + ", ".join(f"{code} {n}" for code, n in counter.most_common()) + ")"


class Progress:
    """Reports a :class:`Tally`: a tqdm bar when `stream` is a terminal (or `bar` says so), else
    a line every LOG_EVERY_S seconds. The total, when a counting walk finds it, gives the ETA."""

    def __init__(
        self, tally: Tally, *, bar: bool | None = None, stream: IO[str] | None = None
    ) -> None:
        self.tally = tally
        self.stream = stream or sys.stderr
        self.total: int | None = None
        self._lock = threading.Lock()
        use_bar = bar if bar is not None else _is_terminal(self.stream)
        self._bar: Any = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=None, unit="img", file=self.stream, dynamic_ncols=True)
        self._logged = time.monotonic()

    def set_total(self, total: int) -> None:
        """The number of inputs left to answer (known once a counting walk is through)."""
        with self._lock:
            self.total = max(total, self.tally.images)
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def update(self, line: dict | None = None) -> None:
        """One more input answered (its line counted by the caller), or a tick without one."""
        tally = self.tally
        with self._lock:
            if self._bar is not None:
                if line is not None:
                    self._bar.update(1)
                self._bar.set_postfix(
                    faces=tally.faces,
                    invalid=tally.invalid_images,
                    failed=tally.failed_images,
                    refresh=False,
                )
                return
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY_S:
                self._logged = now
                print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        """The progress line written off a terminal."""
        tally = self.tally
        text = (
            f"batch: {tally.images} images, {tally.faces} faces, {tally.invalid_images} invalid, "
            f"{tally.failed_images} failed, {tally.rate:.1f} images/s"
        )
        if self.total:
            left = max(0, self.total - tally.images)
            eta = left / tally.rate if tally.rate > 0 else None
            text += f", {tally.images}/{self.total}"
            if eta is not None:
                text += f", ETA {_clock(eta)}"
        return text

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
