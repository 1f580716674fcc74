"""Tests for faceapp.url_fetch: the remote-fetch rules, against real servers on 127.0.0.1 only."""

from __future__ import annotations

import gzip
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
import urllib3.response
import urllib3.util.connection
from PIL import Image
from pytest_httpserver import HTTPServer
from werkzeug import Response

from faceapp.errors import FaceappError
from faceapp.url_fetch import (
    FetchPolicy,
    check_address,
    fetch_url,
    parse_target,
    resolve_checked_address,
)

# Small timeouts keep the suite fast; servers are local so nothing legitimate takes this long.
LOCAL = FetchPolicy(allow_private=True, connect_timeout=0.5, read_timeout=0.5, deadline=5.0)
REAL_GETADDRINFO = socket.getaddrinfo


# ---------------------------------------------------------------------------------------------
# Servers and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def _web_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def web(_web_server: HTTPServer) -> Iterator[HTTPServer]:
    """A well-behaved HTTP server (pytest-httpserver) on 127.0.0.1, fresh handlers per test."""
    _web_server.clear()
    yield _web_server
    _web_server.clear()


class RawServer:
    """A 127.0.0.1 TCP server that reads each request head, then runs `handler(conn, stop)`."""

    def __init__(
        self,
        handler: Callable[[socket.socket, threading.Event], None],
        wrap: Callable[[socket.socket], socket.socket] | None = None,
    ) -> None:
        self.handler = handler
        self.wrap = wrap
        self.stop = threading.Event()
        self.heads: list[bytes] = []
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so the accept loop notices `stop`
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept_loop)
        self.acceptor.start()

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,))
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            if self.wrap is not None:
                conn = self.wrap(conn)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            self.heads.append(head)
            self.handler(conn, self.stop)
        except (OSError, ssl.SSLError) as exc:  # the client hanging up is expected
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)
        self.listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(handler, wrap=None) -> RawServer:
        servers.append(RawServer(handler, wrap))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def fake_dns(table: dict[str, list[str] | Callable[[int], list[str]]]):
    """A getaddrinfo that answers names in `table` (a list, or a function of the call number)."""
    calls: dict[str, int] = {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in table:
            return REAL_GETADDRINFO(host, port, family, type, proto, flags)
        calls[host] = calls.get(host, 0) + 1
        answer = table[host]
        addresses = answer(calls[host]) if callable(answer) else answer
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in addresses
        ]

    getaddrinfo.calls = calls
    return getaddrinfo


@pytest.fixture
def connections(monkeypatch) -> list[tuple[str, int]]:
    """Record every TCP connection urllib3 opens (and let a made-up public address reach us)."""
    made: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def create_connection(address, *args, **kwargs):
        made.append(address)
        host, port = address
        if host == "93.184.215.14":  # the "public" server of a test is really our local one
            return real(("127.0.0.1", port), *args, **kwargs)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return made


@pytest.fixture
def bytes_read(monkeypatch) -> list[int]:
    """Record the size of every decoded chunk fetch_url reads from a response body."""
    sizes: list[int] = []
    real = urllib3.response.HTTPResponse.read1

    def read1(self, amt=None, decode_content=None):
        data = real(self, amt, decode_content)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(urllib3.response.HTTPResponse, "read1", read1)
    return sizes


def fails_with(code: str, url: str, policy: FetchPolicy) -> FaceappError:
    """Run fetch_url, expect `code`, and check the message is one clean human sentence."""
    with pytest.raises(FaceappError) as caught:
        fetch_url(url, policy)
    error = caught.value
    assert error.code == code, error.message
    assert error.field == "image_url"
    message = error.message
    assert message.endswith(".") and "\n" not in message and message.count(". ") == 0
    for leak in ("Errno", "Error", "Exception", "Pool", "object at", "Max retries", "127.0.0.1"):
        assert leak not in message
    return error


