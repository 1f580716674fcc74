"""gunicorn's threaded worker with a deadline on reading request headers (``worker_class``).

gunicorn's gthread worker reads a request's headers on a pool thread from a blocking socket with
no time limit, so a client that sends one header line every few seconds holds a thread for as
long as it likes: a handful of them stall the worker, health checks included. This worker gives
each request HEADER_TIMEOUT seconds (default 5) from its first byte to its last header, each
later read of the body BODY_READ_TIMEOUT seconds (default 30, like nginx's client_body_timeout),
and the whole body BODY_TIMEOUT seconds (default 120: a byte every 29 s would pass the per-read
limit). The body must also keep up a minimum rate: after a grace of BODY_RATE_GRACE seconds
(default 5) it must have brought BODY_MIN_RATE bytes (default 1024) for every further second, so
a client sending one byte every 5 s is cut off after about 5 s, not 120. They are faceapp
settings (FACEAPP_HEADER_TIMEOUT...), read from the app's config. A client over any of them is
disconnected; the view sees a cut-off body (a 400).

An answer given without reading the whole body (401 without a key, 429, 413 for a declared
length over the limit) closes the connection with ``Connection: close``: draining a body nobody
wants from a slow client would hold a thread after the answer (20 such clients took health to
0/4 before).

nginx in front (deploy/nginx-faceapp.conf) still does all this better: it buffers whole
requests before gunicorn sees them, so slow headers and bodies cost no gunicorn thread at all.

Also here, what a worker tunes after fork (:func:`tune_malloc`). What the master imports before
it forks (gunicorn's and Celery's alike) is faceapp/preload.py's.
"""

from __future__ import annotations

import os
import socket
import time

from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker


class DeadlineSocket:
    """A socket whose reads fail (as a disconnect) once the current deadline has passed."""

    def __init__(
        self,
        sock: socket.socket,
        header_timeout: float,
        read_timeout: float,
        body_timeout: float,
        min_rate: float = 0.0,
        rate_grace: float = 5.0,
    ) -> None:
        self._sock = sock
        self.header_timeout = header_timeout
        self.read_timeout = read_timeout
        self.body_timeout = body_timeout
        self.min_rate = min_rate  # bytes per second a body must average after the grace; 0: off
        self.rate_grace = rate_grace
        self.deadline: float | None = None  # absolute: the headers (or the body) are in by then
        self.per_read: float | None = None  # each body read must bring data within this
        self.body_started: float | None = None  # when the body phase began (None: headers)
        self.body_received = 0

    def expect_headers(self) -> None:
        self.deadline, self.per_read = time.monotonic() + self.header_timeout, None
        self.body_started = None

    def expect_body(self) -> None:
        now = time.monotonic()
        self.deadline = now + self.body_timeout
        self.per_read = self.read_timeout
        self.body_started, self.body_received = now, 0

    def _rate_deadline(self) -> float | None:
        """When the body falls below the minimum rate if no more of it arrives."""
        if self.body_started is None or self.min_rate <= 0:
            return None
        return self.body_started + self.rate_grace + self.body_received / self.min_rate

    def recv(self, size: int, *args) -> bytes:
        if self._sock.gettimeout() == 0.0:  # non-blocking (a drain between requests): as is
            return self._sock.recv(size, *args)
        wait = self.per_read
        now = time.monotonic()
        for deadline in (self.deadline, self._rate_deadline()):
            if deadline is not None:
                left = deadline - now
                if left <= 0:
                    raise NoMoreData(b"")
                wait = left if wait is None else min(wait, left)
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(size, *args)
        except TimeoutError:
            raise NoMoreData(b"") from None
        finally:
            self._sock.settimeout(None)
        if self.body_started is not None:
            self.body_received += len(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class HeaderDeadlineWorker(ThreadWorker):
    """gthread, with the header and body read deadlines of :class:`DeadlineSocket`."""

    # header, each body read, whole body, minimum body rate, its grace: until the app is loaded
    deadlines = (5.0, 30.0, 120.0, 1024.0, 5.0)

    def load_wsgi(self):
        super().load_wsgi()
        config = getattr(self.wsgi, "config", None) or {}
        names = ("HEADER_TIMEOUT", "BODY_READ_TIMEOUT", "BODY_TIMEOUT")
        names += ("BODY_MIN_RATE", "BODY_RATE_GRACE")
        self.deadlines = tuple(
            config.get(name, default) for name, default in zip(names, self.deadlines, strict=True)
        )
        # As a Flask middleware (wsgi_app): the hooks use self.wsgi as the Flask app itself.
        if hasattr(self.wsgi, "wsgi_app"):
            self.wsgi.wsgi_app = close_when_body_unread(self.wsgi.wsgi_app)

    def handle(self, conn):
        # Not under gunicorn's own TLS (it wraps the socket itself); faceapp leaves TLS to nginx.
        fresh = not conn.initialized and not self.cfg.is_ssl
        if fresh and not isinstance(conn.sock, DeadlineSocket):
            conn.sock = DeadlineSocket(conn.sock, *self.deadlines)
        if isinstance(conn.sock, DeadlineSocket):
            conn.sock.expect_headers()  # each request on a kept-alive connection gets its own
        return super().handle(conn)

    def handle_request(self, req, conn):
        if isinstance(conn.sock, DeadlineSocket):
            conn.sock.expect_body()
        return super().handle_request(req, conn)


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
#: Free memory at the top of a heap is kept up to this size instead of handed back at once.
MALLOC_TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_malloc() -> bool:
    """Let a worker keep freed heap memory for reuse instead of handing it back at once.

    glibc maps every allocation over its mmap threshold (128 KiB at first, raised only as
    mapped blocks are freed) with mmap, and gives free heap tops back to the system, so each
    validate's 9 MB decode buffer and its copies came as fresh pages: about 3300 page faults per
    validate of a 4000x3000 JPEG, and a decode 1.4x slower than the same decode in a loop. With
    these two thresholds fixed, 830 page faults and about the loop's speed; jemalloc made
    more faults (6800) and ``MALLOC_ARENA_MAX=2`` no fewer (issue 20's measurements, README
    "Performance").

    Only the trim threshold is set here. The mmap threshold is decoding's (4 MiB:
    ``decoding.return_large_buffers_to_the_os``, from post_worker_init): the decode memory budget
    needs large buffers given back when freed, so a decode buffer is still mapped afresh, and
    the 392 page faults measured with a 32 MiB mmap threshold are not what a worker gets. That
    trade (bounded memory over fewer page faults) is issue 22's goal against issue 20's.
    Skipped where the C library is not glibc, and where MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_ is set (the operator's choice stands). True when applied.
    """
    import ctypes
    import ctypes.util

    if any(os.environ.get(name) for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


def close_when_body_unread(app):
    """Wrap a WSGI app: an answer started before the request body was read closes the
    connection (gunicorn's ``Connection: close``) instead of draining the rest of the body."""

    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            if body_unread(environ.get("wsgi.input")):
                # gunicorn hands its Response's bound start_response to the app.
                response = getattr(start_response, "__self__", None)
                if response is not None and hasattr(response, "force_close"):
                    response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


def body_unread(body) -> bool:
    """Whether a gunicorn request body still has bytes on the socket."""
    reader = getattr(body, "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length > 0
    if isinstance(reader, ChunkedReader):
        return reader.parser is not None
    return False
