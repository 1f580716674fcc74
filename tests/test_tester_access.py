"""The tester pages keep the API's rules (issue 8, item 1): keys, rate limits, the recent list."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zlib

import pytest

from faceapp import create_app
from tests.conftest import ADMIN
from tests.test_tester_pages import CSRF_FIELD, assert_html_page

USER = {"X-API-Key": "user-key"}
OTHER = {"Authorization": "Bearer other-key"}


@pytest.fixture
def keyed(config):
    config["API_KEYS"] = "user-key, other-key"
    return create_app(config)


def upload(client, data: bytes, name: str = "photo.jpg", **kwargs):
    return client.post("/app", data={"file": (io.BytesIO(data), name)}, **kwargs)


def sign_in(client, key: str, next_path: str = "/app"):
    return client.post("/app/login", data={"key": key, "next": next_path})


def page_routes(image_id: str) -> list[tuple[str, str]]:
    page = f"/app/images/{image_id}"
    return [
        ("GET", "/app"),
        ("POST", "/app"),
        ("GET", page),
        ("POST", page),
        ("GET", f"{page}?run=AAAAAAAAAAAAAAAA"),
        ("GET", f"{page}/preview.jpg"),
        ("GET", f"{page}/thumbnail.jpg"),
    ]


def test_without_a_key_every_page_sends_people_to_sign_in(keyed, astronaut_jpeg):
    image_id = hashlib.sha256(astronaut_jpeg).hexdigest()
    client = keyed.test_client()
    assert (
        client.post(
            "/api/validate", headers=USER, data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
        ).status_code
        == 200
    )
    for method, path in page_routes(image_id):
        answer = client.open(path, method=method)
        if method == "POST" and path != "/app":  # Analyze: the sign-in form, keeping the labels
            assert answer.status_code == 401, path
            assert 'name="pending_analyze"' in answer.get_data(as_text=True)
            continue
        assert answer.status_code == 303, (method, path)
        assert answer.headers["Location"].startswith("/app/login?next=")
        assert "Set-Cookie" not in answer.headers or "user-key" not in answer.headers["Set-Cookie"]
    # Nothing of the image leaks before signing in: no bytes, no id in the list.
    assert image_id not in client.get("/app", follow_redirects=True).get_data(as_text=True)
    login = assert_html_page(client.get("/app/login"), 200)
    assert 'type="password" name="key"' in login and CSRF_FIELD.search(login)


def test_signing_in_from_an_interrupted_analyze_brings_back_what_was_typed(keyed, astronaut_jpeg):
    image_id = hashlib.sha256(astronaut_jpeg).hexdigest()
    client = keyed.test_client()
    upload = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    assert client.post("/api/validate", headers=USER, data=upload).status_code == 200
    typed = {"labels": "a smiling person\na person in a hat", "include_embedding": "1"}
    answer = client.post(
        "/app/login",
        data={
            "key": "user-key",
            "next": f"/app/images/{image_id}",
            "pending_analyze": "1",
            **typed,
        },
    )
    text = assert_html_page(answer, 200)
    assert "What you typed is back in the form" in text
    assert ">a smiling person\na person in a hat</textarea>" in text
    assert 'name="include_embedding" value="1" checked' in text
    assert 'name="force" value="1" checked' not in text


@pytest.mark.parametrize("headers", [{"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}])
def test_a_wrong_key_in_the_headers_is_a_401_page(keyed, astronaut_jpeg, headers):
    client = keyed.test_client()
    for method, path in page_routes("0" * 64):
        text = assert_html_page(client.open(path, method=method, headers=headers), 401)
        assert "auth.required" in text and 'id="login-link"' in text


def test_scripts_and_proxies_use_the_apis_headers_on_pages(keyed, astronaut_jpeg):
    client = keyed.test_client()
    for headers in (USER, OTHER, ADMIN):
        answer = upload(client, astronaut_jpeg, headers=headers)
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/app/images/")
        page = answer.headers["Location"]
        assert client.get(page + "/preview.jpg", headers=headers).mimetype == "image/jpeg"
        run = client.post(page, headers=headers, data={"labels": "a hat"})
        assert run.status_code == 303
        assert_html_page(client.get(run.headers["Location"], headers=headers), 200)


def test_signing_in_holds_the_keys_id_never_the_key(keyed, astronaut_jpeg):
    client = keyed.test_client()
    text = assert_html_page(sign_in(client, "wrong"), 401)
    assert "not one this service accepts" in text and 'name="key"' in text
    answer = sign_in(client, "user-key", "/app/images/" + "0" * 64)
    assert answer.status_code == 303 and answer.headers["Location"] == "/app/images/" + "0" * 64
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert "user-key" not in session_data(cookie.value)
    assert answer.headers["Location"]
    text = assert_html_page(client.get("/app"), 200)
    assert 'id="signed-in"' in text and 'id="logout-button"' in text
    assert upload(client, astronaut_jpeg).status_code == 303
    # /api never takes the session cookie as a key: a page cannot be used to call it.
    assert client.get("/api/attributes").status_code == 401
    assert client.post("/app/logout").status_code == 303
    assert client.get("/app").headers["Location"].startswith("/app/login")


def session_data(value: str) -> str:
    """The JSON inside Flask's signed session cookie (signed, not encrypted: anyone can read it)."""
    payload = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    if value.startswith("."):
        raw = zlib.decompress(raw)
    return raw.decode()