def local(server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def send_head(conn: socket.socket, *lines: str) -> None:
    conn.sendall(("HTTP/1.1 200 OK\r\n" + "".join(f"{x}\r\n" for x in lines) + "\r\n").encode())


# ---------------------------------------------------------------------------------------------
# Happy paths
# ---------------------------------------------------------------------------------------------


def test_fetches_a_png(web, png_bytes):
    web.expect_request("/face.png").respond_with_data(png_bytes, content_type="image/png")
    assert fetch_url(local(web, "/face.png"), LOCAL) == png_bytes


def test_html_labelled_as_png_is_returned_as_is(web):
    # The Content-Type is not trusted either way: the decoder decides, and says url.not_image.
    html = b"<html><body>not a picture</body></html>"
    web.expect_request("/fake.png").respond_with_data(html, content_type="image/png")
    assert fetch_url(local(web, "/fake.png"), LOCAL) == html


def test_gzip_body_is_decoded(web, png_bytes):
    web.expect_request("/z.png").respond_with_data(
        gzip.compress(png_bytes), content_type="image/png", headers={"Content-Encoding": "gzip"}
    )
    assert fetch_url(local(web, "/z.png"), LOCAL) == png_bytes


def test_connects_to_the_checked_address_without_a_second_lookup(
    web, png_bytes, monkeypatch, connections
):
    # A rebinding resolver: the first answer is our server, any later one goes nowhere.
    dns = fake_dns({"images.test": lambda n: ["127.0.0.1"] if n == 1 else ["127.0.0.2"]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    web.expect_request("/face.png").respond_with_data(png_bytes, content_type="image/png")

    assert fetch_url(f"http://images.test:{web.port}/face.png", LOCAL) == png_bytes
    assert dns.calls == {"images.test": 1}
    assert connections == [("127.0.0.1", web.port)]
    request, _ = web.log[0]
    assert request.headers["Host"] == f"images.test:{web.port}"


def test_proxy_settings_in_the_environment_are_ignored(web, png_bytes, monkeypatch):
    # A proxy would do its own DNS lookup and bypass the address checks.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    web.expect_request("/face.png").respond_with_data(png_bytes, content_type="image/png")
    assert fetch_url(local(web, "/face.png"), LOCAL) == png_bytes


def test_relative_redirect_is_followed_and_each_hop_resolved_once(web, png_bytes, monkeypatch):
    dns = fake_dns({"images.test": ["127.0.0.1"]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    web.expect_request("/a/start").respond_with_response(
        Response(status=302, headers={"Location": "face.png"})
    )
    web.expect_request("/a/face.png").respond_with_data(png_bytes, content_type="image/png")

    assert fetch_url(f"http://images.test:{web.port}/a/start", LOCAL) == png_bytes
    assert dns.calls == {"images.test": 2}


def test_exactly_max_redirects_is_allowed(web, png_bytes):
    for hop in range(3):
        web.expect_request(f"/r{hop}").respond_with_response(
            Response(status=307, headers={"Location": f"/r{hop + 1}"})
        )
    web.expect_request("/r3").respond_with_data(png_bytes, content_type="image/png")
    policy = FetchPolicy(allow_private=True, max_redirects=3, read_timeout=0.5)
    assert fetch_url(local(web, "/r0"), policy) == png_bytes


# ---------------------------------------------------------------------------------------------
# TLS: the connection is pinned, but SNI and verification use the name
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test CA")
    folder = tmp_path_factory.mktemp("tls")

    def openssl(args: str) -> None:
        subprocess.run(["openssl", *args.split()], cwd=folder, check=True, capture_output=True)

    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl(f"req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=faceapp-test-CA")
    openssl(f"req {ec} -keyout server.key -out server.csr -subj /CN=images.test")
    (folder / "ext.cnf").write_text(
        "subjectAltName=DNS:images.test\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem"
        " -days 2 -extfile ext.cnf"
    )
    return {name: str(folder / name) for name in ("ca.pem", "server.pem", "server.key")}


@pytest.fixture
def tls_server(raw_server, tls_files, png_bytes, monkeypatch):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["server.pem"], tls_files["server.key"])
    server_names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)

    def handler(conn, _stop):
        send_head(conn, "Content-Type: image/png", f"Content-Length: {len(png_bytes)}")
        conn.sendall(png_bytes)

    server = raw_server(handler, wrap=lambda s: context.wrap_socket(s, server_side=True))
    server.server_names = server_names
    # requests verifies against its default bundle; make that our test CA for this test.
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", tls_files["ca.pem"])
    return server


def test_https_sends_sni_and_verifies_the_name(tls_server, png_bytes, monkeypatch, connections):
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"images.test": ["127.0.0.1"]}))
    url = f"https://images.test:{tls_server.port}/face.png"
    assert fetch_url(url, LOCAL) == png_bytes
    assert tls_server.server_names == ["images.test"]
    assert connections == [("127.0.0.1", tls_server.port)]
    assert tls_server.heads[0].lower().count(f"host: images.test:{tls_server.port}".encode()) == 1


