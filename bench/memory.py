"""Resident memory of a loaded model, measured in a fresh process per dtype so numbers are clean.

``python -m bench.memory FOLDER DTYPE`` loads the checkpoint the way a worker does (`load_clip`,
then one warm-up forward) and prints one JSON line of RSS figures in MB.
"""

from __future__ import annotations

import json
import os
import subprocess  # noqa: S404 - runs this same module under this same interpreter
import sys
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1024 * 1024


def rss_mb() -> dict[str, float]:
    """This process's RSS (psutil if installed, else /proc), with its file/anonymous split and peak
    where /proc has them."""
    figures: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    figures[name] = int(value.split()[0]) / 1024  # kB -> MB
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        pass
    else:
        figures["VmRSS"] = psutil.Process().memory_info().rss / MB
    if "VmRSS" not in figures:
        raise RuntimeError("no way to read RSS here: install psutil")
    return {
        "rss": figures["VmRSS"],
        "peak": figures.get("VmHWM", 0.0),
        "anon": figures.get("RssAnon", 0.0),
        "file": figures.get("RssFile", 0.0),
    }


def cpu_model_config(folder: str, dtype: str, threads: int | None) -> dict:
    """The configuration `load_clip` gets for a benchmark model: that folder, on the CPU."""
    return {
        "MODEL_NAME": folder,
        "MODELS_DIR": folder,
        "DEVICE": "cpu",
        "DTYPE": dtype,
        "MODEL_AUTO_PULL": False,
        "TORCH_THREADS": threads,
    }


def measure(folder: str, dtype: str, threads: int | None = None) -> dict:
    """Load and warm the model in this process; RSS after imports, after load, after warm-up."""
    started = time.perf_counter()
    import torch  # noqa: F401 - imported first so its own memory is in the baseline
    import transformers  # noqa: F401

    from faceapp.face_models import load_clip

    imported = rss_mb()
    import_ms = (time.perf_counter() - started) * 1000
    model = load_clip(cpu_model_config(folder, dtype, threads))
    loaded = rss_mb()
    model.warm_up()
    warm = rss_mb()
    return {
        "dtype": dtype,
        "imported": imported,
        "loaded": loaded,
        "warm": warm,
        "import_ms": import_ms,
        "load_ms": model.load_ms,
        "warmup_ms": model.warmup_ms,
    }


def measure_in_subprocesses(folder: str, dtypes: list[str], threads: int | None = None) -> dict:
    """Run :func:`measure` for each dtype in its own fresh interpreter, side by side (resident
    memory does not depend on the timing), and return the figures by dtype."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    probes = {
        dtype: subprocess.Popen(  # noqa: S603 - fixed arguments: this interpreter, this module
            [sys.executable, "-m", "bench.memory", folder, dtype, str(threads or 0)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for dtype in dtypes
    }
    figures = {}
    try:
        for dtype, probe in probes.items():
            out, err = probe.communicate(timeout=300)
            if probe.returncode != 0:
                raise RuntimeError(f"memory probe for {dtype} failed:\n{err[-2000:]}")
            figures[dtype] = json.loads(out.strip().splitlines()[-1])
    finally:
        for probe in probes.values():
            if probe.poll() is None:  # only after a failure or a timeout
                probe.kill()
                probe.wait()
    return figures


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]) or None)))
