"""Interleaved A/B timing: both sides see the same machine noise, medians ignore the outliers."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Comparison:
    """One A-versus-B comparison: the samples of each side, in the unit given."""

    key: str
    title: str
    a_label: str
    b_label: str
    a_samples: list[float]
    b_samples: list[float]
    meaning: str
    unit: str = "ms"
    sanity: dict[str, Any] = field(default_factory=dict)

    @property
    def a(self) -> float:
        return statistics.median(self.a_samples)

    @property
    def b(self) -> float:
        return statistics.median(self.b_samples)

    @property
    def a_p95(self) -> float:
        return percentile(self.a_samples, 95)

    @property
    def b_p95(self) -> float:
        return percentile(self.b_samples, 95)

    @property
    def ratio(self) -> float:
        """A over B: how many times B is faster (or smaller) than A."""
        return self.a / self.b

    @property
    def best_ratio(self) -> float:
        """Fastest A over fastest B: what each side costs when nothing else gets in the way."""
        return min(self.a_samples) / min(self.b_samples)

    def pair_ratio_quartiles(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the per-pair ratios A_i / B_i (the ratio's spread)."""
        ratios = sorted(a / b for a, b in zip(self.a_samples, self.b_samples, strict=True))
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
        return quartiles[0], quartiles[2]

    @classmethod
    def from_dict(cls, key: str, data: dict) -> Comparison:
        """The comparison :meth:`to_dict` wrote (a section of a run's JSON)."""
        return cls(
            key,
            data["title"],
            data["a_label"],
            data["b_label"],
            list(data["a_samples"]),
            list(data["b_samples"]),
            data["meaning"],
            data.get("unit", "ms"),
            dict(data.get("sanity") or {}),
        )

    def to_dict(self) -> dict:
        """The comparison as JSON-ready data (medians, ratio, every sample)."""
        low, high = self.pair_ratio_quartiles()
        return {
            "title": self.title,
            "a_label": self.a_label,
            "b_label": self.b_label,
            "unit": self.unit,
            "a": self.a,
            "b": self.b,
            "a_p95": self.a_p95,
            "b_p95": self.b_p95,
            "ratio": self.ratio,
            "best_ratio": self.best_ratio,
            "pair_ratio_p25": low,
            "pair_ratio_p75": high,
            "a_samples": self.a_samples,
            "b_samples": self.b_samples,
            "meaning": self.meaning,
            "sanity": self.sanity,
        }


def percentile(samples: list[float], percent: float) -> float:
    """The `percent`-th percentile of `samples` (linear between the closest ranks)."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * percent / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


MIN_ROUNDS = 3


def interleaved(
    a: Callable[[], object],
    b: Callable[[], object],
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    settle_s: float = 0.0,
) -> tuple[list[float], list[float]]:
    """Milliseconds of `a` and `b` run A/B/A/B..., after `warmup` untimed rounds of each.

    Up to `repeats` rounds; with a `budget_s`, no new round starts once the timed rounds have
    taken that long (but at least MIN_ROUNDS run), so a busy machine cannot stretch a run. With
    `settle_s`, each timed call starts that long after the one before it ended (not timed, nor
    counted in the budget): for A and B in two processes, neither then starts while the other's
    OpenMP threads still spin on the cores (libgomp spins about 9 ms after a forward pass).
    """
    for _ in range(warmup):
        a()
        b()
    gc.collect()
    a_ms: list[float] = []
    b_ms: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        if (
            budget_s is not None
            and len(a_ms) >= MIN_ROUNDS
            and time.perf_counter() - started > budget_s
        ):
            break
        a_ms.append(_time_ms(a, settle_s))
        b_ms.append(_time_ms(b, settle_s))
        started += 2 * settle_s
    return a_ms, b_ms


def _time_ms(call: Callable[[], object], settle_s: float = 0.0) -> float:
    if settle_s > 0:
        time.sleep(settle_s)
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000
