"""Slow clients against real gunicorn (issue 8, item 4), and what its access log writes (item 3).

Loopback only, every loop bounded. The header-read deadline is shortened to 2 s so the test
stays short; the default is 5 s (faceapp/gunicorn_worker.py).
"""

from __future__ import annotations

import base64
import socket
import threading
import time

import pytest
import requests

from tests.servers import gunicorn

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 2.0
SLOW_CLIENTS = 4  # as many as the worker has threads: without a deadline they hold them all


def slow_client(port: int, index: int, closed_after: list, stop: threading.Event) -> None:
    """Send a request's headers one line every 0.5 s, for at most 12 s; note when cut off."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")
        for line in range(24):
            if stop.wait(0.5):
                return
            try:
                sock.sendall(f"X-Slow-{index}-{line}: 1\r\n".encode())
                sock.settimeout(0.01)
                if sock.recv(1) == b"":  # the server closed the connection
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        else:
            return  # never cut off
        closed_after.append(time.monotonic() - started)


def test_a_handful_of_slow_clients_cannot_starve_health(tmp_path, tiny_model_dir):
    env = {
        "FACEAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "FACEAPP_MODEL_NAME": tiny_model_dir,
        "FACEAPP_LOAD_MODEL_ON_START": "false",
        "THREADS": str(SLOW_CLIENTS),
        "FACEAPP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    }
    log_path = tmp_path / "gunicorn.log"
    with gunicorn(env, workers=1, log_path=str(log_path)) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        closed_after: list[float] = []
        stop = threading.Event()
        clients = [
            threading.Thread(target=slow_client, args=(port, i, closed_after, stop))
            for i in range(SLOW_CLIENTS)
        ]
        for client in clients:
            client.start()
        time.sleep(0.5)  # every thread of the worker now reads a slow client's headers
        answers = []
        try:
            for _ in range(8):
                try:
                    answer = requests.get(base + "/api/health", timeout=HEADER_TIMEOUT + 6)
                    answers.append(answer.status_code)
                except requests.RequestException as exc:
                    answers.append(type(exc).__name__)
                time.sleep(0.5)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=15)
        assert answers == [200] * 8
        assert len(closed_after) == SLOW_CLIENTS  # each one cut off at the deadline, not served
        assert all(seconds < 12 for seconds in closed_after), closed_after

        # The access log: no forged line, no key, no control character (issue 8, items 3 and 5).
        secret = base64.b64encode(b"the-secret-key:").decode()
        requests.get(
            base + "/api/x%0aFORGED-LINE%1b?api_key=the-secret-key",
            headers={"Authorization": f"Basic {secret}"},
            timeout=5,
        )
    text = log_path.read_text(errors="replace")
    assert "the-secret-key" not in text and secret not in text
    assert not any(line.startswith("FORGED-LINE") for line in text.splitlines())
    assert "\x1b" not in text


def dripping(sock: socket.socket, stop: threading.Event, every: float = 0.05) -> threading.Thread:
    """A peer that sends one byte every `every` seconds until stopped (at most 200 bytes)."""

    def run() -> None:
        for _ in range(200):
            if stop.wait(every):
                return
            try:
                sock.sendall(b"x")
            except OSError:
                return

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# Every read brings a byte well within the per-read limit: only one deadline stops the peer.
DRIPPING_CASES = {
    # The headers' or the whole body's deadline (0.4 s).
    "headers": ("headers", {"header_timeout": 0.4, "read_timeout": 5.0, "body_timeout": 0.4}),
    "body": ("body", {"header_timeout": 0.4, "read_timeout": 5.0, "body_timeout": 0.4}),
    # 20 bytes a second against a minimum of 200: within every per-read and total limit, only
    # the rate stops it (before: held until the 60 s body deadline).
    "body-rate": (
        "body",
        {
            "header_timeout": 5.0,
            "read_timeout": 5.0,
            "body_timeout": 60.0,
            "min_rate": 200,
            "rate_grace": 0.4,
        },
    ),
}


@pytest.mark.parametrize("case", DRIPPING_CASES)
def test_a_dripping_peer_is_cut_off_at_the_deadline(case):
    from gunicorn.http.errors import NoMoreData

    from faceapp.gunicorn_worker import DeadlineSocket

    phase, limits = DRIPPING_CASES[case]
    ours, theirs = socket.socketpair()
    stop = threading.Event()
    sock = DeadlineSocket(ours, **limits)
    if phase == "headers":
        sock.expect_headers()
    else:
        sock.expect_body()
    drip = dripping(theirs, stop)
    started, received = time.monotonic(), b""
    try:
        with pytest.raises(NoMoreData):
            for _ in range(200):
                received += sock.recv(1)
    finally:
        stop.set()
        drip.join(timeout=5)
        ours.close()
        theirs.close()
    assert 0.3 < time.monotonic() - started < 3 and received.startswith(b"x")


def test_a_silent_peer_is_cut_off_after_one_read_timeout():
    from gunicorn.http.errors import NoMoreData

    from faceapp.gunicorn_worker import DeadlineSocket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        sock = DeadlineSocket(ours, header_timeout=5.0, read_timeout=0.3, body_timeout=60.0)
        sock.expect_body()
        theirs.sendall(b"ab")
        assert sock.recv(10) == b"ab"
        with pytest.raises(NoMoreData):
            sock.recv(10)
        assert ours.gettimeout() is None  # left blocking, as gunicorn expects


def test_a_body_at_the_minimum_rate_is_read_whole():
    from faceapp.gunicorn_worker import DeadlineSocket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        sock = DeadlineSocket(
            ours, header_timeout=5.0, read_timeout=5.0, body_timeout=60.0, min_rate=200
        )
        sock.expect_body()
        theirs.sendall(b"x" * 5000)
        received = b""
        while len(received) < 5000:
            received += sock.recv(5000)
        assert received == b"x" * 5000


def unwanted_body_client(port: int, results: list, stop: threading.Event) -> None:
    """POST an upload without a key, then drip its body a byte every 0.5 s; note the answer's
    status line, its Connection header and how long the server kept the connection open."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(
            b"POST /api/validate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        answer = b""
        for _ in range(40):
            if stop.wait(0.5):
                return
            try:
                sock.sendall(b"x")
                sock.settimeout(0.05)
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:  # closed by the server
                break
            answer += data
        else:
            results.append(("never closed", answer[:40]))
            return
        results.append((answer.split(b"\r\n", 1)[0], time.monotonic() - started, answer))


