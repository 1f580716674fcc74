"""What every store backend provides, and what they share: image ids, errors, the format version.

A stored image is its received bytes (the image_id hashes them), its metadata, and small
"parts" written at validate time (a bounded preview and one context crop per face, see
faceapp/stored_image.py), so that nothing is re-encoded at validate and analyze never decodes
the full image. ``meta["stored"]["format"]`` says how an item was stored; items of any other
format (those of earlier versions, or of a newer one sharing the store) are dropped and
validated again, never served from parts that mean something else.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from faceapp import metrics
from faceapp.errors import FaceappError

log = logging.getLogger("faceapp.store")

IMAGE_ID_RE = re.compile(r"^[0-9a-f]{64}$")
PART_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}\.(jpg|png|json)$")
#: A tester sign-in's id (secrets.token_urlsafe(24)): it becomes a file name and a key.
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")
#: A key's id (faceapp.access.key_id: 20 hex characters) as an image's owner: a line and a field.
KEY_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
#: How items are stored: 2 = received bytes + preview and face-context parts (1 was a PNG).
STORE_FORMAT = 2


def image_id_for(data: bytes) -> str:
    """The image_id of some bytes: their lowercase hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def check_image_id(value: Any) -> str:
    """Return `value` if it is a well-formed image_id, else raise 400 image_id.invalid."""
    if not isinstance(value, str) or not IMAGE_ID_RE.fullmatch(value):
        raise FaceappError(
            "image_id.invalid",
            "An image_id is the 64-character lowercase hex SHA-256 of the image bytes.",
            field="image_id",
        )
    return value


def check_part_name(name: str) -> str:
    """A part's name is a short lowercase file name: it becomes a file name and a hash field."""
    if not PART_NAME_RE.fullmatch(name):
        raise ValueError(f"bad part name {name!r}")
    return name


def check_key_id(value: str) -> str:
    """A key's id is a short lowercase hex name (never a key): it becomes a line and a field."""
    if not isinstance(value, str) or not KEY_ID_RE.fullmatch(value):
        raise ValueError("bad key id")
    return value


def check_session_id(value: str) -> str:
    """A sign-in's id is 32 URL-safe characters, nothing else (it names a file or a key)."""
    if not SESSION_ID_RE.fullmatch(value):
        raise ValueError("bad session id")
    return value


def not_found(image_id: str) -> FaceappError:
    """The 404 for a well-formed image_id the store does not hold."""
    return FaceappError(
        "image_id.not_found",
        f"No stored image has the id {image_id[:12]}…; it expired, was wiped or never existed. "
        "Send the image to /api/validate again.",
        field="image_id",
    )


def unavailable(exc: BaseException) -> FaceappError:
    """The 503 for a store that cannot be reached or written (never a 500)."""
    return FaceappError(
        "store.unavailable",
        f"The image store is unavailable ({type(exc).__name__}); try again shortly.",
    )


def is_current(meta: Mapping[str, Any] | None) -> bool:
    """True when an item's metadata says it was stored in this version's format."""
    stored = (meta or {}).get("stored")
    return isinstance(stored, Mapping) and stored.get("format") == STORE_FORMAT


def oldest_first(events: list[dict]) -> list[dict]:
    """A trace's events ordered by their time, oldest first (events of one time keep their order).

    An event's time is taken before it is appended, so two requests' appends can land in the
    other order; both backends sort on reading. Times are ISO 8601 UTC with milliseconds, all of
    one width, so they sort as text.
    """
    return sorted(events, key=lambda event: str(event.get("time", "")))


def keep_last(events: list[dict], max_events: int) -> list[dict]:
    """The newest `max_events` of a trace ordered oldest first (all of them when 0)."""
    return events[-max_events:] if max_events > 0 else events


def log_evicted(count: int, max_bytes: int, max_age: float) -> None:
    """One log line for an eviction pass that removed anything (both backends)."""
    metrics.count_evicted(count)
    if count:
        log.info("store evicted %d image(s) (limits: %s bytes, %s s)", count, max_bytes, max_age)


class EvictionSchedule:
    """``maybe_evict`` for the backends: evict at most every `evict_interval` s per process.

    A backend sets ``max_bytes``, ``max_age``, ``evict_interval`` and ``_last_evict`` and
    provides ``evict()`` (a full pass is not free: a folder scan, or a Redis index walk).
    """

    max_bytes: int
    max_age: float
    evict_interval: float
    _last_evict: float

    def evict(self) -> int:
        raise NotImplementedError

    def maybe_evict(self) -> None:
        """Evict if limits are set and the last pass is `evict_interval` seconds old."""
        due = time.monotonic() - self._last_evict > self.evict_interval
        if (self.max_bytes or self.max_age) and due:
            self.evict()


class Backend(Protocol):
    """What every store backend provides (faceapp/store/files.py, faceapp/store/redis_backend.py).

    Results are stored under arbitrary string keys (a backend may hash them inside);
    ``drop_results`` drops them all, or those that ``where(key, document)`` picks. Sessions
    are the tester's sign-ins: an id that counts until it expires or is dropped (sign-out).
    Owners are the ids of the keys that sent an image (per-key privacy, faceapp/services.py):
    kept beside the trace, never trimmed with it, and gone with the image.
    """

    def put_image(
        self,
        image_id: str,
        image_bytes: bytes,
        meta: dict,
        parts: Mapping[str, bytes] | None = None,
    ) -> bool: ...
    def get_meta(self, image_id: str) -> dict | None: ...
    def set_meta(self, image_id: str, meta: dict) -> None: ...
    def get_image(self, image_id: str) -> bytes | None: ...
    def get_part(self, image_id: str, name: str) -> bytes | None: ...
    def put_result(self, image_id: str, key: str, document: dict) -> None: ...
    def get_result(self, image_id: str, key: str) -> dict | None: ...
    def drop_results(
        self, image_id: str, where: Callable[[str, dict], bool] | None = None
    ) -> None: ...
    def append_event(self, image_id: str, event: dict) -> None: ...
    def events(self, image_id: str) -> list[dict]: ...
    def add_owner(self, image_id: str, key_id: str) -> None: ...
    def owners(self, image_id: str) -> set[str]: ...
    def delete(self, image_id: str) -> bool: ...
    def wipe(self) -> int: ...
    def recent(self, limit: int) -> list[dict]: ...
    def evict(self) -> int: ...
    def usage(self) -> tuple[int, int]: ...
    def put_session(self, session_id: str, seconds: float) -> None: ...
    def has_session(self, session_id: str) -> bool: ...
    def drop_session(self, session_id: str) -> None: ...
    def ping(self) -> None: ...
    def is_outage(self, exc: BaseException) -> bool: ...
