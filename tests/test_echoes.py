"""Issue 22 item 5: what answers echo. Lone surrogates, ?details=, server paths."""

from __future__ import annotations

import io

import pytest

from faceapp import create_app
from tests.conftest import ADMIN


@pytest.fixture
def stored(client, astronaut_jpeg) -> str:
    answer = client.post("/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
    return answer.get_json()["image_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('"labels": ["\\ud800", "b"]', "labels"),
        ('"labels": ["a", "x\\udfffy"]', "labels"),
        ('"attributes": ["\\ud800"]', "attributes"),
        ('"\\ud800": 1', None),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_its_field(client, stored, body, field, caplog):
    raw = '{"image_id": "' + stored + '", ' + body + "}"
    answer = client.post("/api/analyze", data=raw, content_type="application/json")
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "input.invalid" and error.get("field") == field
    assert "Unicode" in error["message"]
    assert "Traceback" not in caplog.text


def test_a_lone_surrogate_in_validate_is_a_400_too(client):
    raw = '{"image_url": "http://example.com/\\ud800.jpg"}'
    answer = client.post("/api/validate", data=raw, content_type="application/json")
    assert answer.status_code == 400 and answer.get_json()["error"]["field"] == "image_url"


def test_details_echoes_a_few_characters_of_a_bad_value(client, astronaut_jpeg):
    long_value = "y" * 7000
    answer = client.post(
        f"/api/validate?details={long_value}",
        data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")},
    )
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["field"] == "details" and len(error["message"]) < 200
    assert "yyyyyyyyyyyyyyyy…" in error["message"]


@pytest.fixture
def broken(config, tmp_path):
    """A model folder that does not exist and a YuNet file that does not either."""
    config.update(
        MODEL_NAME=str(tmp_path / "no-such-model"),
        DETECTOR="yunet",
        DETECTOR_MODEL=str(tmp_path / "no-such-yunet.onnx"),
        DETECTOR_AUTO_PULL=False,
    )
    return create_app(config)


def test_answers_without_an_admin_key_name_no_server_paths(broken, tmp_path):
    client = broken.test_client()
    setup = client.post("/api/setup", headers=ADMIN)  # the load fails: the admin sees where
    assert setup.status_code == 503 and str(tmp_path) in setup.get_json()["error"]["message"]
    ready = client.get("/api/ready")
    assert ready.status_code == 503
    message = ready.get_json()["error"]["message"]
    assert str(tmp_path) not in message and "[path]" in message
    assert str(tmp_path) in client.get("/api/ready", headers=ADMIN).get_json()["error"]["message"]
    for path in ("/app/login", "/app"):
        page = client.get(path).get_data(as_text=True)
        assert "model failed to load" in page and "Fallback face detector" in page
        assert str(tmp_path) not in page, path
    admin_page = client.get("/app", headers=ADMIN).get_data(as_text=True)
    assert str(tmp_path) in admin_page


def test_the_detector_fallback_in_answers_names_no_path(config, tmp_path, astronaut_jpeg):
    config.update(DETECTOR="yunet", DETECTOR_MODEL=str(tmp_path / "gone.onnx"))
    config["DETECTOR_AUTO_PULL"] = False
    client = create_app(config).test_client()
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    answer = client.post("/api/analyze", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
    reason = answer.get_json()["model"]["detector"]["fallback"]["reason"]
    assert str(tmp_path) not in reason and "[path]" in reason
    ready = client.get("/api/ready", headers=ADMIN).get_json()
    assert str(tmp_path) in ready["model"]["detector"]["fallback"]["reason"]
