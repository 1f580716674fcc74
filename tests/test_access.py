"""Who may call what (RELIABILITY 26-30): keys, admin operations, rate limits, proxies, headers."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest
from flask import request
from limits.storage import MemoryStorage

from faceapp import access, create_app, security
from faceapp.security import CONTENT_SECURITY_POLICY, rate_limit_storage_uri
from tests.conftest import ADMIN
from tests.servers import redis_server

USER = {"Authorization": "Bearer user-key"}
SOME_ID = "0" * 64
PROBES = {"/api/health", "/api/ready"}
ADMIN_OPS = [
    ("POST", "/api/setup"),
    ("DELETE", f"/api/images/{SOME_ID}"),
    ("POST", "/api/cache/wipe"),
]


def api_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the api blueprint, path parameters filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = re.sub(r"<(?:\w+:)?image_id>", SOME_ID, rule.rule)
            routes += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def code_of(response) -> str:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return body["error"]["code"]


@pytest.fixture
def keyed(config):
    """An app that needs a key: "user-key" for /api, "admin-key" for admin operations too."""
    config["API_KEYS"] = "user-key"
    config["AUTH_FAILURE_LIMIT"] = "1000 per minute"  # these tests send wrong keys on purpose
    return create_app(config)


# -- keys ---------------------------------------------------------------------------------------


def test_every_route_but_the_probes_and_the_document_needs_a_key(keyed):
    client = keyed.test_client()
    routes = [(m, p) for m, p in api_routes(keyed) if p not in (*PROBES, "/api/openapi.json")]
    assert ("GET", "/api/attributes") in routes and len(routes) >= 8
    for method, path in routes:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"X-API-Key": "wrong"},
            {"Authorization": "Basic dXNlci1rZXk="},
            {"Authorization": "Bearer "},
        ):
            answer = client.open(path, method=method, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert code_of(answer) == "auth.required"


def test_probes_never_need_a_key(keyed):
    client = keyed.test_client()
    assert client.get("/api/health").status_code == 200
    assert client.get("/api/ready").status_code == 503  # not loaded yet; still not a 401
    assert client.get("/api/health", headers={"X-API-Key": "wrong"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        USER,
        {"X-API-Key": "user-key"},
        ADMIN,
        {"X-API-Key": "admin-key"},
        {"authorization": "bearer user-key"},
    ],
)
def test_bearer_and_x_api_key_both_work(keyed, headers):
    assert keyed.test_client().get("/api/attributes", headers=headers).status_code == 200


def test_a_user_key_may_not_run_admin_operations(keyed):
    client = keyed.test_client()
    for method, path in ADMIN_OPS:
        answer = client.open(path, method=method, headers=USER)
        assert answer.status_code == 403 and code_of(answer) == "auth.forbidden", path
        answer = client.open(path, method=method, headers={"X-API-Key": "user-key"})
        assert answer.status_code == 403 and code_of(answer) == "auth.forbidden", path


def test_admin_operations_work_with_the_admin_key(keyed):
    client = keyed.test_client()
    assert client.post("/api/cache/wipe", headers=ADMIN).get_json() == {"wiped": 0}
    answer = client.delete(f"/api/images/{SOME_ID}", headers={"X-API-Key": "admin-key"})
    assert answer.status_code == 404 and code_of(answer) == "image_id.not_found"


def test_admin_operations_are_refused_when_no_admin_keys_are_set(config):
    config["ADMIN_KEYS"] = ""
    client = create_app(config).test_client()
    for method, path in ADMIN_OPS:
        answer = client.open(path, method=method, headers=ADMIN)
        assert answer.status_code == 403 and code_of(answer) == "auth.forbidden", path


def test_admin_operations_are_post_or_delete_only(keyed):
    client = keyed.test_client()
    for path in ("/api/setup", "/api/cache/wipe"):
        answer = client.get(path, headers=ADMIN)
        assert answer.status_code == 405 and code_of(answer) == "request.method_not_allowed"
        assert "GET" not in answer.headers["Allow"]
    answer = client.put(f"/api/images/{SOME_ID}", headers=ADMIN)
    assert answer.status_code == 405 and set(answer.headers["Allow"].split(", ")) == {
        "GET",
        "HEAD",
        "OPTIONS",
        "DELETE",
    }


def test_keys_are_compared_in_constant_time(keyed, monkeypatch):
    compared = []
    real = access.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    client = keyed.test_client()
    assert client.get("/api/attributes", headers={"X-API-Key": "user-key"}).status_code == 200
    assert (b"user-key", b"user-key") in compared
    compared.clear()
    assert client.get("/api/attributes", headers={"X-API-Key": "nope"}).status_code == 401
    # Every accepted key is compared (no early exit that would time which one matched).
    assert {b for _, b in compared} == {b"user-key", b"admin-key"}


# -- rate limits --------------------------------------------------------------------------------


def test_the_fourth_request_in_a_minute_is_429_with_retry_after(config):
    config["RATELIMIT"] = "3 per minute"
    client = create_app(config).test_client()
    assert [client.get("/api/attributes").status_code for _ in range(3)] == [200] * 3
    answer = client.post("/api/validate", json={})  # one count over all of /api
    assert answer.status_code == 429 and code_of(answer) == "rate.limited"
    assert answer.mimetype == "application/json" and answer.headers["X-Request-ID"]
    assert 1 <= int(answer.headers["Retry-After"]) <= 61
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "3 per 1 minute" in answer.get_json()["error"]["message"]
    # Probes stay answerable, and unrouted /api paths count too.
    assert {client.get("/api/health").status_code for _ in range(5)} == {200}
    assert client.get("/api/nope").status_code == 429
    # Every other client still gets through.
    other = client.get("/api/attributes", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert other.status_code == 200


def test_with_keys_each_key_has_its_own_count_and_keyless_requests_their_address(config):
    config.update(RATELIMIT="2 per minute", API_KEYS="user-key")
    client = create_app(config).test_client()
    wrong = {"X-API-Key": "guess"}
    assert [client.get("/api/attributes", headers=wrong).status_code for _ in range(2)] == [
        401,
        401,
    ]
    answer = client.get("/api/attributes")  # no key, or a wrong one: counted by address
    assert answer.status_code == 429 and "from this client" in code_of_message(answer)
    # The same address with a key is that key's count, and every key has its own.
    assert [client.get("/api/attributes", headers=USER).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    assert "from this key" in code_of_message(client.get("/api/attributes", headers=USER))
    other_host = {"REMOTE_ADDR": "198.51.100.7"}  # a key is limited wherever it is used from
    assert client.get("/api/attributes", headers=USER, environ_base=other_host).status_code == 429
    assert client.get("/api/attributes", headers=ADMIN).status_code == 200
    assert client.get("/api/attributes", environ_base=other_host).status_code == 401


def code_of_message(response) -> str:
    assert code_of(response) == "rate.limited"
    return response.get_json()["error"]["message"]


def test_the_default_limit_lets_one_frontend_send_tens_of_requests_a_second(config):
    from faceapp.config import DEFAULTS

    config.pop("RATELIMIT", None)
    config["API_KEYS"] = "user-key"
    client = create_app(config).test_client()
    # 60 requests inside one second from one host and one key: none is refused.
    codes = {client.get("/api/attributes", headers=USER).status_code for _ in range(60)}
    assert codes == {200}, DEFAULTS["RATELIMIT"]


def test_rate_limits_can_be_switched_off(config):
    config.update(RATELIMIT="1 per minute", RATELIMIT_ENABLED=False)
    client = create_app(config).test_client()
    assert {client.get("/api/attributes").status_code for _ in range(3)} == {200}


def test_where_the_counts_live():
    assert rate_limit_storage_uri({"STORE_URL": "/srv/store"}) == "memory://"
    assert rate_limit_storage_uri({"STORE_URL": "redis://r:6379/2"}) == "redis://r:6379/2"
    assert (
        rate_limit_storage_uri({"STORE_URL": "unix:///run/redis.sock"})
        == "redis+unix:///run/redis.sock"
    )
    assert (
        rate_limit_storage_uri(
            {"STORE_URL": "/srv/store", "RATELIMIT_STORAGE_URI": "redis://other/0"}
        )
        == "redis://other/0"
    )


@pytest.mark.slow
def test_two_workers_sharing_redis_share_the_count(config, tmp_path):
    with redis_server(str(tmp_path)) as url:
        config.update(RATELIMIT="3 per minute", STORE_URL=url)
        worker_a = create_app(config).test_client()  # two create_app calls: two workers
        worker_b = create_app(config).test_client()
        assert worker_a.get("/api/attributes").status_code == 200
        assert worker_b.get("/api/attributes").status_code == 200
        assert worker_a.get("/api/attributes").status_code == 200
        answer = worker_b.get("/api/attributes")
        assert answer.status_code == 429 and code_of(answer) == "rate.limited"
        assert worker_a.get("/api/attributes").status_code == 429
        # The store's wipe (same Redis, its own key prefix) leaves the counts alone.
        with worker_a.application.app_context():
            from faceapp.store import store

            store.backend.wipe()
        assert worker_b.get("/api/attributes").status_code == 429
        assert worker_a.get("/api/health").status_code == 200


def test_workers_without_redis_count_on_their_own(config):
    config["RATELIMIT"] = "1 per minute"
    worker_a, worker_b = (create_app(config).test_client() for _ in range(2))
    assert worker_a.get("/api/attributes").status_code == 200
    assert worker_b.get("/api/attributes").status_code == 200
    assert worker_a.get("/api/attributes").status_code == 429


@pytest.mark.parametrize("key", ["RATELIMIT", "AUTH_FAILURE_LIMIT"])
def test_a_limit_that_is_not_a_rate_stops_the_start_naming_its_key(config, key):
    with pytest.raises(ValueError, match=f"^{key} 'lots' is not a rate such as"):
        create_app({**config, key: "lots"})


def test_a_429_answered_as_its_window_ends_still_says_retry_after_1(config, monkeypatch):
    config["RATELIMIT"] = "1 per minute"
    client = create_app(config).test_client()
    assert client.get("/api/attributes").status_code == 200
    # The window ends between the breach and the answer: by the clock the 429 reads, its reset
    # is already past. "Retry-After: 0" (or less) would invite a client to retry at once.
    later = time.time() + 120
    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: later))
    answer = client.get("/api/attributes")
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"
    assert "retry after 1 s" in code_of_message(answer)


def test_a_limiter_that_fails_answers_the_request_instead_of_a_500(config, monkeypatch):
    """Whatever fails inside Flask-Limiter (its counts' storage, and the in-memory fallback it
    turns to then) is logged and the request goes on unlimited: never a 500."""

    def broken(*args, **kwargs):
        raise ConnectionError("the counts cannot be reached")

    monkeypatch.setattr(MemoryStorage, "incr", broken)
    config["RATELIMIT"] = "1 per minute"
    client = create_app(config).test_client()
    assert [client.get("/api/attributes").status_code for _ in range(3)] == [200] * 3


# -- proxies ------------------------------------------------------------------------------------


def _whoami_app(config, hops: int):
    app = create_app({**config, "TRUSTED_PROXY_HOPS": hops, "RATELIMIT": "1 per minute"})
    app.add_url_rule("/whoami", "whoami", lambda: request.remote_addr or "")
    return app.test_client()


PEER = {"REMOTE_ADDR": "10.0.0.2"}  # the socket peer: the proxy, or a client talking directly


def test_without_trusted_proxies_x_forwarded_for_is_ignored(config):
    client = _whoami_app(config, 0)
    answer = client.get("/whoami", headers={"X-Forwarded-For": "203.0.113.9"}, environ_base=PEER)
    assert answer.get_data(as_text=True) == "10.0.0.2"
    # A client cannot dodge the rate limit by inventing addresses.
    for spoofed in ("203.0.113.9", "203.0.113.10"):
        status = client.get(
            "/api/attributes", headers={"X-Forwarded-For": spoofed}, environ_base=PEER
        ).status_code
    assert status == 429


def test_with_one_trusted_proxy_the_last_hop_is_the_client(config):
    client = _whoami_app(config, 1)
    forwarded = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https"}
    answer = client.get("/whoami", headers=forwarded, environ_base=PEER)
    assert answer.get_data(as_text=True) == "203.0.113.9"  # what our nginx saw, not the spoof
    # Distinct clients behind the proxy are limited separately; a spoofed first hop changes nothing.
    assert client.get("/api/attributes", headers=forwarded, environ_base=PEER).status_code == 200
    other = {"X-Forwarded-For": "198.51.100.4"}
    assert client.get("/api/attributes", headers=other, environ_base=PEER).status_code == 200
    respoofed = {"X-Forwarded-For": "7.7.7.7, 203.0.113.9"}
    assert client.get("/api/attributes", headers=respoofed, environ_base=PEER).status_code == 429


# -- headers and failures -----------------------------------------------------------------------


def assert_security_headers(response, *, api: bool = True) -> None:
    headers = response.headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    if api:
        assert headers["Cache-Control"] == "no-store"


def test_security_headers_on_answers_errors_and_404s(keyed):
    client = keyed.test_client()
    assert_security_headers(client.get("/api/health"))
    assert_security_headers(client.get("/api/attributes", headers=USER))
    assert_security_headers(client.get("/api/attributes"))  # 401
    assert_security_headers(client.post("/api/cache/wipe", headers=USER))  # 403
    assert_security_headers(client.get("/api/nope", headers=USER))  # 404 inside /api
    assert_security_headers(client.get("/nope"), api=False)  # 404 outside it
    assert "Cache-Control" not in client.get("/nope").headers


def test_security_headers_on_a_500_without_a_traceback(client, monkeypatch):
    from faceapp import services

    def explode(image_id):
        raise RuntimeError("secret detail /srv/faceapp/store")

    monkeypatch.setattr(services, "image_record", explode)
    answer = client.get(f"/api/images/{SOME_ID}")
    assert answer.status_code == 500 and code_of(answer) == "internal"
    assert_security_headers(answer)
    text = answer.get_data(as_text=True)
    assert "Traceback" not in text and "secret detail" not in text


def test_a_views_own_csp_and_cache_control_are_kept(config):
    app = create_app(config)

    @app.get("/api-like/page")
    def page():
        return "ok", 200, {"Content-Security-Policy": "default-src 'none'"}

    @app.get("/api/cached-example")
    def cached():
        return "ok", 200, {"Cache-Control": "max-age=60"}

    client = app.test_client()
    assert client.get("/api-like/page").headers["Content-Security-Policy"] == "default-src 'none'"
    answer = client.get("/api/cached-example")
    assert answer.headers["Cache-Control"] == "max-age=60"
    assert answer.headers["X-Frame-Options"] == "DENY"


def test_debug_is_forced_off_under_gunicorn(config, monkeypatch):
    config.update(DEBUG=True, TESTING=False, TESTER_ENABLED=None)
    assert create_app(config).debug is True  # the control: debug is honoured elsewhere
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/23.0.0")
    app = create_app(config)
    assert app.debug is False and app.config["TESTER_ENABLED"] is False
    from faceapp import services

    def explode(image_id):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(services, "image_record", explode)
    answer = app.test_client().get(f"/api/images/{SOME_ID}")
    assert answer.status_code == 500 and "Traceback" not in answer.get_data(as_text=True)
