"""image_url's boundaries: URL length, malformed URLs, host names, allow-list forms, 3xx answers,
and the transport's refusal to connect to a host whose address nobody checked."""

from __future__ import annotations

import socket
import time

import pytest
import requests
from pytest_httpserver import HTTPServer

from faceapp import create_app
from faceapp.config import DEFAULTS
from faceapp.errors import FaceappError
from faceapp.url_fetch import (
    FetchPolicy,
    PinnedAddressAdapter,
    check_address,
    check_host_allowed,
    fetch_url,
    normalise_host,
    parse_target,
)
from tests.test_url_fetch import (  # noqa: F401 (fixtures)
    connections,
    local,
    raw_server,
    send_head,
)

LOCAL = FetchPolicy(allow_private=True, connect_timeout=0.5, read_timeout=0.5, deadline=5.0)


def url_of_length(length: int) -> str:
    """An http URL of exactly `length` characters (a long path on a short host)."""
    head = "http://images.example/"
    return head + "a" * (length - len(head))


def code_of(call, *args) -> str:
    with pytest.raises(FaceappError) as caught:
        call(*args)
    assert caught.value.field == "image_url"
    return caught.value.code


@pytest.fixture
def no_dns(monkeypatch):
    """Fail the test if anything resolves a name."""
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("resolved a name"))


# --- URL length ------------------------------------------------------------------------------


def test_a_url_of_2048_characters_is_accepted_and_2049_is_not(no_dns):
    assert len(parse_target(url_of_length(2048)).url) == 2048
    assert code_of(parse_target, url_of_length(2049)) == "url.invalid"


def test_the_api_refuses_a_long_url_the_schema_would_allow(client, no_dns):
    # The request schema lets 4096 characters through: the 2048 limit is the fetcher's.
    answer = client.post("/api/validate", json={"image_url": url_of_length(3000)})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "url.invalid"
    assert answer.get_json()["error"]["field"] == "image_url"


# --- URLs urlsplit itself rejects --------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/face.png", "https://]x[/"])
def test_a_url_urlsplit_rejects_is_invalid(no_dns, url):
    assert code_of(fetch_url, url, FetchPolicy()) == "url.invalid"


def test_the_api_answers_400_not_500_for_an_unparsable_url(client, no_dns):
    answer = client.post("/api/validate", json={"image_url": "http://[::1"})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "url.invalid"


# --- host names -------------------------------------------------------------------------------


def long_host(length: int) -> str:
    """A valid-looking host name of exactly `length` characters (labels of at most 63)."""
    labels, left = [], length
    while left > 0:
        size = min(63, left)
        labels.append("a" * size)
        left -= size + 1
    name = ".".join(labels)
    return name[:length]


def test_a_253_character_host_name_is_valid_and_254_is_not(no_dns):
    ok, too_long = long_host(253), long_host(254)
    assert (len(ok), len(too_long)) == (253, 254)
    assert parse_target(f"http://{ok}/x").host == ok
    assert code_of(parse_target, f"http://{too_long}/x") == "url.invalid"


# --- allow-list entries -----------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["bücher.example", "BÜCHER.example.", "xn--bcher-kva.example"])
@pytest.mark.parametrize("url", ["http://bücher.example/x", "http://xn--bcher-kva.example/x"])
def test_an_international_domain_name_on_the_allow_list_matches(entry, url):
    policy = FetchPolicy.from_config({"URL_ALLOWED_HOSTS": [entry]})
    check_host_allowed(parse_target(url).host, policy)  # no error
    assert code_of(check_host_allowed, "bucher.example", policy) == "url.forbidden"


@pytest.mark.parametrize("entry", ["[::1]", "::1", "[0:0:0:0:0:0:0:1]", "0::1"])
def test_an_ipv6_address_on_the_allow_list_matches_bracketed_or_bare(entry):
    policy = FetchPolicy.from_config({"URL_ALLOWED_HOSTS": [entry]})
    check_host_allowed(parse_target("http://[::1]:8080/x").host, policy)
    check_host_allowed(parse_target("http://[0:0::1]/x").host, policy)
    assert code_of(check_host_allowed, parse_target("http://[::2]/x").host, policy) == (
        "url.forbidden"
    )