def test_a_session_ends_when_its_key_is_removed(config, astronaut_jpeg):
    first = create_app({**config, "API_KEYS": "user-key, other-key"}).test_client()
    sign_in(first, "user-key")
    assert first.get("/app").status_code == 200
    cookie = first.get_cookie("session").value
    rotated = create_app({**config, "API_KEYS": "other-key"}).test_client()
    rotated.set_cookie("session", cookie)
    assert rotated.get("/app").status_code == 303


@pytest.mark.parametrize(
    "target", ["https://evil.example/app", "//evil.example/app", "/api/attributes", "/\\evil"]
)
def test_after_signing_in_only_pages_here_are_followed(keyed, target):
    answer = sign_in(keyed.test_client(), "user-key", target)
    assert answer.status_code == 303 and answer.headers["Location"] == "/app"


def recent_ids(client, headers=None) -> list[str]:
    text = assert_html_page(client.get("/app", headers=headers or {}), 200)
    return re.findall(
        r'<li class="recent-item">\s*<a class="thumb" href="/app/images/([0-9a-f]{64})"', text
    )


def test_the_recent_list_shows_a_keys_own_uploads_and_all_to_an_admin(
    keyed, astronaut_jpeg, coffee_jpeg
):
    client = keyed.test_client()
    astronaut = hashlib.sha256(astronaut_jpeg).hexdigest()
    coffee = hashlib.sha256(coffee_jpeg).hexdigest()
    upload(client, astronaut_jpeg, "me.jpg", headers=USER)  # through the pages
    client.post(  # through the API, with the other key
        "/api/validate", headers=OTHER, data={"file": (io.BytesIO(coffee_jpeg), "cup.jpg")}
    )
    assert recent_ids(client, USER) == [astronaut]
    assert recent_ids(client, OTHER) == [coffee]
    assert recent_ids(client, ADMIN) == [coffee, astronaut]
    text = assert_html_page(client.get("/app", headers=USER), 200)
    assert "me.jpg" in text and "cup.jpg" not in text
    # The other key sends the astronaut later: it moves to the top of its list, with its name.
    upload(client, astronaut_jpeg, "again.jpg", headers=OTHER)
    assert recent_ids(client, OTHER) == [astronaut, coffee]
    assert recent_ids(client, ADMIN) == [astronaut, coffee]
    text = assert_html_page(client.get("/app", headers=OTHER), 200)
    assert "again.jpg" in text and "me.jpg" not in text
    # The trace names the key by its id, never the key itself.
    events = client.get(f"/api/images/{astronaut}/trace", headers=ADMIN).get_json()["events"]
    assert all("user-key" not in json.dumps(e) and "other-key" not in json.dumps(e) for e in events)
    assert len({e["key_id"] for e in events if e["event"] == "validated"}) == 2


def test_a_new_key_sees_an_empty_list(keyed, astronaut_jpeg):
    client = keyed.test_client()
    upload(client, astronaut_jpeg, headers=USER)
    text = assert_html_page(client.get("/app", headers=OTHER), 200)
    assert 'id="recent-none"' in text and "No images sent with this key yet." in text


def test_without_keys_the_pages_are_open_and_list_everything(client, astronaut_jpeg, coffee_jpeg):
    upload(client, astronaut_jpeg, "a.jpg")
    client.post("/api/validate", data={"file": (io.BytesIO(coffee_jpeg), "b.jpg")})
    assert len(recent_ids(client)) == 2
    assert 'id="signed-in"' not in client.get("/app").get_data(as_text=True)


def test_pages_count_against_the_rate_limit(config, astronaut_jpeg):
    config.update(RATELIMIT="4 per minute", API_KEYS="user-key")
    client = create_app(config).test_client()
    page = upload(client, astronaut_jpeg, headers=USER).headers["Location"]
    assert client.get(page + "/thumbnail.jpg", headers=USER).status_code == 200
    assert client.get(page + "/preview.jpg", headers=USER).status_code == 200
    assert client.get("/api/attributes", headers=USER).status_code == 200  # one count for both
    answer = client.get(page + "/thumbnail.jpg", headers=USER)
    text = assert_html_page(answer, 429)
    assert "rate.limited" in text and "from this key" in text
    assert 1 <= int(answer.headers["Retry-After"]) <= 61
    # Static files and the probes are not counted.
    static = client.get("/static/tester.css")
    assert static.status_code == 200
    static.close()
    assert client.get("/api/health").status_code == 200


def test_without_keys_pages_count_per_address(config):
    config["RATELIMIT"] = "2 per minute"
    client = create_app(config).test_client()
    assert [client.get("/app").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/app", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 200


@pytest.mark.parametrize("hops, secure", [(0, False), (1, True)])
def test_the_session_cookie_is_secure_behind_an_https_proxy(config, hops, secure):
    config.update(API_KEYS="user-key", TRUSTED_PROXY_HOPS=hops)
    client = create_app(config).test_client()
    answer = client.post(
        "/app/login",
        data={"key": "user-key"},
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
    )
    assert answer.status_code == 303
    assert ("; Secure" in answer.headers["Set-Cookie"]) is secure
    assert "HttpOnly" in answer.headers["Set-Cookie"]
