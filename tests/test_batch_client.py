"""faceapp.batch.client's retries against a scripted HTTP server: 429 Retry-After, 503 backoff,
their bounds, and a deployment that does not answer."""

from __future__ import annotations

import json
import time

import pytest
from werkzeug import Response

from faceapp.batch import client as client_module
from faceapp.batch.client import Client, ServerError
from faceapp.batch.pipeline import Options
from faceapp.batch.runner import Stop
from tests.servers import free_port

CONFIG = {"MAX_UPLOAD_BYTES": 10 * 1024 * 1024, "MAX_FACES": 5}
VALID = {"image_id": "a" * 64, "valid": True, "errors": [], "warnings": []}
MODEL = {"name": "m", "version": "v"}
COUNT = {"found": 1, "not_analysed": 0, "max_faces": 5}


def _answers(*responses):
    """A handler giving the responses in turn (the last one again once they run out)."""
    queue = list(responses)

    def handler(_request):
        status, body, headers = queue.pop(0) if len(queue) > 1 else queue[0]
        return Response(
            json.dumps(body), status=status, headers=headers, mimetype="application/json"
        )

    return handler


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(client_module, "BACKOFF_S", 0.01)


@pytest.fixture
def photo(tmp_path, astronaut_jpeg):
    path = tmp_path / "a.jpg"
    path.write_bytes(astronaut_jpeg)
    return str(path)


def _client(httpserver, **options) -> Client:
    return Client(httpserver.url_for(""), Options(**options), api_key="k", config=CONFIG)


def test_429_waits_for_retry_after_and_503_backs_off(httpserver, photo):
    limited = {"error": {"code": "rate.limited", "message": "slow down"}}
    busy = {"error": {"code": "model.busy", "message": "busy"}}
    httpserver.expect_request("/api/validate", method="POST").respond_with_handler(
        _answers((429, limited, {"Retry-After": "1"}), (503, busy, {}), (200, VALID, {}))
    )
    httpserver.expect_request("/api/analyze", method="POST").respond_with_handler(
        _answers((200, {"faces": [{"box": {}}], "face_count": COUNT, "model": MODEL}, {}))
    )
    client = _client(httpserver)
    started = time.monotonic()
    line = client.process(photo)
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was waited out
    assert client.retries == 2
    assert line["valid"] is True and line["faces"] == [{"box": {}}] and line["model"] == MODEL
    sent = httpserver.log[-1][0]
    assert sent.headers["Authorization"] == "Bearer k"
    assert sent.get_json() == {"image_id": "a" * 64}  # analyze by image_id, photo not resent


def test_503s_past_the_bound_give_the_503s_error_line(httpserver, photo):
    busy = {"error": {"code": "model.busy", "message": "busy"}}
    httpserver.expect_request("/api/validate").respond_with_handler(_answers((503, busy, {})))
    client = _client(httpserver)
    line = client.process(photo)
    assert line["error"]["code"] == "model.busy"
    assert client.retries == client_module.MAX_TRIES - 1


def test_an_invalid_photo_is_not_analysed_unless_forced(httpserver, photo):
    invalid = {**VALID, "valid": False, "errors": [{"code": "face.none", "message": "none"}]}
    httpserver.expect_request("/api/validate").respond_with_handler(_answers((200, invalid, {})))
    httpserver.expect_request("/api/analyze").respond_with_handler(
        _answers(
            (
                200,
                {"faces": [{"box": {}, "detected": False}], "face_count": COUNT, "model": MODEL},
                {},
            )
        )
    )
    ready = {"ready": True, "limits": {"max_faces": 7, "max_faces_limit": 20}}
    httpserver.expect_request("/api/ready").respond_with_handler(_answers((200, ready, {})))
    line = _client(httpserver).process(photo)
    assert line["faces"] == [] and line["valid"] is False
    # The deployment's MAX_FACES (7), not this machine's (5); --max-faces when given.
    assert line["face_count"] == {"found": 0, "not_analysed": 0, "max_faces": 7}
    assert _client(httpserver, max_faces=2).process(photo)["face_count"]["max_faces"] == 2
    assert all(entry[0].path != "/api/analyze" for entry in httpserver.log)
    forced = _client(httpserver, force=True, labels=("a, b",)).process(photo)
    assert forced["faces"] == [{"box": {}, "detected": False}]
    body = httpserver.log[-1][0].get_json()
    assert body == {"image_id": "a" * 64, "force": True, "labels": ["a, b"]}  # JSON keeps commas


def test_an_error_answer_is_the_line_and_a_url_is_sent_as_image_url(httpserver):
    refused = {"error": {"code": "url.forbidden", "message": "private", "field": "image_url"}}
    httpserver.expect_request("/api/validate").respond_with_handler(_answers((400, refused, {})))
    line = _client(httpserver).process("http://10.0.0.1/a.jpg")
    assert line == {"source": "http://10.0.0.1/a.jpg", "image_id": None, **refused}
    assert httpserver.log[-1][0].form["image_url"] == "http://10.0.0.1/a.jpg"


def test_a_deployment_that_does_not_answer_stops_the_run(monkeypatch, photo):
    monkeypatch.setattr(client_module, "MAX_TRIES", 2)
    client = Client(f"http://127.0.0.1:{free_port()}", Options(), api_key=None, config=CONFIG)
    with pytest.raises(Stop):
        client.process(photo)
    with pytest.raises(ServerError):
        client.connect()