def test_https_refuses_a_certificate_for_another_name(tls_server, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"other.test": ["127.0.0.1"]}))
    fails_with("url.unreachable", f"https://other.test:{tls_server.port}/face.png", LOCAL)
    assert tls_server.heads == []


# ---------------------------------------------------------------------------------------------
# Misbehaving servers: timeouts, deadline, byte cap
# ---------------------------------------------------------------------------------------------


def test_server_that_never_answers_times_out():
    # Listening but never accepting: the kernel completes the handshake, nobody ever answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        fails_with("url.timeout", f"http://127.0.0.1:{silent.getsockname()[1]}/x.png", LOCAL)
        assert time.monotonic() - started < 2.0


def test_dripping_body_is_cut_off_at_the_deadline(raw_server):
    def drip(conn, stop):
        send_head(conn, "Content-Type: image/png", "Content-Length: 1000")
        while not stop.is_set():
            conn.sendall(b"x")
            stop.wait(1.0)

    server = raw_server(drip)
    # Each byte arrives well inside the read timeout; only the overall deadline can stop it.
    policy = FetchPolicy(allow_private=True, connect_timeout=0.5, read_timeout=5.0, deadline=1.5)
    started = time.monotonic()
    fails_with("url.timeout", local(server, "/drip.png"), policy)
    assert 1.3 < time.monotonic() - started < 1.9


def test_deadline_spans_redirect_hops(raw_server):
    def slow_redirect(conn, stop):
        stop.wait(0.6)
        conn.sendall(
            b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n"
        )

    server = raw_server(slow_redirect)
    # Every hop answers inside the read timeout; together they overrun the deadline.
    policy = FetchPolicy(allow_private=True, read_timeout=1.0, deadline=1.5, max_redirects=10)
    started = time.monotonic()
    fails_with("url.timeout", local(server, "/start"), policy)
    assert 1.3 < time.monotonic() - started < 1.75


def test_declared_content_length_over_the_cap_is_refused_before_reading(raw_server, bytes_read):
    def huge(conn, stop):
        send_head(conn, "Content-Type: image/png", f"Content-Length: {50 * 1024 * 1024}")
        stop.wait(5)

    server = raw_server(huge)
    policy = FetchPolicy(allow_private=True, read_timeout=5.0)
    started = time.monotonic()
    fails_with("url.too_large", local(server, "/big.png"), policy)
    assert time.monotonic() - started < 1.0
    assert bytes_read == []


def test_endless_chunked_body_is_cut_off_one_byte_past_the_cap(raw_server, bytes_read):
    def endless(conn, stop):
        send_head(conn, "Content-Type: image/png", "Transfer-Encoding: chunked")
        chunk = b"3e8\r\n" + b"y" * 1000 + b"\r\n"
        while not stop.is_set():
            conn.sendall(chunk)

    server = raw_server(endless)
    policy = FetchPolicy(allow_private=True, read_timeout=0.5, max_bytes=10_000)
    fails_with("url.too_large", local(server, "/endless.png"), policy)
    assert sum(bytes_read) == 10_001


def test_gzip_bomb_counts_decoded_bytes(web, bytes_read):
    compressed = gzip.compress(b"\0" * 200_000)
    assert len(compressed) < 1_000  # the header alone gives no hint
    web.expect_request("/bomb.png").respond_with_data(
        compressed, content_type="image/png", headers={"Content-Encoding": "gzip"}
    )
    policy = FetchPolicy(allow_private=True, read_timeout=0.5, max_bytes=100_000)
    fails_with("url.too_large", local(web, "/bomb.png"), policy)
    assert sum(bytes_read) == 100_001


def test_body_exactly_at_the_cap_is_accepted(web):
    web.expect_request("/cap.png").respond_with_data(b"z" * 5000, content_type="image/png")
    policy = FetchPolicy(allow_private=True, read_timeout=0.5, max_bytes=5000)
    assert len(fetch_url(local(web, "/cap.png"), policy)) == 5000