# --- status codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [300, 304, 199])
def test_answers_outside_2xx_are_bad_status(httpserver: HTTPServer, status):
    httpserver.expect_request("/x.png").respond_with_data(b"", status=status)
    with pytest.raises(FaceappError) as caught:
        fetch_url(httpserver.url_for("/x.png"), LOCAL)
    assert caught.value.code == "url.bad_status"
    assert str(status) in caught.value.message


@pytest.mark.parametrize("status", [200, 299])
def test_every_2xx_answer_is_success(httpserver: HTTPServer, status):
    httpserver.expect_request("/x.png").respond_with_data(b"body", status=status)
    assert fetch_url(httpserver.url_for("/x.png"), LOCAL) == b"body"


# --- the pinned transport ---------------------------------------------------------------------


def test_the_transport_never_connects_to_a_host_nobody_checked(
    httpserver: HTTPServer,
    monkeypatch,
    connections,  # noqa: F811 (the imported fixture)
):
    # The unchecked name really resolves to a live server: only the refusal keeps it unreached.
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real("127.0.0.1" if host == "unchecked.example" else host, *a, **k),
    )
    httpserver.expect_request("/x").respond_with_data(b"secret")
    adapter = PinnedAddressAdapter()
    adapter.pin("checked.example", httpserver.port, "127.0.0.1")
    with requests.Session() as session:
        session.trust_env = False
        session.mount("http://", adapter)
        with pytest.raises(RuntimeError, match="no checked address"):
            session.get(f"http://unchecked.example:{httpserver.port}/x", timeout=1)
        # Pinned for another port is not pinned either.
        with pytest.raises(RuntimeError, match="no checked address"):
            session.get(f"http://checked.example:{httpserver.port + 1}/x", timeout=1)
        assert connections == [] and httpserver.log == []
        answer = session.get(f"http://checked.example:{httpserver.port}/x", timeout=1)
        assert answer.content == b"secret"
        assert answer.request.headers["Host"] == f"checked.example:{httpserver.port}"
    assert connections == [("127.0.0.1", httpserver.port)]


def test_app_config_allow_list_takes_international_names(config, httpserver, monkeypatch):
    """URL_ALLOWED_HOSTS written in Unicode lets the same host through the API."""
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real(
            "127.0.0.1" if host == "xn--bcher-kva.example" else host, *a, **k
        ),
    )
    httpserver.expect_request("/x.jpg").respond_with_data(b"not an image")
    app = create_app(
        {**config, "URL_ALLOWED_HOSTS": "bücher.example", "URL_ALLOW_PRIVATE_NETWORKS": True}
    )
    answer = app.test_client().post(
        "/api/validate", json={"image_url": f"http://bücher.example:{httpserver.port}/x.jpg"}
    )
    # Reached and read (then refused as no image), not refused as a host off the list.
    assert answer.get_json()["error"]["code"] == "url.not_image"
    other = app.test_client().post(
        "/api/validate", json={"image_url": f"http://other.example:{httpserver.port}/x.jpg"}
    )
    assert other.get_json()["error"]["code"] == "url.forbidden"


def test_the_built_in_policy_is_the_default_configuration():
    # FetchPolicy() is what callers outside the app get: the same limits the app starts with.
    assert FetchPolicy() == FetchPolicy.from_config(DEFAULTS)


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://images.example/x", 80),
        ("https://images.example/x", 443),
        ("http://images.example:1/x", 1),
        ("https://images.example:65535/x", 65535),
    ],
)
def test_ports_default_by_scheme_and_span_1_to_65535(url, port, no_dns):
    assert parse_target(url).port == port


@pytest.mark.parametrize(
    "url", ["http://images.example:65536/x", "http://images.example/a\x7fb", "http://a\x00b/x"]
)
def test_ports_past_65535_and_control_characters_are_invalid(url, no_dns):
    assert code_of(parse_target, url) == "url.invalid"