def test_an_answer_before_the_body_closes_the_connection(tmp_path, tiny_model_dir):
    """Slow bodies without a key: each gets its 401 and the connection closes; health stays up."""
    threads = 4
    env = {
        "FACEAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "FACEAPP_MODEL_NAME": tiny_model_dir,
        "FACEAPP_LOAD_MODEL_ON_START": "false",
        "FACEAPP_API_KEYS": "the-key",
        "THREADS": str(threads),
    }
    with gunicorn(env, workers=1) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        results: list = []
        stop = threading.Event()
        clients = [
            threading.Thread(target=unwanted_body_client, args=(port, results, stop))
            for _ in range(threads * 3)
        ]
        for client in clients:
            client.start()
        answers = []
        try:
            for _ in range(6):
                time.sleep(0.5)
                try:
                    answers.append(requests.get(base + "/api/health", timeout=4).status_code)
                except requests.RequestException as exc:
                    answers.append(type(exc).__name__)
        finally:
            for client in clients:
                client.join(timeout=30)
            stop.set()
    assert answers == [200] * 6
    assert len(results) == threads * 3
    for status_line, *rest in results:
        assert status_line == b"HTTP/1.1 401 UNAUTHORIZED", (status_line, rest)
        seconds, answer = rest
        assert b"connection: close" in answer.lower()
        assert seconds < 4, seconds  # before: held until gunicorn's drain gave up