# ---------------------------------------------------------------------------------------------
# Redirects and statuses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/face.png", "http://intranet.test/x"])
def test_redirect_to_a_private_address_is_forbidden(web, monkeypatch, connections, target):
    dns = fake_dns({"public.test": ["93.184.215.14"], "intranet.test": ["10.0.0.1"]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    web.expect_request("/start").respond_with_response(
        Response(status=302, headers={"Location": target.format(port=web.port)})
    )
    web.expect_request("/face.png").respond_with_data(b"secret", content_type="image/png")

    policy = FetchPolicy(read_timeout=0.5)  # private networks not allowed
    fails_with("url.forbidden", f"http://public.test:{web.port}/start", policy)
    assert [request.path for request, _ in web.log] == ["/start"]
    assert connections == [("93.184.215.14", web.port)]


def test_redirect_loop_is_stopped(web, monkeypatch):
    closed: list[int] = []
    real_close = requests.Response.close
    monkeypatch.setattr(requests.Response, "close", lambda r: closed.append(1) or real_close(r))
    web.expect_request("/loop").respond_with_response(
        Response(status=302, headers={"Location": "/loop"})
    )
    policy = FetchPolicy(allow_private=True, read_timeout=0.5, max_redirects=3)
    error = fails_with("url.too_many_redirects", local(web, "/loop"), policy)
    assert "3" in error.message
    assert len(web.log) == 4  # the first request and three redirects followed
    assert len(closed) >= 4  # every hop's response was closed


@pytest.mark.parametrize("status", [404, 500, 302])
def test_non_2xx_is_bad_status(web, status):
    # A 302 without a Location is not a redirect, just a status that is not success.
    web.expect_request("/gone.png").respond_with_data(b"nope", status=status)
    error = fails_with("url.bad_status", local(web, "/gone.png"), LOCAL)
    assert str(status) in error.message


def test_connection_refused_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    fails_with("url.unreachable", f"http://127.0.0.1:{port}/x.png", LOCAL)


def test_unknown_name_is_unreachable(monkeypatch, connections):
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"nowhere.test": []}))
    fails_with("url.unreachable", "http://nowhere.test/x.png", FetchPolicy())
    assert connections == []


# ---------------------------------------------------------------------------------------------
# Address checks
# ---------------------------------------------------------------------------------------------

FORBIDDEN = [
    ["127.0.0.1"],
    ["10.0.0.1"],
    ["172.16.0.1"],
    ["192.168.1.1"],
    ["169.254.169.254"],
    ["100.64.0.1"],
    ["0.0.0.0"],  # noqa: S104 - an address under test, not a bind
    ["224.0.0.1"],
    ["255.255.255.255"],
    ["240.0.0.1"],
    ["::1"],
    ["fc00::1"],
    ["fe80::1"],
    ["::"],
    ["ff02::1"],
    ["::ffff:127.0.0.1"],
    ["::ffff:10.0.0.1"],
    ["64:ff9b::a00:1"],
    ["2002:7f00:1::"],
    ["::7f00:1"],
    ["93.184.215.14", "10.0.0.1"],
    ["2606:4700::6810:84e5", "::1"],
]


@pytest.mark.parametrize("answer", FORBIDDEN, ids=["+".join(a) for a in FORBIDDEN])
def test_names_resolving_to_non_public_addresses_are_forbidden(monkeypatch, connections, answer):
    dns = fake_dns({"evil.test": answer})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    with pytest.raises(FaceappError) as caught:
        resolve_checked_address("evil.test", 80, FetchPolicy())
    assert caught.value.code == "url.forbidden"
    fails_with("url.forbidden", "http://evil.test/face.png", FetchPolicy())
    assert dns.calls == {"evil.test": 2}
    assert connections == []


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "8.8.8.8", "2606:4700::6810:84e5", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_pass_the_check(monkeypatch, address):
    check_address(address)
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"images.test": [address]}))
    chosen = resolve_checked_address("images.test", 443, FetchPolicy())
    assert ipaddress.ip_address(chosen) == ipaddress.ip_address(address)