def test_credentials_in_a_url_are_named_as_the_reason(no_dns):
    with pytest.raises(FaceappError) as caught:
        parse_target("http://user:secret@images.example/x")
    assert caught.value.code == "url.invalid"
    assert "user name or password" in caught.value.message
    assert "secret" not in caught.value.message


@pytest.mark.parametrize("host", ["[::1", "::1]", "[images.example]", "[]"])
def test_half_bracketed_or_bracketed_names_are_not_hosts(host):
    with pytest.raises(ValueError):
        normalise_host(host)


def test_an_allow_list_entry_that_is_no_host_name_is_ignored():
    policy = FetchPolicy.from_config({"URL_ALLOWED_HOSTS": "bad host!, images.example"})
    check_host_allowed("images.example", policy)
    assert code_of(check_host_allowed, "other.example", policy) == "url.forbidden"


def test_local_use_nat64_is_private_not_public():
    local_nat64 = "64:ff9b:1::a00:1"  # RFC 8215: never routed on the internet
    check_address(local_nat64, allow_private=True)
    with pytest.raises(FaceappError) as caught:
        check_address(local_nat64)
    assert caught.value.code == "url.forbidden"


def test_check_address_refuses_private_addresses_unless_told_otherwise():
    with pytest.raises(FaceappError) as caught:
        check_address("10.0.0.1")
    assert caught.value.code == "url.forbidden"


@pytest.mark.parametrize(
    "answer",
    [[], [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("not-an-address", 80))]],
    ids=["no-address", "garbage"],
)
def test_a_resolver_answer_without_usable_addresses_is_unreachable(monkeypatch, answer):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answer)
    error = code_of(fetch_url, "http://images.example/x", FetchPolicy())
    assert error == "url.unreachable"


@pytest.mark.parametrize("deadline", [0.0, -1.0])
def test_no_connection_is_tried_once_the_deadline_is_reached(
    monkeypatch,
    connections,  # noqa: F811 (the imported fixture)
    deadline,
):
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)  # the clock stands still
    policy = FetchPolicy(deadline=deadline)
    assert code_of(fetch_url, "http://93.184.215.14/x.png", policy) == "url.timeout"
    assert connections == []


def test_a_body_that_stops_arriving_is_a_timeout(raw_server):  # noqa: F811 (imported fixture)
    def stall(conn, stop):
        send_head(conn, "Content-Type: image/png", "Content-Length: 1000")
        stop.wait(3.0)

    server = raw_server(stall)
    policy = FetchPolicy(allow_private=True, connect_timeout=0.5, read_timeout=0.5, deadline=5.0)
    assert code_of(fetch_url, local(server, "/stall.png"), policy) == "url.timeout"


def test_a_body_cut_short_by_the_server_is_unreachable(raw_server):  # noqa: F811
    def hang_up(conn, stop):
        send_head(conn, "Content-Type: image/png", "Content-Length: 1000")
        conn.sendall(b"\x89PNG")

    server = raw_server(hang_up)
    assert code_of(fetch_url, local(server, "/short.png"), LOCAL) == "url.unreachable"


# --- the overall deadline covers the status line and headers (issue 22, item 4) ---------------


def drip_header_lines(conn, stop):
    """A status line, then one header line every 0.2 s, for as long as the client listens."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for line in range(100):
        if stop.wait(0.2):
            return
        conn.sendall(f"X-Drip-{line}: 1\r\n".encode())


def drip_status_line(conn, stop):
    """The status line one byte every 0.2 s."""
    for byte in b"HTTP/1.1 200 OK" * 5:
        if stop.wait(0.2):
            return
        conn.sendall(bytes([byte]))


@pytest.mark.parametrize("drip", [drip_header_lines, drip_status_line])
def test_the_deadline_covers_the_status_line_and_headers(raw_server, drip):  # noqa: F811
    # Each piece arrives well inside the read timeout: before, only the server giving up ended
    # it (44 s with one header line a second); now the deadline does.
    server = raw_server(drip)
    policy = FetchPolicy(allow_private=True, connect_timeout=0.5, read_timeout=5.0, deadline=1.0)
    started = time.monotonic()
    assert code_of(fetch_url, local(server, "/drip.png"), policy) == "url.timeout"
    assert time.monotonic() - started < 3.0
