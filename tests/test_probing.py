"""Holes found by probing (issue 8, items 3, 5 and 6): log forging, keys in logs, odd bodies."""

from __future__ import annotations

import base64
import io
import logging
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from faceapp.request_log import (
    LOG_FORMAT,
    AccessLogger,
    EscapingFormatter,
    RequestContextFilter,
    escape_controls,
    redact_query,
)

FORGED = "/api/x%0a2026-12-01 13:05:00,000 INFO [1] faceapp.access FORGED-LINE%00%1b[31m"


@pytest.fixture
def log_lines():
    """What faceapp's loggers write, formatted as in production, one string per call."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger("faceapp")
    logger.addHandler(handler)
    yield lambda: stream.getvalue().splitlines()
    logger.removeHandler(handler)


def test_a_path_cannot_forge_a_log_line(client, log_lines):
    assert client.get(FORGED).status_code == 404
    lines = [line for line in log_lines() if "faceapp.access" in line]
    assert len(lines) == 1, lines
    assert "/api/x\\n2026-12-01" in lines[0] and "FORGED-LINE\\x00\\x1b[31m 404" in lines[0]
    assert "\x00" not in "".join(log_lines()) and "\x1b" not in "".join(log_lines())


def test_the_apps_own_lines_escape_user_input_but_keep_tracebacks(log_lines):
    log = logging.getLogger("faceapp.test")
    log.warning("fetch of %s failed", "http://x/\r\nINFO forged\u2028line")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("with a traceback")
    lines = log_lines()
    assert lines[0].endswith("fetch of http://x/\\r\\nINFO forged\\u2028line failed")
    assert lines[1].endswith("with a traceback")
    assert lines[2] == "Traceback (most recent call last):"


def test_escape_controls_leaves_ordinary_text_alone():
    assert escape_controls("Ünïcode ✓ /path?q=1") == "Ünïcode ✓ /path?q=1"
    assert escape_controls("\t\x7f\x85\u202e") == "\\t\\x7f\\x85\\u202e"


def test_key_like_query_parameters_are_redacted():
    assert redact_query("api_key=s3cret&size=2&Token=abc&x") == (
        "api_key=[redacted]&size=2&Token=[redacted]&x"
    )
    assert redact_query("a%5Fkey=s3cret") == "a%5Fkey=[redacted]"


def test_gunicorns_access_log_never_writes_a_key_or_a_control_character():
    cfg = Config()
    logger = AccessLogger(cfg)
    basic = base64.b64encode(b"the-secret-key:").decode()
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/api/x%0a?api_key=the-secret-key&n=1",
        "PATH_INFO": "/api/x\nFORGED",
        "QUERY_STRING": "api_key=the-secret-key&n=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_AUTHORIZATION": f"Basic {basic}",
        "HTTP_USER_AGENT": "agent\x1b[2J",
        "HTTP_REFERER": "-",
    }
    request = SimpleNamespace(
        headers=[("AUTHORIZATION", f"Basic {basic}"), ("X-API-KEY", "the-secret-key")]
    )
    response = SimpleNamespace(status="200 OK", headers=[], sent=2)
    atoms = logger.atoms(response, request, environ, timedelta(milliseconds=3))
    line = cfg.access_log_format % atoms
    assert "the-secret-key" not in line and basic not in line
    assert "\x1b" not in line and "\n" not in line
    assert "api_key=[redacted]&n=1" in line and "agent\\x1b[2J" in line
    assert atoms["{authorization}i"] == atoms["{x-api-key}i"] == "[redacted]"
    assert atoms["U"] == "/api/x\\nFORGED"


def test_deeply_nested_json_is_a_400_without_a_traceback(client, caplog):
    body = "[" * 20_000 + "]" * 20_000
    for path in ("/api/validate", "/api/analyze"):
        answer = client.post(path, data=body, content_type="application/json")
        assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
        assert answer.get_json()["error"]["code"] == "input.invalid"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_huge_field_name_is_not_echoed(client, astronaut_jpeg):
    name = "n" * 200_000
    answer = client.post(
        "/api/validate",
        data={name: "1", "file": (io.BytesIO(astronaut_jpeg), "a.jpg")},
    )
    assert answer.status_code in (400, 413)
    assert len(answer.get_data()) < 1000 and name[:100] not in answer.get_data(as_text=True)


@pytest.mark.parametrize("image_id", ["a" * 200, "A" * 64, "0" * 63, "../" * 30])
def test_any_malformed_image_id_is_image_id_invalid(client, image_id):
    answer = client.post("/api/analyze", json={"image_id": image_id})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "image_id.invalid"
    answer = client.get(f"/api/images/{image_id}")
    assert answer.get_json()["error"]["code"] in ("image_id.invalid", "route.not_found")


def test_the_api_refuses_duplicate_labels(client):
    answer = client.post("/api/analyze", json={"image_id": "0" * 64, "labels": ["hat", "Hat"]})
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "input.invalid" and error["field"] == "labels"
    assert "given twice" in error["message"]


def test_keys_are_redacted_however_the_query_spells_them():
    """Issue 22 item 5: `;` separators, bearer= and credential= parameters, and the Referer."""
    assert redact_query("x=1;apikey=s3cret") == "x=1;apikey=[redacted]"
    assert redact_query("bearer=s3cret&credential=s3cret&n=2") == (
        "bearer=[redacted]&credential=[redacted]&n=2"
    )
    cfg = Config()
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/api/attributes?x=1;apikey=the-secret-key",
        "QUERY_STRING": "x=1;apikey=the-secret-key",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_REFERER": "https://app.example/page?api_key=the-secret-key&tab=2",
    }
    request = SimpleNamespace(
        headers=[("REFERER", "https://app.example/page?api_key=the-secret-key&tab=2")]
    )
    response = SimpleNamespace(status="200 OK", headers=[], sent=2)
    atoms = AccessLogger(cfg).atoms(response, request, environ, timedelta(milliseconds=3))
    line = cfg.access_log_format % atoms
    assert "the-secret-key" not in line and "the-secret-key" not in repr(atoms)
    assert "api_key=[redacted]&tab=2" in line
