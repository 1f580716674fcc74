"""The folder store backend: one folder per image, written so that nothing is ever half there.

Chosen by a folder path or ``file://`` URL as STORE_URL (the default: ``<instance>/store``).
Files are written under a temporary name and renamed into place, a new image appears as a whole
folder (one rename), and deleting one renames it away first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import heapq
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from faceapp.atomic import write_bytes
from faceapp.store.base import (
    IMAGE_ID_RE,
    EvictionSchedule,
    check_image_id,
    check_key_id,
    check_part_name,
    check_session_id,
    keep_last,
    log_evicted,
    not_found,
    oldest_first,
)

log = logging.getLogger(__name__)


class FileStore(EvictionSchedule):
    """A content-addressed folder:
    ``images/<ab>/<id>/{image,meta.json,part-*,trace.jsonl,owners}``."""

    IMAGE = "image"  # the bytes received, as received
    META = "meta.json"
    TRACE = "trace.jsonl"
    OWNERS = "owners"  # the ids of the keys that sent the image, one a line
    PART = "part-"
    RESULTS = "results"
    #: put_result's bound on passes: each pass lost to a concurrent drop of results/; far more
    #: than any burst of wipe_cache gives, and never a request thread spinning forever.
    RESULT_TRIES = 100

    def __init__(
        self,
        root: str,
        max_bytes: int = 0,
        max_age_seconds: float = 0,
        evict_interval: float = 30.0,
        max_events: int = 0,
    ) -> None:
        self.root = os.path.abspath(root)
        self.images = os.path.join(self.root, "images")
        self.scratch = os.path.join(self.root, ".tmp")
        self.max_bytes = int(max_bytes or 0)
        self.max_age = float(max_age_seconds or 0)
        self.max_events = int(max_events or 0)  # per image's trace; 0: no bound
        self.evict_interval = evict_interval
        self._last_evict = 0.0
        self._evict_lock = threading.Lock()
        os.makedirs(self.images, exist_ok=True)
        os.makedirs(self.scratch, exist_ok=True)
        self.sweep_scratch()

    SCRATCH_MAX_AGE = 3600.0  # far longer than any write takes

    def sweep_scratch(self) -> int:
        """Remove what a killed process left in the scratch folder (older than an hour)."""
        removed, cutoff = 0, time.time() - self.SCRATCH_MAX_AGE
        for name in os.listdir(self.scratch):
            path = os.path.join(self.scratch, name)
            try:
                if os.lstat(path).st_mtime >= cutoff:
                    continue  # may belong to a write in progress
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("store: removed %d leftover(s) of interrupted writes", removed)
        return removed

    # -- paths ---------------------------------------------------------------------------------
    def _dir(self, image_id: str) -> str:
        # check_image_id is the only gate to this path: an id is 64 hex characters, nothing else.
        check_image_id(image_id)
        return os.path.join(self.images, image_id[:2], image_id)

    def _atomic_write(self, path: str, data: bytes) -> None:
        write_bytes(path, data, scratch=self.scratch)

    # -- images --------------------------------------------------------------------------------
    def put_image(
        self,
        image_id: str,
        image_bytes: bytes,
        meta: dict,
        parts: Mapping[str, bytes] | None = None,
    ) -> bool:
        """Store an image, its metadata and parts; False (and no change) when already stored."""
        final = self._dir(image_id)
        if os.path.isdir(final):
            return False
        staging = tempfile.mkdtemp(prefix=".new-", dir=self.scratch)
        try:
            with open(os.path.join(staging, self.IMAGE), "wb") as fh:
                fh.write(image_bytes)
            for name, data in (parts or {}).items():
                with open(os.path.join(staging, self.PART + check_part_name(name)), "wb") as fh:
                    fh.write(data)
            with open(os.path.join(staging, self.META), "w", encoding="utf-8") as fh:
                json.dump(meta, fh)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                os.rename(staging, final)  # atomic: the folder appears whole or not at all
            except OSError:
                if os.path.isdir(final):  # another request stored the same bytes first
                    return False
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.maybe_evict()
        return True

    def get_meta(self, image_id: str) -> dict | None:
        return _read_json(os.path.join(self._dir(image_id), self.META))

    def set_meta(self, image_id: str, meta: dict) -> None:
        folder = self._dir(image_id)
        if not os.path.isdir(folder):
            raise not_found(image_id)
        try:
            self._atomic_write(os.path.join(folder, self.META), json.dumps(meta).encode())
        except FileNotFoundError:  # deleted since the check above
            raise not_found(image_id) from None

    def get_image(self, image_id: str) -> bytes | None:
        return _read_bytes(os.path.join(self._dir(image_id), self.IMAGE))

    def get_part(self, image_id: str, name: str) -> bytes | None:
        folder = self._dir(image_id)
        return _read_bytes(os.path.join(folder, self.PART + check_part_name(name)))

    # -- results -------------------------------------------------------------------------------
    def _result_path(self, image_id: str, key: str) -> str:
        safe = hashlib.sha256(key.encode()).hexdigest()[:32]
        return os.path.join(self._dir(image_id), self.RESULTS, f"{safe}.json")

    def put_result(self, image_id: str, key: str, document: dict) -> None:
        path = self._result_path(image_id, key)
        data = json.dumps({"key": key, "document": document}).encode()
        for _ in range(self.RESULT_TRIES):
            # mkdir, never makedirs: if a delete took the image folder away meanwhile, creating
            # it again would leave a husk without image or meta that put_image takes as stored.
            try:
                os.mkdir(os.path.dirname(path))
            except FileExistsError:
                pass
            except FileNotFoundError:  # the image is gone (deleted or evicted)
                raise not_found(image_id) from None
            try:
                self._atomic_write(path, data)
                return
            except FileNotFoundError:
                if not os.path.isdir(self.scratch):
                    raise  # the store's own folder is gone: an outage, not a race
                # results/ went away meanwhile: drop_results (wipe_cache) moved it, or a delete
                # took the whole image, which the mkdir above then answers with 404. Each pass
                # means another drop finished; three tries used to answer a healthy store's
                # race with 503 store.unavailable.
        raise OSError(f"results of {image_id} kept disappearing while being written")

    def get_result(self, image_id: str, key: str) -> dict | None:
        stored = _read_json(self._result_path(image_id, key))
        return stored["document"] if stored and stored.get("key") == key else None

    def drop_results(self, image_id: str, where: Callable[[str, dict], bool] | None = None) -> None:
        results = os.path.join(self._dir(image_id), self.RESULTS)
        if where is not None:
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(results):
                    stored = _read_json(os.path.join(results, name))
                    if stored and where(str(stored.get("key")), stored.get("document") or {}):
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(os.path.join(results, name))
            return
        if os.path.isdir(results):
            retired = os.path.join(self.scratch, f".drop-{uuid.uuid4().hex}")
            try:
                os.rename(results, retired)
            except FileNotFoundError:
                return
            shutil.rmtree(retired, ignore_errors=True)

    # -- traces --------------------------------------------------------------------------------
    def _open_for_append(self, image_id: str, name: str) -> int | None:
        """A read-write O_APPEND descriptor on one of an image's files (made if missing), or
        None when the image is not stored (deleted meanwhile: its files went with it). One
        write() on it never interleaves with another worker's."""
        folder = self._dir(image_id)
        if not os.path.isdir(folder):
            return None  # never creates the folder: a husk would pass for a stored image
        try:
            return os.open(os.path.join(folder, name), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return None  # deleted since the check above

    def append_event(self, image_id: str, event: dict) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        fd = self._open_for_append(image_id, self.TRACE)
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # appends share the file; a trim has it alone
            os.write(fd, line)
            # Lines are counted (the file read) only once the file is as large as the bound
            # and its slack would be in lines of this one's size: after a trim, appends are a
            # quarter of the bound away from the next read. 3,000 appends (a third of them
            # short) at a bound of 1,000, 2 busy cores: 170 us each unbounded, 260 us bounded,
            # 910 us when every append past 64 bytes a line read the file.
            bound = self.max_events + self._slack()
            if self.max_events and os.fstat(fd).st_size > bound * len(line):
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._trim_trace(fd)
        finally:
            os.close(fd)  # and with it the lock

    def _slack(self) -> int:
        """The events a trace file may hold beyond max_events before it is trimmed."""
        return max(1, self.max_events // 4)

    def _trim_trace(self, fd: int) -> None:
        """Keep the newest max_events events of a trace file once it holds a quarter more (so a
        trim is rare), in place: other workers' descriptors stay on the same file."""
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        if data.count(b"\n") <= self.max_events + self._slack():
            return
        kept = keep_last(
            oldest_first(_parse_lines(data.decode("utf-8", "replace"))), self.max_events
        )
        text = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in kept)
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())  # O_APPEND: written from the start of the emptied file

    def events(self, image_id: str) -> list[dict]:
        try:
            with open(os.path.join(self._dir(image_id), self.TRACE), encoding="utf-8") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH)  # never a trace a trim has half written
                text = fh.read()
        except FileNotFoundError:
            return []
        return keep_last(oldest_first(_parse_lines(text)), self.max_events)

    # -- owners --------------------------------------------------------------------------------
    def add_owner(self, image_id: str, key_id: str) -> None:
        if check_key_id(key_id) in self.owners(image_id):
            return
        # Two adds of the same key at once may write it twice: harmless, lines are read as a set.
        fd = self._open_for_append(image_id, self.OWNERS)
        if fd is None:
            return
        try:
            os.write(fd, f"{key_id}\n".encode())
        finally:
            os.close(fd)

    def owners(self, image_id: str) -> set[str]:
        try:
            with open(os.path.join(self._dir(image_id), self.OWNERS), encoding="ascii") as fh:
                return {line.strip() for line in fh if line.strip()}
        except FileNotFoundError:
            return set()

    # -- removal -------------------------------------------------------------------------------
    def delete(self, image_id: str) -> bool:
        folder = self._dir(image_id)
        retired = os.path.join(self.scratch, f".del-{image_id}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(folder, retired)  # gone for readers at once; files removed after
        except FileNotFoundError:
            return False
        shutil.rmtree(retired, ignore_errors=True)
        return True

    def _all(self) -> list[tuple[str, str]]:
        found = []
        for prefix in os.listdir(self.images):
            bucket = os.path.join(self.images, prefix)
            if os.path.isdir(bucket):
                found.extend(
                    (name, os.path.join(bucket, name))
                    for name in os.listdir(bucket)
                    if IMAGE_ID_RE.fullmatch(name)
                )
        return found

    def _dated(self) -> list[tuple[float, str, str]]:
        """(time its meta.json was written, image_id, folder) of every stored image: the image's
        age for eviction and its place in `recent`."""
        dated = []
        for image_id, folder in self._all():
            try:
                dated.append((os.stat(os.path.join(folder, self.META)).st_mtime, image_id, folder))
            except FileNotFoundError:  # deleted meanwhile, or still being stored
                continue
        return dated

    def wipe(self) -> int:
        count = 0
        for image_id, _ in self._all():
            count += self.delete(image_id)
        return count

    def recent(self, limit: int) -> list[dict]:
        """The metadata of the newest `limit` images, newest first (by meta["created"]).

        Only the newest `limit` metadata files are read: a meta file is written when its image
        is validated, with that moment as "created", so its modification time sorts alike, and
        a stat per image is what the rest cost (not a read and a parse each).
        """
        metas = []
        for _, image_id, _ in heapq.nlargest(max(limit, 0), self._dated()):
            meta = self.get_meta(image_id)
            if meta:
                metas.append(meta)
        metas.sort(key=lambda m: m.get("created", 0), reverse=True)
        return metas

    def evict(self) -> int:
        """Drop images past the age limit, then the oldest until the store fits its size limit."""
        if not self._evict_lock.acquire(blocking=False):
            return 0
        try:
            self._last_evict = time.monotonic()
            entries = sorted(
                (mtime, _folder_size(folder), image_id) for mtime, image_id, folder in self._dated()
            )
            total = sum(size for _, size, _ in entries)
            now = time.time()
            evicted = 0
            for mtime, size, image_id in entries:
                too_old = self.max_age and now - mtime > self.max_age
                too_big = self.max_bytes and total > self.max_bytes
                if not (too_old or too_big):
                    break
                if self.delete(image_id):
                    evicted += 1
                    total -= size
            log_evicted(evicted, self.max_bytes, self.max_age)
            return evicted
        finally:
            self._evict_lock.release()

    def usage(self) -> tuple[int, int]:
        """How many images the store holds, and their bytes (with metadata and results)."""
        folders = self._all()
        return len(folders), sum(_folder_size(folder) for _, folder in folders)

    # -- sessions (the tester's sign-ins) --------------------------------------------------------
    def _session_path(self, session_id: str) -> str:
        return os.path.join(self.root, "sessions", check_session_id(session_id))

    def put_session(self, session_id: str, seconds: float) -> None:
        """Hold a sign-in for `seconds` (its file holds when it expires); sweep expired ones."""
        folder = os.path.dirname(self._session_path(session_id))
        os.makedirs(folder, exist_ok=True)
        now = time.time()
        for name in os.listdir(folder):  # a handful of QA sign-ins: a scan per sign-in is cheap
            if _read_expiry(os.path.join(folder, name)) <= now:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
        self._atomic_write(self._session_path(session_id), repr(now + seconds).encode())

    def has_session(self, session_id: str) -> bool:
        return _read_expiry(self._session_path(session_id)) > time.time()

    def drop_session(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._session_path(session_id))

    def ping(self) -> None:
        """Raise OSError unless a file can be written into the store and removed again."""
        probe = os.path.join(self.images, f".ping-{os.getpid()}-{threading.get_ident()}")
        self._atomic_write(probe, b"ok")
        os.unlink(probe)

    def is_outage(self, exc: BaseException) -> bool:
        """Any OSError escaping this backend is the folder failing (gone, full, read-only)."""
        return isinstance(exc, OSError)


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_expiry(path: str) -> float:
    """When the session file at `path` expires (0 when it is missing or unreadable)."""
    data = _read_bytes(path)
    try:
        return float(data) if data else 0.0
    except ValueError:
        return 0.0


def _folder_size(folder: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except FileNotFoundError:
                pass
    return total


def _parse_lines(text: str) -> list[dict]:
    """A trace file's events; a line cut short by a crash is skipped, not fatal."""
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found
