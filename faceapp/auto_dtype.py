"""``DTYPE=auto``: float32 or bfloat16, whichever encodes images faster on this machine.

CPU flags alone do not decide it. On an AMD EPYC with ``avx512_bf16`` the ViT-B/32 image encoder
ran 2.4x faster with bfloat16 weights; on an Intel Xeon with AMX 2.1x (batch 1) to 3.3x (batch
8); on an Intel Xeon with ``avx512_bf16`` but no AMX, bfloat16 was slower than float32. So, as
OpenVINO's CPU plugin does with its bf16 default, bfloat16 is only *tried* where the CPU reports
native bf16 (:data:`NATIVE_BF16_FLAGS`), and then kept only if it is faster on a small batch of
the warm-up crops and its embeddings stay within :data:`MIN_COSINE` of float32's.

The measurement runs once per machine and weights version: its outcome is written to
``MODELS_DIR/.dtype-choice/<weights version>-<machine>.json`` and read back on the next start
(by every worker: the first one measures under a file lock, the others wait and read). The
machine is the CPU's model name and flags, the torch version and the thread count. int8 is never
chosen here; it is used only when ``DTYPE=int8`` asks for it.

Nothing here imports transformers: the model is reached through the callables
:func:`choose` is handed (faceapp/face_models.py owns the model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from faceapp.atomic import write_json

log = logging.getLogger(__name__)

#: CPU flags that mean bfloat16 matrix instructions (x86: AMX, AVX512-BF16; Arm: BF16).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
#: bfloat16 is kept only when every trial embedding has at least this cosine to float32's.
MIN_COSINE = 0.999
#: Timed calls per dtype, after one untimed call (the first call builds kernels). The fastest
#: counts: other processes on the cores only ever slow a call down.
TRIAL_ROUNDS = 5
#: Crops in the timed batch: the sizes a busy worker runs (faceapp/engine.py batches requests).
TRIAL_BATCH = 4
FOLDER = ".dtype-choice"
CANDIDATES = ("float32", "bfloat16")

#: time_call(dtype, call) -> milliseconds one call of `call` takes (tests inject their own).
TimeCall = Callable[[str, Callable[[], Any]], float]


@dataclass(frozen=True)
class Choice:
    """What DTYPE=auto chose, why, and the measurements behind it (None: not measured)."""

    dtype: str
    reason: str
    float32_ms: float | None = None
    bfloat16_ms: float | None = None
    cosine: float | None = None
    cached: bool = False  # read from the cache file, not measured by this process

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_facts() -> dict:
    """The CPU's model name and flags (Linux's /proc/cpuinfo; empty elsewhere), and the arch."""
    name, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name.strip():
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86 / Arm
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": name.strip(), "flags": sorted(flags), "arch": platform.machine()}


def native_bf16(flags: Mapping | list | set | tuple) -> list[str]:
    """The native-bfloat16 flags among `flags` (empty: bfloat16 is not worth trying)."""
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def decide(float32_ms: float, bfloat16_ms: float, cosine: float) -> tuple[str, str]:
    """The dtype to keep from one trial's timings and cosine, and why, in words."""
    if cosine < MIN_COSINE:
        return "float32", (
            f"bfloat16 embeddings are too far from float32's (cosine {cosine:.5f} < {MIN_COSINE})"
        )
    if bfloat16_ms < float32_ms:
        return "bfloat16", (
            f"bfloat16 is {float32_ms / bfloat16_ms:.2f}x faster ({bfloat16_ms:.1f} vs "
            f"{float32_ms:.1f} ms per batch of {TRIAL_BATCH}, fastest of {TRIAL_ROUNDS}), "
            f"cosine {cosine:.5f}"
        )
    return "float32", (
        f"bfloat16 is not faster here ({bfloat16_ms:.1f} vs {float32_ms:.1f} ms per batch of "
        f"{TRIAL_BATCH})"
    )


