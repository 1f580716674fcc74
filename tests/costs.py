"""What one input costs a process: its peak memory over what the process held before, and CPU.

The peak is Linux's VmHWM after resetting it (``/proc/self/clear_refs``), so inputs can be
measured one after another in one process. :data:`REPORTED` collects every measurement of the
run; tests/conftest.py prints the worst memory and the worst CPU at the end of the suite.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Cost:
    """One input's cost: peak memory over the process's resident size before it (MiB), CPU s."""

    name: str
    peak_mib: float | None = None  # None where the peak cannot be reset (not Linux)
    cpu_s: float = 0.0
    outcome: str = ""
    extra: dict = field(default_factory=dict)


REPORTED: list[Cost] = []


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def can_measure_peak() -> bool:
    """Whether this process can reset and read its peak resident size."""
    return os.access("/proc/self/clear_refs", os.W_OK) and _status_kib("VmHWM") is not None


@contextmanager
def measured(name: str) -> Iterator[Cost]:
    """Measure the block's peak memory over the resident size at its start, and its CPU time."""
    cost = Cost(name)
    resettable = can_measure_peak()
    if resettable:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    started = time.process_time()
    try:
        yield cost
    finally:
        cost.cpu_s = time.process_time() - started
        peak = _status_kib("VmHWM")
        if resettable and before is not None and peak is not None:
            cost.peak_mib = max(0, peak - before) / 1024


def report(cost: Cost) -> Cost:
    """Add a measurement to the run's report."""
    REPORTED.append(cost)
    return cost


def summary_lines() -> list[str]:
    """The report's lines: the worst memory and the worst CPU of any input measured."""
    if not REPORTED:
        return []
    lines = [f"hostile inputs measured: {len(REPORTED)}"]
    with_peak = [cost for cost in REPORTED if cost.peak_mib is not None]
    if with_peak:
        worst = max(with_peak, key=lambda cost: cost.peak_mib)
        lines.append(
            f"worst peak memory: +{worst.peak_mib:.0f} MiB ({worst.name}: {worst.outcome})"
        )
    worst_cpu = max(REPORTED, key=lambda cost: cost.cpu_s)
    lines.append(f"worst CPU: {worst_cpu.cpu_s:.2f} s ({worst_cpu.name}: {worst_cpu.outcome})")
    return lines
