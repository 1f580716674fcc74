"""An overall deadline on an HTTP download: connect, status line, headers and body together.

requests and urllib3 only know per-operation timeouts: a server that sends one header line
every second never trips a 5-second read timeout, and held an image_url fetch for 44 s (issue
22). Here every socket a download opens is handed to a :class:`SocketDeadline`, which shuts them
all down when the deadline passes; the read blocked on one returns at once and the download
fails. Used by image_url (faceapp/url_fetch.py) and by model pulls (faceapp/model_files.py).
"""

from __future__ import annotations

import contextvars
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_CURRENT: contextvars.ContextVar[SocketDeadline | None] = contextvars.ContextVar(
    "faceapp_socket_deadline", default=None
)


class SocketDeadline:
    """Shuts down every socket it watches once `seconds` have passed (a timer thread)."""

    def __init__(self, seconds: float) -> None:
        self.give_up_at = time.monotonic() + max(0.0, seconds)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed (the sockets are then shut down)."""
        return self._expired or time.monotonic() >= self.give_up_at

    def seconds_left(self) -> float:
        return max(0.0, self.give_up_at - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once if it has passed)."""
        with self._lock:
            self._sockets.append(sock)
            late = self._expired
        if late:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once; close stays the owner's
    except OSError:
        pass  # not connected, or closed already


@contextmanager
def overall_deadline(seconds: float) -> Iterator[SocketDeadline]:
    """Within the block, sockets opened through :class:`DeadlineAdapter` get this deadline."""
    deadline = SocketDeadline(seconds)
    token = _CURRENT.set(deadline)
    deadline.start()
    try:
        yield deadline
    finally:
        deadline.cancel()
        _CURRENT.reset(token)


def _watch_new(sock: socket.socket) -> socket.socket:
    deadline = _CURRENT.get()
    if deadline is not None:
        deadline.watch(sock)
    return sock


class _HTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _watch_new(super()._new_conn())


class _HTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:  # the TCP socket, before TLS wraps it
        return _watch_new(super()._new_conn())


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """A requests transport whose sockets obey the :func:`overall_deadline` around them."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
