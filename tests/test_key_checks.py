"""Issue 22 item 5: /metrics' series and access, failed key checks, the admin's own budget."""

from __future__ import annotations

import pytest

from faceapp import create_app
from tests.conftest import ADMIN
from tests.test_metrics import scrape

USER = {"Authorization": "Bearer user-key"}


@pytest.fixture
def metered(config):
    config.update(METRICS_ENABLED=True, API_KEYS="user-key")
    return create_app(config)


def test_made_up_methods_never_add_metric_series(metered):
    client = metered.test_client()
    for number in range(50):
        client.open("/api/health", method=f"X{number}QZ")
    samples = scrape(client)
    methods = {
        dict(labels)["method"]
        for (name, labels) in samples
        if name == "faceapp_http_requests_total"
    }
    assert "other" in methods and not any(m.startswith("X") for m in methods)
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}


def test_metrics_answer_a_wrong_key_and_a_user_key_alike(metered):
    client = metered.test_client()
    wrong = client.get("/metrics", headers={"Authorization": "Bearer made-up"})
    user = client.get("/metrics", headers=USER)
    none = client.get("/metrics")
    assert wrong.status_code == user.status_code == none.status_code == 401
    assert wrong.get_json() == user.get_json() == none.get_json()


def test_failed_key_checks_are_limited_per_address_right_key_or_not(config):
    config.update(METRICS_ENABLED=True, API_KEYS="user-key", AUTH_FAILURE_LIMIT="3 per minute")
    client = create_app(config).test_client()
    guesses = [
        client.get("/metrics", headers={"Authorization": "Bearer guess-1"}),
        client.get("/metrics", headers=USER),  # a user key on /metrics is a failed check too
        client.get("/api/attributes", headers={"X-API-Key": "guess-3"}),
    ]
    assert [answer.status_code for answer in guesses] == [401, 401, 401]
    for headers, path in ((ADMIN, "/metrics"), (USER, "/api/attributes")):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 429, path  # the right key too: guessing learns nothing
        assert answer.get_json()["error"]["code"] == "rate.limited"
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
        assert "failed key checks" in answer.get_json()["error"]["message"]
    signin = client.post("/app/login", data={"key": "user-key"})
    assert signin.status_code == 429 and signin.headers["Retry-After"]
    # Requests without a key are not key checks; another address is not affected.
    assert client.get("/api/health").status_code == 200
    elsewhere = {"REMOTE_ADDR": "198.51.100.7"}
    assert client.get("/metrics", headers=ADMIN, environ_base=elsewhere).status_code == 200


def test_with_rate_limits_off_failed_key_checks_are_not_limited_either(config):
    config.update(API_KEYS="user-key", AUTH_FAILURE_LIMIT="1 per minute", RATELIMIT_ENABLED=False)
    client = create_app(config).test_client()
    wrong = {"X-API-Key": "guess"}
    assert {client.get("/api/attributes", headers=wrong).status_code for _ in range(3)} == {401}
    assert client.get("/api/attributes", headers=USER).status_code == 200


def test_wrong_keys_at_the_sign_in_form_count_as_failed_checks(config):
    config.update(API_KEYS="user-key", AUTH_FAILURE_LIMIT="2 per minute")
    client = create_app(config).test_client()
    for _ in range(2):
        assert client.post("/app/login", data={"key": "guess"}).status_code == 401
    assert client.post("/app/login", data={"key": "user-key"}).status_code == 429


def test_without_api_keys_the_admin_has_its_own_budget_not_its_address(config):
    config.update(RATELIMIT="3 per minute", API_KEYS="")
    client = create_app(config).test_client()
    assert [client.get("/api/attributes").status_code for _ in range(4)] == [200] * 3 + [429]
    answer = client.post("/api/cache/wipe", headers=ADMIN)
    assert answer.status_code == 200, answer.get_json()


def test_metrics_report_the_store_down_instead_of_failing(config):
    from tests.servers import free_port

    config.update(METRICS_ENABLED=True, STORE_URL=f"redis://127.0.0.1:{free_port()}/0")
    config["RATELIMIT_STORAGE_URI"] = "memory://"
    client = create_app(config).test_client()
    samples = scrape(client)
    assert samples[("faceapp_store_up", ())] == 0


@pytest.mark.parametrize("backend", ["folder", "redis"])
def test_sign_out_ends_the_sign_in_for_every_copy_of_the_cookie(config, backend, request):

    if backend == "redis":
        config.update(STORE_URL=request.getfixturevalue("redis_url"))
    config.update(API_KEYS="user-key")
    app = create_app(config)
    client = app.test_client()
    assert client.post("/app/login", data={"key": "user-key"}).status_code == 303
    assert client.get("/app").status_code == 200
    kept = client.get_cookie("session").value  # as a thief, or a shared machine, would keep it
    assert client.post("/app/logout").status_code == 303
    other = app.test_client()
    other.set_cookie("session", kept)
    assert other.get("/app").status_code == 303  # sent to sign in: the sign-in is over
    assert other.get("/app/images/" + "0" * 64 + "/preview.jpg").status_code == 303
    # Signing in again works, and two browsers' sign-ins are separate.
    first, second = app.test_client(), app.test_client()
    for browser in (first, second):
        browser.post("/app/login", data={"key": "user-key"})
    first.post("/app/logout")
    assert first.get("/app").status_code == 303 and second.get("/app").status_code == 200
