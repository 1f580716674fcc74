"""Where images, their metadata, analysis results and traces live, keyed by image_id.

One interface (:class:`~faceapp.store.base.Backend`, in base.py) and its backends, picked by
STORE_URL: a folder path or ``file://`` URL (:class:`~faceapp.store.files.FileStore`, the default,
under the instance folder) or ``redis://host:port/db``
(:class:`~faceapp.store.redis_backend.RedisStore`). Every worker of every instance sharing the
store sees the same images.

Views reach the backend through :data:`store` (``store.backend``), which turns a backend's
outage (an unreachable Redis, a full or read-only disk) into 503 ``store.unavailable``; the
backend itself, unguarded, is ``store.backend.inner``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any
from urllib.parse import urlparse

from flask import Flask

from faceapp.errors import FaceappError
from faceapp.extension import Slot
from faceapp.store.base import (
    IMAGE_ID_RE,
    STORE_FORMAT,
    Backend,
    check_image_id,
    image_id_for,
    is_current,
    not_found,
    unavailable,
)
from faceapp.store.files import FileStore

__all__ = [
    "IMAGE_ID_RE",
    "STORE_FORMAT",
    "Backend",
    "FileStore",
    "Guarded",
    "ImageStore",
    "check_image_id",
    "image_id_for",
    "is_current",
    "not_found",
    "open_backend",
    "store",
]

log = logging.getLogger(__name__)

SLOT = Slot("faceapp.store", "faceapp.store.store.init_app(app)")


def open_backend(
    url: str, max_bytes: int = 0, max_age_seconds: float = 0, max_events: int = 0
) -> Backend:
    """The backend STORE_URL names: a folder, ``file://`` URL or ``redis://`` URL; `max_events`
    bounds each image's trace (0: no bound)."""
    limits = {"max_bytes": max_bytes, "max_age_seconds": max_age_seconds, "max_events": max_events}
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss", "unix"):
        from faceapp.store.redis_backend import RedisStore

        return RedisStore(url, **limits)
    if parsed.scheme == "file":
        url = parsed.path
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"STORE_URL {url!r}: use a folder, file:// or redis://")
    return FileStore(url, **limits)


class Guarded:
    """A backend whose outages surface as 503 store.unavailable (the app's view of a backend).

    Its methods and settings are the backend's; :attr:`inner` is the backend itself, for a
    caller that needs to know which one it is (``isinstance(store.backend.inner, RedisStore)``).
    """

    inner: Backend

    def __init__(self, backend: Backend) -> None:
        object.__setattr__(self, "inner", backend)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if not callable(value):
            return value
        backend = self.inner

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except FaceappError:
                raise
            except Exception as exc:
                if backend.is_outage(exc):
                    log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
                    raise unavailable(exc) from exc
                raise

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)


class ImageStore:
    """Flask extension giving views the configured backend (``store.backend``)."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Open the backend STORE_URL names for `app` (once per app)."""
        SLOT.check_free(app)
        backend = open_backend(
            app.config["STORE_URL"],
            max_bytes=app.config["STORE_MAX_BYTES"],
            max_age_seconds=app.config["STORE_MAX_AGE_SECONDS"],
            max_events=app.config["TRACE_MAX_EVENTS"],
        )
        SLOT.register(app, Guarded(backend))

    @property
    def backend(self) -> Guarded:
        """The current app's backend, guarded (RuntimeError before :meth:`init_app`)."""
        return SLOT.get()

    def meta_or_404(self, image_id: str) -> dict:
        """The stored metadata of a valid image_id, else 400 image_id.invalid / 404 not_found.

        An item stored in another format (an earlier version's) is dropped here: it is answered
        as not found, so the client sends the image again, never served from parts it lacks.
        """
        check_image_id(image_id)
        meta = self.current_meta(image_id)
        if meta is None:
            raise not_found(image_id)
        return meta

    def current_meta(self, image_id: str) -> dict | None:
        """The metadata of an item stored in this version's format; others are deleted."""
        meta = self.backend.get_meta(image_id)
        if meta is not None and not is_current(meta):
            log.info("store: dropping %s, stored in an older format", image_id[:12])
            self.backend.delete(image_id)
            return None
        return meta


store = ImageStore()
