"""POST /api/validate, the image records and traces, and the error envelope around them."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy
import pytest
from PIL import Image
from ruamel.yaml import YAML
from werkzeug.datastructures import MultiDict
from werkzeug.test import encode_multipart

from faceapp import create_app
from tests.conftest import ADMIN, jpeg_bytes


def upload(client, data: bytes, name: str = "photo.jpg", **fields):
    return client.post("/api/validate", data={"file": (io.BytesIO(data), name), **fields})


def error_of(response) -> str:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]["code"]


def test_astronaut_upload_is_valid_and_keyed_by_its_sha256(client, astronaut_jpeg):
    answer = upload(client, astronaut_jpeg)
    assert answer.status_code == 200
    body = answer.get_json()
    assert list(body) == ["image_id", "valid", "errors", "warnings"]
    assert body["image_id"] == hashlib.sha256(astronaut_jpeg).hexdigest()
    assert body["valid"] is True and body["errors"] == []


def test_the_three_input_forms_give_the_same_image_id(client, astronaut_jpeg):
    encoded = base64.b64encode(astronaut_jpeg).decode()
    ids = {
        upload(client, astronaut_jpeg).get_json()["image_id"],
        client.post("/api/validate", json={"image_base64": encoded}).get_json()["image_id"],
        client.post(
            "/api/validate", data={"image_base64": "data:image/jpeg;base64," + encoded}
        ).get_json()["image_id"],
    }
    assert ids == {hashlib.sha256(astronaut_jpeg).hexdigest()}


def test_a_photo_without_a_face_is_invalid(client, coffee_jpeg):
    body = upload(client, coffee_jpeg).get_json()
    assert body["valid"] is False
    assert [e["code"] for e in body["errors"]] == ["face.none"]
    assert all(e["message"] for e in body["errors"])


def test_details_describe_the_stored_upright_image(client, astronaut_jpeg):
    body = client.post(
        "/api/validate?details=1", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    ).get_json()
    details = body["details"]
    assert (details["width"], details["height"], details["format"]) == (512, 512, "JPEG")
    assert len(details["faces"]) == 1
    box = details["faces"][0]["box"]
    assert 100 < box["x"] + box["width"] / 2 < 300 and 0 <= details["faces"][0]["confidence"] <= 1
    assert "brightness" in details["quality"]


def test_stored_record_bytes_and_preview(client, app, astronaut_jpeg):
    image_id = upload(client, astronaut_jpeg).get_json()["image_id"]
    record = client.get(f"/api/images/{image_id}").get_json()
    assert record["image_id"] == image_id and record["validation"]["valid"] is True
    assert record["bytes"] == len(astronaut_jpeg) and record["format"] == "JPEG"
    assert "stored" not in record  # how it is stored is the store's business
    with app.app_context():
        from faceapp import services
        from faceapp.store import store

        assert store.backend.get_image(image_id) == astronaut_jpeg  # kept as received
        preview = Image.open(io.BytesIO(services.image_preview(image_id)))
    assert preview.format == "JPEG" and preview.mode == "RGB" and preview.size == (512, 512)


def test_trace_records_each_validation(client, astronaut_jpeg):
    first = upload(client, astronaut_jpeg, wipe_cache="no")
    image_id = first.get_json()["image_id"]
    upload(client, astronaut_jpeg)
    client.post(
        "/api/validate",
        data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg"), "wipe_cache": "yes"},
        headers={"X-Request-ID": "qa-123"},
    )
    events = client.get(f"/api/images/{image_id}/trace").get_json()["events"]
    assert [e["event"] for e in events] == ["validated", "validated", "wiped", "validated"]
    assert [e.get("cached") for e in events if e["event"] == "validated"] == [False, True, False]
    assert events[0]["request_id"] == first.headers["X-Request-ID"]
    assert events[-1]["request_id"] == "qa-123"
    assert events[0]["time"].endswith("Z") and events[0]["worker_pid"] > 0
    assert {"decode", "detect", "total"} <= set(events[0]["timings_ms"])


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"data": {}}, "input.missing"),
        ({"json": {}}, "input.missing"),
        (
            {"json": {"image_base64": "aGVsbG8=", "image_url": "http://example.com/a.jpg"}},
            "input.ambiguous",
        ),
        ({"json": {"image_base64": "not base64 at all!"}}, "input.invalid"),
        ({"json": {"image_base64": "data:text/html;base64,aGVsbG8="}}, "input.invalid"),
        ({"json": {"image_base64": 12}}, "input.invalid"),
        ({"json": {"image_base64": "aGVsbG8=", "colour": "red"}}, "input.invalid"),
        ({"json": {"image_base64": "aGVsbG8=", "wipe_cache": "perhaps"}}, "input.invalid"),
        ({"json": ["not", "an", "object"]}, "input.invalid"),
        ({"data": "{broken json", "content_type": "application/json"}, "input.invalid"),
    ],
)
def test_bad_requests_have_stable_codes(client, kwargs, code):
    answer = client.post("/api/validate", **kwargs)
    assert answer.status_code == 400
    assert error_of(answer) == code


def test_upload_and_base64_together_are_ambiguous(client, astronaut_jpeg):
    answer = client.post(
        "/api/validate",
        data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg"), "image_base64": "aGVsbG8="},
    )
    assert error_of(answer) == "input.ambiguous"


def truncated_jpeg(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"", 400, "image.empty"),
        (b"hello, I am text", 415, "image.unsupported_format"),
        (b"<html><body>no</body></html>", 415, "image.unsupported_format"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "image.unsupported_format"),
    ],
)
def test_undecodable_uploads(client, payload, status, code):
    answer = upload(client, payload)
    assert answer.status_code == status and error_of(answer) == code


def test_truncated_jpeg_is_corrupt(client, astronaut_jpeg):
    answer = upload(client, truncated_jpeg(astronaut_jpeg))
    assert answer.status_code == 400 and error_of(answer) == "image.corrupt"


def test_size_and_pixel_limits(config, astronaut_jpeg):
    client = create_app({**config, "MAX_UPLOAD_BYTES": 10_000}).test_client()
    answer = upload(client, astronaut_jpeg)
    assert answer.status_code == 413 and error_of(answer) == "image.too_large"
    encoded = base64.b64encode(astronaut_jpeg).decode()
    assert (
        error_of(client.post("/api/validate", json={"image_base64": encoded})) == "image.too_large"
    )
    client = create_app({**config, "MAX_IMAGE_PIXELS": 100 * 100}).test_client()
    answer = upload(client, astronaut_jpeg)
    assert answer.status_code == 413 and error_of(answer) == "image.too_many_pixels"


def test_a_body_over_flasks_limit_is_413_json(config):
    client = create_app({**config, "MAX_UPLOAD_BYTES": 1000}).test_client()
    answer = upload(client, b"x" * 200_000)
    assert answer.status_code == 413 and error_of(answer) == "image.too_large"
    assert client.get("/api/health").status_code == 200


def test_flask_refuses_a_body_over_the_limit_before_any_view_reads_it(config):
    app = create_app({**config, "MAX_UPLOAD_BYTES": 1000})
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == int(1000 * 4 / 3) + 64 * 1024
    # Not an image field: without the limit this would be parsed whole and answered 400.
    answer = app.test_client().post("/api/analyze", json={"labels": ["x" * (limit + 1)]})
    assert answer.status_code == 413 and error_of(answer) == "image.too_large"


def test_a_base64_image_in_a_multipart_form_is_accepted_up_to_the_upload_limit(config):
    client = create_app({**config, "MAX_UPLOAD_BYTES": 2_000_000}).test_client()
    noise = Image.frombytes("RGB", (600, 600), bytes(range(256)) * 4218 + bytes(192))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")  # ~1 MB, so its base64 is over Flask's 500 kB text-field default
    encoded = base64.b64encode(buffer.getvalue()).decode()
    answer = client.post(
        "/api/validate", data={"image_base64": encoded}, content_type="multipart/form-data"
    )
    assert answer.status_code == 200, answer.get_json()


def test_too_many_form_fields_is_request_too_large_not_an_image_size(client):
    parts = client.application.config["MAX_FORM_PARTS"] + 1
    fields = MultiDict([(f"f{i}", "x") for i in range(parts)])
    answer = client.post("/api/validate", data=fields, content_type="multipart/form-data")
    assert answer.status_code == 413 and error_of(answer) == "request.too_large"


def largest_analyze_form(image: bytes) -> MultiDict:
    """An analyze form with as many parts as AnalyzeForm allows: the file, 64 attributes and 32
    labels as repeated fields, and every flag."""
    return MultiDict(
        [
            ("file", (io.BytesIO(image), "photo.jpg")),
            *[("attributes", "expression")] * 64,
            *[("labels", f"label {number}") for number in range(32)],
            ("include_embedding", "false"),
            ("force", "true"),
            ("max_faces", "1"),
            ("wipe_cache", "false"),
        ]
    )


def test_max_form_parts_is_what_the_multipart_schemas_allow(client, astronaut_jpeg):
    from faceapp.schemas import AnalyzeForm, form_parts

    form = largest_analyze_form(astronaut_jpeg)
    parts = len(list(form.items(multi=True)))
    assert parts == form_parts(AnalyzeForm) == client.application.config["MAX_FORM_PARTS"]
    accepted = client.post("/api/analyze", data=form, content_type="multipart/form-data")
    assert accepted.status_code == 200, accepted.get_json()
    assert len(accepted.get_json()["faces"][0]["labels"]) == 32

    one_more = largest_analyze_form(astronaut_jpeg)
    one_more.add("attributes", "expression")
    refused = client.post("/api/analyze", data=one_more, content_type="multipart/form-data")
    assert refused.status_code == 413 and error_of(refused) == "request.too_large"
    assert f"at most {parts}" in refused.get_json()["error"]["message"]


def test_an_operators_max_form_parts_is_kept(config):
    assert create_app(dict(config, MAX_FORM_PARTS=7)).config["MAX_FORM_PARTS"] == 7


@pytest.mark.parametrize(
    "bad_id",
    [
        "../etc/passwd",
        "%2e%2e%2fetc%2fpasswd",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "g" * 64,
        "a" * 10_000,
    ],
)
def test_malformed_image_ids_are_refused(client, bad_id):
    for path in (f"/api/images/{bad_id}", f"/api/images/{bad_id}/trace"):
        answer = client.get(path)
        assert answer.status_code == 400, path
        assert error_of(answer) == "image_id.invalid"


def test_unknown_image_id_is_404(client):
    answer = client.get("/api/images/" + "0" * 64)
    assert answer.status_code == 404 and error_of(answer) == "image_id.not_found"


def test_delete_and_wipe_forget_images(client, astronaut_jpeg, coffee_jpeg):
    first = upload(client, astronaut_jpeg).get_json()["image_id"]
    second = upload(client, coffee_jpeg).get_json()["image_id"]
    assert client.delete(f"/api/images/{first}").status_code == 401
    assert client.delete(f"/api/images/{first}", headers=ADMIN).get_json() == {
        "image_id": first,
        "deleted": True,
    }
    assert client.get(f"/api/images/{first}").status_code == 404
    assert client.get(f"/api/images/{first}/trace").status_code == 404
    assert client.delete(f"/api/images/{first}", headers=ADMIN).status_code == 404
    assert client.get("/api/cache/wipe", headers=ADMIN).status_code == 405
    assert client.post("/api/cache/wipe", headers=ADMIN).get_json() == {"wiped": 1}
    assert client.get(f"/api/images/{second}").status_code == 404
    # Validating again after a wipe stores the image anew.
    assert upload(client, coffee_jpeg).get_json()["image_id"] == second


def test_request_ids(client):
    generated = client.get("/api/health")
    assert len(generated.headers["X-Request-ID"]) == 32
    assert (
        client.get("/api/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    insane = client.get("/api/health", headers={"X-Request-ID": "bad id\x01" + "x" * 300})
    assert insane.headers["X-Request-ID"] != "bad id"
    assert len(insane.headers["X-Request-ID"]) == 32


def test_unknown_routes_and_methods_answer_in_the_envelope(client):
    assert error_of(client.get("/api/nothing-here")) == "route.not_found"
    answer = client.get("/api/validate")
    assert answer.status_code == 405 and error_of(answer) == "request.method_not_allowed"
    assert "POST" in answer.headers["Allow"]


def test_errors_in_yaml_equal_the_json(client):
    as_json = client.post("/api/validate", json={}).get_json()
    as_yaml = client.post("/api/validate?format=yaml", json={})
    assert as_yaml.mimetype == "application/yaml"
    assert YAML(typ="safe", pure=True).load(as_yaml.get_data(as_text=True)) == as_json


def test_an_unexpected_error_is_internal_and_hides_its_text(client, monkeypatch):
    from faceapp import services

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(services, "validate", explode)
    answer = client.post("/api/validate", json={"image_base64": "aGVsbG8="})
    assert answer.status_code == 500 and error_of(answer) == "internal"
    assert "secret internals" not in answer.get_data(as_text=True)


def test_too_many_form_parts_or_a_huge_field_is_413(config, client, astronaut_jpeg):
    parts = {f"extra{i}": "x" for i in range(client.application.config["MAX_FORM_PARTS"])}
    answer = client.post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg"), **parts}
    )
    assert answer.status_code == 413 and error_of(answer) == "request.too_large"
    small = create_app({**config, "MAX_FORM_MEMORY_SIZE": 1000}).test_client()
    answer = small.post(
        "/api/validate", data={"file": (io.BytesIO(b"x"), "a.jpg"), "note": "x" * 2000}
    )
    assert answer.status_code == 413 and error_of(answer) == "request.too_large"
    assert small.get("/api/health").status_code == 200


def test_a_base64_image_fits_in_a_multipart_field_by_default(client, astronaut_jpeg):
    big = jpeg_bytes(
        Image.fromarray(
            numpy.tile(numpy.asarray(Image.open(io.BytesIO(astronaut_jpeg))), (3, 3, 1))
        )
    )
    assert len(base64.b64encode(big)) > 512 * 1024
    # Encoded in memory: the test client would spool a body this size to an unclosed temp file.
    boundary, body = encode_multipart(
        {"image_base64": base64.b64encode(big).decode(), "wipe_cache": "0"}
    )
    answer = client.post(
        "/api/validate", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert answer.status_code == 200, answer.get_json()


def test_an_empty_file_input_beside_a_url_is_not_ambiguous(client):
    # What a browser posts when the file input is left empty and image_url is filled in.
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename=""\r\n'
        "Content-Type: application/octet-stream\r\n\r\n\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image_url"\r\n\r\n'
        "ftp://example.com/a.jpg\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    answer = client.post(
        "/api/validate", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert error_of(answer) == "url.invalid"  # the URL was taken as the one source


@pytest.mark.parametrize("path", ["/api/validate", "/api/analyze", "/api/jobs"])
@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", None])
def test_json_sent_as_another_type_is_415_naming_the_types_read(client, path, content_type):
    body = b'{"image_url": "https://example.com/a.jpg"}'
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.post(path, data=body, headers={**headers, **ADMIN})
    assert answer.status_code == 415 and error_of(answer) == "input.unsupported_media_type"
    message = answer.get_json()["error"]["message"]
    assert "application/json" in message and "multipart/form-data" in message


def test_no_body_at_all_is_still_input_missing(client):
    answer = client.post("/api/validate")
    assert answer.status_code == 400 and error_of(answer) == "input.missing"


def test_a_trace_keeps_the_last_trace_max_events(config, astronaut_jpeg):
    client = create_app(dict(config, TRACE_MAX_EVENTS=3)).test_client()
    for name in ("1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"):
        image_id = upload(client, astronaut_jpeg, name=name).get_json()["image_id"]
    trace = client.get(f"/api/images/{image_id}/trace").get_json()
    assert [event["name"] for event in trace["events"]] == ["3.jpg", "4.jpg", "5.jpg"]
    assert trace["max_events"] == 3
