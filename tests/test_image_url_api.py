"""image_url as an input of /api/validate and one-shot /api/analyze, against real local servers."""

from __future__ import annotations

import hashlib

import pytest

from faceapp import create_app


@pytest.fixture
def open_client(config):
    """A client whose image_url may reach this machine's test servers (as an intranet would)."""
    return create_app(
        {
            **config,
            "URL_ALLOW_PRIVATE_NETWORKS": True,
            "URL_CONNECT_TIMEOUT": 1.0,
            "URL_READ_TIMEOUT": 1.0,
        }
    ).test_client()


def test_validate_fetches_the_image(open_client, httpserver, astronaut_jpeg):
    httpserver.expect_request("/astronaut.jpg").respond_with_data(
        astronaut_jpeg, content_type="image/jpeg"
    )
    answer = open_client.post(
        "/api/validate", json={"image_url": httpserver.url_for("/astronaut.jpg")}
    )
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["image_id"] == hashlib.sha256(astronaut_jpeg).hexdigest() and body["valid"] is True
    record = open_client.get(f"/api/images/{body['image_id']}").get_json()
    assert record["source"] == "image_url"


def test_one_shot_analyze_by_url(open_client, httpserver, astronaut_jpeg):
    httpserver.expect_request("/a.jpg").respond_with_data(astronaut_jpeg, content_type="image/jpeg")
    answer = open_client.post(
        "/api/analyze", data={"image_url": httpserver.url_for("/a.jpg"), "attributes": "expression"}
    )
    assert answer.status_code == 200
    assert list(answer.get_json()["faces"][0]["attributes"]) == ["expression"]


def test_html_served_as_png_is_not_an_image(open_client, httpserver):
    httpserver.expect_request("/fake.png").respond_with_data(
        b"<html><body>hi</body></html>", content_type="image/png"
    )
    answer = open_client.post("/api/validate", json={"image_url": httpserver.url_for("/fake.png")})
    assert answer.status_code == 422
    assert answer.get_json()["error"]["code"] == "url.not_image"
    assert answer.get_json()["error"]["field"] == "image_url"


def test_truncated_image_from_a_url_is_not_an_image(open_client, httpserver, astronaut_jpeg):
    httpserver.expect_request("/half.jpg").respond_with_data(
        astronaut_jpeg[:5000], content_type="image/jpeg"
    )
    answer = open_client.post("/api/validate", json={"image_url": httpserver.url_for("/half.jpg")})
    assert answer.get_json()["error"]["code"] == "url.not_image"


def test_private_addresses_are_refused_by_default(client, httpserver, astronaut_jpeg):
    httpserver.expect_request("/a.jpg").respond_with_data(astronaut_jpeg, content_type="image/jpeg")
    answer = client.post("/api/validate", json={"image_url": httpserver.url_for("/a.jpg")})
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "url.forbidden"
    assert len(httpserver.log) == 0  # no connection was made


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/a.jpg", "url.invalid"),
        ("file:///etc/passwd", "url.invalid"),
        ("http://user:pass@example.com/a.jpg", "url.invalid"),
        ("http://169.254.169.254/latest/meta-data/", "url.forbidden"),
        ("http://[::ffff:127.0.0.1]/a.jpg", "url.forbidden"),
    ],
)
def test_bad_urls(client, url, code):
    answer = client.post("/api/validate", json={"image_url": url})
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == code


def test_status_and_limits(config, httpserver):
    client = create_app(
        {**config, "URL_ALLOW_PRIVATE_NETWORKS": True, "MAX_UPLOAD_BYTES": 1000}
    ).test_client()
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    httpserver.expect_request("/big").respond_with_data(b"\xff" * 5000, content_type="image/jpeg")
    missing = client.post("/api/validate", json={"image_url": httpserver.url_for("/missing")})
    assert missing.status_code == 422 and missing.get_json()["error"]["code"] == "url.bad_status"
    big = client.post("/api/validate", json={"image_url": httpserver.url_for("/big")})
    assert big.status_code == 413 and big.get_json()["error"]["code"] == "url.too_large"


def test_allow_list_matches_whole_host_names(config):
    client = create_app({**config, "URL_ALLOWED_HOSTS": "allowed.example"}).test_client()
    for url in (
        "http://evil.example/.allowed.example/x.jpg",
        "http://allowed.example.evil.example/x.jpg",
    ):
        answer = client.post("/api/validate", json={"image_url": url})
        assert (
            answer.status_code == 400 and answer.get_json()["error"]["code"] == "url.forbidden"
        ), url


def test_an_empty_body_from_a_url_is_not_an_image(open_client, httpserver):
    httpserver.expect_request("/empty.jpg").respond_with_data(b"", content_type="image/jpeg")
    answer = open_client.post("/api/validate", json={"image_url": httpserver.url_for("/empty.jpg")})
    assert answer.status_code == 422
    assert answer.get_json()["error"]["code"] == "url.not_image"
