"""Writes that readers see whole or not at all: write under a temporary name, then one rename.

The one home of faceapp's atomic writes (the store, model manifests, label-embedding caches, the
instance secret key, staged model folders). The temporary name is made in the same filesystem as
the target (its folder, or a scratch folder beside it), so the final rename is atomic.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def _temporary_file(path: str, scratch: str | None) -> Iterator[tuple[int, str]]:
    """An open temporary file (descriptor and path) that replaces `path` when the block ends
    without an error, and is removed when it raises."""
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=scratch or os.path.dirname(path) or ".")
    try:
        yield handle, tmp
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


@contextmanager
def atomic_path(path: str, scratch: str | None = None) -> Iterator[str]:
    """A temporary path to write to; it replaces `path` when the block ends without an error."""
    with _temporary_file(path, scratch) as (handle, tmp):
        os.close(handle)
        yield tmp


def write_bytes(path: str, data: bytes, scratch: str | None = None) -> None:
    """Replace `path` with `data` atomically (written through the temporary file's own
    descriptor: one open, not two, per cached result and store write)."""
    with _temporary_file(path, scratch) as (handle, _), os.fdopen(handle, "wb") as fh:
        fh.write(data)


def write_json(path: str, document: Any, scratch: str | None = None, indent: int | None = None):
    """Replace `path` with `document` as JSON atomically."""
    text = json.dumps(document, indent=indent) + ("\n" if indent else "")
    write_bytes(path, text.encode("utf-8"), scratch)


def create_once(path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (then it is left alone): True if created.

    Racing writers all end up reading the first one's file (a hard link never replaces).
    The file is private to its owner (mode 0600).
    """
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(handle, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        unlink_quietly(tmp)


@contextmanager
def staging_folder(parent: str, prefix: str = ".staging-") -> Iterator[str]:
    """A fresh folder under `parent` to fill and move into place; removed if still there after."""
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: str, final: str) -> None:
    """Move a finished staging folder into place, replacing an older copy by rename."""
    if os.path.isdir(final):
        retired = f"{final}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(final, retired)
        os.rename(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, final)


def unlink_quietly(path: str) -> None:
    """Remove a file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
