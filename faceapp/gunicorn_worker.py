"""gunicorn's threaded worker with a deadline on reading request headers (``worker_class``).

gunicorn's gthread worker reads a request's headers on a pool thread from a blocking socket with
no time limit, so a client that sends one header line every few seconds holds a thread for as
long as it likes: a handful of them stall the worker, health checks included. This worker gives
each request HEADER_TIMEOUT seconds (default 5) from its first byte to its last header, each
later read of the body BODY_READ_TIMEOUT seconds (default 30, like nginx's client_body_timeout),
and the whole body BODY_TIMEOUT seconds (default 120: a byte every 29 s would pass the per-read
limit). They are faceapp settings (FACEAPP_HEADER_TIMEOUT...), read from the app's config. A
client over any of them is disconnected; the view sees a cut-off body (a 400). nginx in front
(deploy/nginx-faceapp.conf) still does this better: it buffers whole requests before gunicorn
sees them.
"""

from __future__ import annotations

import socket
import time

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker


class DeadlineSocket:
    """A socket whose reads fail (as a disconnect) once the current deadline has passed."""

    def __init__(
        self, sock: socket.socket, header_timeout: float, read_timeout: float, body_timeout: float
    ) -> None:
        self._sock = sock
        self.header_timeout = header_timeout
        self.read_timeout = read_timeout
        self.body_timeout = body_timeout
        self.deadline: float | None = None  # absolute: the headers (or the body) are in by then
        self.per_read: float | None = None  # each body read must bring data within this

    def expect_headers(self) -> None:
        self.deadline, self.per_read = time.monotonic() + self.header_timeout, None

    def expect_body(self) -> None:
        self.deadline = time.monotonic() + self.body_timeout
        self.per_read = self.read_timeout

    def recv(self, size: int, *args) -> bytes:
        if self._sock.gettimeout() == 0.0:  # non-blocking (a drain between requests): as is
            return self._sock.recv(size, *args)
        wait = self.per_read
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise NoMoreData(b"")
            wait = left if wait is None else min(wait, left)
        self._sock.settimeout(wait)
        try:
            return self._sock.recv(size, *args)
        except TimeoutError:
            raise NoMoreData(b"") from None
        finally:
            self._sock.settimeout(None)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class HeaderDeadlineWorker(ThreadWorker):
    """gthread, with the header and body read deadlines of :class:`DeadlineSocket`."""

    deadlines = (5.0, 30.0, 120.0)  # header, each body read, whole body: until the app is loaded

    def load_wsgi(self):
        super().load_wsgi()
        config = getattr(self.wsgi, "config", None) or {}
        header, body_read, body = self.deadlines
        self.deadlines = (
            config.get("HEADER_TIMEOUT", header),
            config.get("BODY_READ_TIMEOUT", body_read),
            config.get("BODY_TIMEOUT", body),
        )

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