def test_allow_private_allows_private_but_never_non_unicast():
    for address in ("127.0.0.1", "10.0.0.1", "::1", "fc00::1", "169.254.169.254"):
        check_address(address, allow_private=True)
    for address in ("0.0.0.0", "224.0.0.1", "ff02::1", "::", "240.0.0.1"):  # noqa: S104
        with pytest.raises(FaceappError) as caught:
            check_address(address, allow_private=True)
        assert caught.value.code == "url.forbidden"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/face.png",
        "http://[::1]/face.png",
        "http://[::ffff:7f00:1]/face.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/face.png",  # 127.0.0.1 written as one number
        "http://localhost/face.png",
    ],
)
def test_ip_literals_and_local_names_are_checked_too(connections, url):
    fails_with("url.forbidden", url, FetchPolicy())
    assert connections == []


# ---------------------------------------------------------------------------------------------
# URL form and allow-list
# ---------------------------------------------------------------------------------------------

INVALID = [
    "ftp://example.com/face.png",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "data:image/png;base64,AAAA",
    "http://user:pass@example.com/face.png",
    "http://user@example.com/face.png",
    "http://example.com\\@evil.test/face.png",
    "http:///face.png",
    "http://",
    "http://:80/face.png",
    "http://example.com:0/face.png",
    "http://example.com:99999/face.png",
    "http://example.com:8o/face.png",
    "http://example.com:/face.png",
    "http://[::1%25eth0]/face.png",
    "http://exa mple.com/face.png",
    "http://example.com/face\n.png",
    "http://-bad-.example/face.png",
    "http://a..b/face.png",
    "//example.com/face.png",
    "example.com/face.png",
    "",
]


@pytest.mark.parametrize("url", INVALID)
def test_malformed_urls_are_invalid_before_any_lookup(monkeypatch, connections, url):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("resolved"))
    fails_with("url.invalid", url, FetchPolicy())
    assert connections == []


def test_parse_target_canonicalises_the_host():
    target = parse_target("HTTP://Images.Example.:8080/a/b.png?x=1#frag")
    assert (target.url, target.host, target.port) == (
        "http://images.example:8080/a/b.png?x=1",
        "images.example",
        8080,
    )
    assert parse_target("https://[::1]/").host == "::1"
    assert parse_target("https://bücher.example/").host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example/.allowed.example/x",
        "http://allowed.example.evil.example/x",
        "http://evilallowed.example/x",
        "http://sub.allowed.example/x",
        "http://127.0.0.1/x",
    ],
)
def test_allow_list_matches_whole_host_names_only(monkeypatch, url):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("resolved"))
    policy = FetchPolicy(allowed_hosts=("allowed.example",), allow_private=True)
    fails_with("url.forbidden", url, policy)


def test_allow_listed_host_is_fetched_whatever_its_case(web, png_bytes, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"allowed.example": ["127.0.0.1"]}))
    web.expect_request("/face.png").respond_with_data(png_bytes, content_type="image/png")
    policy = FetchPolicy(allowed_hosts=("Allowed.Example.",), allow_private=True, read_timeout=1)
    assert fetch_url(f"http://ALLOWED.example.:{web.port}/face.png", policy) == png_bytes


def test_allow_listed_host_still_gets_the_address_check(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"allowed.example": ["10.0.0.1"]}))
    fails_with("url.forbidden", "http://allowed.example/x", FetchPolicy(("allowed.example",)))


def test_policy_from_config():
    policy = FetchPolicy.from_config(
        {
            "URL_ALLOWED_HOSTS": ["Images.Example.", " cdn.example "],
            "URL_ALLOW_PRIVATE_NETWORKS": True,
            "URL_CONNECT_TIMEOUT": 1,
            "URL_READ_TIMEOUT": "2.5",
            "URL_DEADLINE": 9,
            "URL_MAX_REDIRECTS": 5,
            "MAX_UPLOAD_BYTES": 1234,
        }
    )
    assert policy == FetchPolicy(
        allowed_hosts=("images.example", "cdn.example"),
        allow_private=True,
        connect_timeout=1.0,
        read_timeout=2.5,
        deadline=9.0,
        max_redirects=5,
        max_bytes=1234,
    )
    assert FetchPolicy.from_config({}) == FetchPolicy()
