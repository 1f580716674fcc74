"""Issue 22 item 5: nginx's own answers (404, 413) never echo a client's raw X-Request-ID."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.servers import free_port, nginx_binary, wait_until, write_nginx_config

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(tmp_path):
    """deploy/nginx-faceapp.conf with no upstream behind it: only nginx's own answers."""
    port = free_port()
    deny = lambda site: site.replace("allow 127.0.0.1;", "").replace("allow ::1;", "")  # noqa: E731
    conf = write_nginx_config(f"127.0.0.1:{free_port()}", str(tmp_path), port, edit=deny)
    process = subprocess.Popen(
        [nginx_binary(), "-c", conf, "-p", str(tmp_path), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        assert process.poll() is None, "nginx exited early"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    try:
        wait_until(listening, 20, "nginx listening")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def ask(port: int, head: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /metrics HTTP/1.1\r\n",  # denied: nginx's own 404
        "POST /api/validate HTTP/1.1\r\nContent-Length: 50000000\r\n",  # nginx's own 413
    ],
)
def test_nginx_answers_echo_only_a_sane_request_id(proxy, request_line):
    raw = "r" * 4000
    answer = ask(
        proxy, f"{request_line}Host: x\r\nX-Request-ID: {raw}\r\nConnection: close\r\n\r\n"
    )
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.split()[1] in ("404", "413"), head
    echoed = [line for line in head.split("\r\n") if line.lower().startswith("x-request-id:")]
    assert echoed and raw not in head and len(echoed[0]) < 100
    sane = ask(proxy, f"{request_line}Host: x\r\nX-Request-ID: qa-123\r\nConnection: close\r\n\r\n")
    assert b"X-Request-ID: qa-123\r\n" in sane
