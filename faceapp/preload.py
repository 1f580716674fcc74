"""What a forking master imports before it forks its workers: gunicorn's (gunicorn.conf.py's
on_starting) and the Celery worker's prefork master (``flask worker``, faceapp/jobs/worker.py).

Every worker imports torch, transformers' CLIP classes and the rest of faceapp before it can
load a model: seconds of CPU each time. Imported once in the master, a worker forked from it (at
start, after a crash, when recycled) only creates the app and loads the weights. Neither server's
own module holds this list, since both use it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence

#: The modules :func:`import_libraries` imports in the master.
PRELOADED_MODULES = (
    "torch",
    "transformers.models.clip.modeling_clip",
    "transformers.models.clip.processing_clip",
    "transformers.models.clip.image_processing_clip",
    "transformers.models.clip.tokenization_clip",
    "faceapp.api",
    "faceapp.tester",
    "faceapp.cli",
)


def import_libraries(modules: Sequence[str] = PRELOADED_MODULES) -> tuple[float, list[str]]:
    """Import `modules` (no torch operation runs); returns the seconds taken and what failed.

    Fork-safe: what breaks torch in forked workers (gunicorn #2478, pytorch #49555) is a thread
    pool started by a torch operation in the parent, and importing runs none. A module that does
    not import here is left to the worker, which imports it again and reports what is wrong.
    """
    started = time.perf_counter()
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the worker imports it again and says what is wrong
            failed.append(name)
    return time.perf_counter() - started, failed