def best_ms(_dtype: str, call: Callable[[], Any]) -> float:
    """The fastest of TRIAL_ROUNDS calls in milliseconds, after one untimed call."""
    call()
    samples = []
    for _ in range(TRIAL_ROUNDS):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return min(samples)


def machine_key(facts: Mapping[str, Any], threads: int) -> str:
    """12 hex characters naming this kind of machine for the cache: CPU, flags, torch, threads."""
    import torch

    document = {**facts, "torch": torch.__version__, "threads": threads}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def cache_path(models_dir: str, weights_version: str, machine: str) -> str:
    """Where the choice for one weights version on one kind of machine is kept."""
    return os.path.join(models_dir, FOLDER, f"{weights_version}-{machine}.json")


def read_cached(path: str) -> Choice | None:
    """The cached choice, or None when there is none or it is unreadable (then measured again)."""
    try:
        with open(path, encoding="utf-8") as fh:
            document = json.load(fh)
        choice = Choice(
            dtype=document["dtype"],
            reason=document["reason"],
            float32_ms=document.get("float32_ms"),
            bfloat16_ms=document.get("bfloat16_ms"),
            cosine=document.get("cosine"),
            cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choice if choice.dtype in CANDIDATES else None


@dataclass(frozen=True)
class Trial:
    """What :func:`choose` needs of the model, as callables (faceapp/face_models.py makes them).

    ``encode()`` embeds the trial batch in the model's current dtype (L2-normalised float32
    rows); ``to_bfloat16()`` converts the model in place; ``weights_version`` and ``threads``
    name what is measured.
    """

    encode: Callable[[], Any]
    to_bfloat16: Callable[[], None]
    weights_version: str
    threads: int


def choose(
    trial: Trial,
    models_dir: str | None,
    *,
    facts: Mapping[str, Any] | None = None,
    time_call: TimeCall | None = None,
) -> Choice:
    """Measure (or read back) the dtype for this machine. A measurement leaves the model in
    bfloat16 (its last trial); the caller loads the weights in the dtype chosen."""
    facts = dict(facts if facts is not None else cpu_facts())
    time_call = time_call or best_ms
    flags = native_bf16(facts.get("flags", ()))
    if not flags:
        return Choice(
            "float32",
            f"the CPU reports no native bfloat16 ({', '.join(NATIVE_BF16_FLAGS[:2])})",
        )
    path = None
    if models_dir:
        path = cache_path(models_dir, trial.weights_version, machine_key(facts, trial.threads))
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with _exclusive(path):
        cached = read_cached(path) if path else None
        if cached is not None:
            return cached
        choice = _measure(trial, flags, time_call)
        if path:
            document = {
                **choice.to_dict(),
                "weights_version": trial.weights_version,
                "machine": {**facts, "flags": flags, "threads": trial.threads},
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            document.pop("cached")
            write_json(path, document, indent=2)
    return choice


def _measure(trial: Trial, flags: list[str], time_call: TimeCall) -> Choice:
    float32_ms = time_call("float32", trial.encode)
    reference = trial.encode()
    trial.to_bfloat16()
    bfloat16_ms = time_call("bfloat16", trial.encode)
    cosine = float((reference * trial.encode()).sum(dim=-1).min())
    dtype, reason = decide(float32_ms, bfloat16_ms, cosine)
    log_at = log.info if dtype == "bfloat16" or cosine >= MIN_COSINE else log.warning
    log_at("DTYPE=auto on a CPU with %s: %s; using %s", ", ".join(flags), reason, dtype)
    return Choice(dtype, reason, round(float32_ms, 2), round(bfloat16_ms, 2), round(cosine, 6))


@contextmanager
def _exclusive(path: str | None):
    """Hold a lock beside `path` (one worker of a machine measures, the others wait and read)."""
    if path is None:
        yield
        return
    import fcntl

    with open(f"{path}.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
