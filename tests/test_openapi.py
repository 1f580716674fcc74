"""GET /api/openapi.json: a valid OpenAPI 3 document of every /api route, that the service keeps.

Real answers are checked against it, then schemathesis sends a bounded, derandomised set of
generated requests to every operation (with a key, and once without one).
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from faceapp import create_app
from faceapp.openapi import OPERATIONS
from tests.conftest import ADMIN

USER = {"Authorization": "Bearer user-key"}
# Both schemes filled in, so schemathesis generates neither (a generated X-API-Key beside a good
# bearer would be ignored, as the bearer comes first) and its ignored_auth probes remove both.
ADMIN_BOTH = {**ADMIN, "X-API-Key": "admin-key"}
PROBES = {"/api/health", "/api/ready"}
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# schemathesis skips the operation that serves the schema itself; the rest are fuzzed.
FUZZED = sorted(
    f"{method.upper()} {path}" for path, method in OPERATIONS if path != "/api/openapi.json"
)
FUZZ_SETTINGS = settings(
    max_examples=15,
    deadline=None,  # the first analyze may load the model
    derandomize=True,  # the same cases on every run, so CI is stable
    database=None,  # nothing to replay: derandomised runs need no example database
)
SCHEMATHESIS_CONFIG = {
    # 413: a generated form with more than MAX_FORM_PARTS fields is refused as too large.
    "checks": {
        "negative_data_rejection": {
            "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]
        }
    },
}


@pytest.fixture
def keyed_app(config, redis_url):
    """An app that needs keys, with no rate limit (schemathesis sends many requests at once)
    and an image_url allow-list no generated URL matches (so nothing is ever resolved). Its
    jobs go to a Redis database of their own, which no worker reads."""
    broker = redis_url.rsplit("/", 1)[0] + "/2"
    redis.Redis.from_url(broker).flushdb()
    config.update(
        API_KEYS="user-key",
        RATELIMIT_ENABLED=False,
        URL_ALLOWED_HOSTS="images.invalid",
        BROKER_URL=broker,
    )
    app = create_app(config)
    assert app.test_client().post("/api/setup", headers=ADMIN).status_code == 200
    return app


def load(app, headers=None):
    config = schemathesis.Config.from_dict(SCHEMATHESIS_CONFIG)
    return schemathesis.openapi.from_wsgi(
        "/api/openapi.json", app, config=config, headers=headers or ADMIN
    )


def document(app, headers=ADMIN) -> dict:
    answer = app.test_client().get("/api/openapi.json", headers=headers)
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    return answer.get_json()


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


# -- the document -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3(keyed_app):
    doc = document(keyed_app)
    assert doc["openapi"].startswith("3.0")
    load(keyed_app).validate()  # against the OpenAPI 3.0 meta-schema (raises when invalid)
    if importlib.util.find_spec("openapi_spec_validator"):  # a second opinion where installed
        from openapi_spec_validator import validate

        validate(doc)


def test_every_route_of_the_api_blueprint_is_documented(keyed_app):
    routes = {
        (method.lower(), openapi_path(rule.rule))
        for rule in keyed_app.url_map.iter_rules()
        if rule.endpoint.startswith(("api.", "jobs."))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (method, path) for path, item in document(keyed_app)["paths"].items() for method in item
    }
    assert routes == documented


def test_security_schemes_probes_and_admin_operations(keyed_app):
    doc = document(keyed_app)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert {k: schemes["apiKeyAuth"][k] for k in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    keyed = [{"bearerAuth": []}, {"apiKeyAuth": []}]
    admin = {
        (p, m)
        for p, item in doc["paths"].items()
        for m, op in item.items()
        if op.get("x-faceapp-admin")
    }
    assert admin == {
        ("/api/setup", "post"),
        ("/api/images/{image_id}", "delete"),
        ("/api/cache/wipe", "post"),
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert {"200", "500"} <= statuses
            if path in PROBES:
                assert op["security"] == [] and "401" not in statuses
            elif path == "/api/openapi.json":  # no key, but rate limited
                assert op["security"] == [] and "401" not in statuses and "429" in statuses
            else:
                assert op["security"] == keyed and {"401", "429"} <= statuses, (path, method)
            assert ("403" in statuses) == ((path, method) in admin)


def test_without_api_keys_a_key_is_optional_except_for_admin_operations(config):
    doc = document(create_app(config), headers={})
    assert doc["paths"]["/api/attributes"]["get"]["security"][0] == {}
    assert {} not in doc["paths"]["/api/cache/wipe"]["post"]["security"]


def test_requests_say_exactly_one_non_empty_image_source(keyed_app):
    components = document(keyed_app)["components"]["schemas"]
    sources = {
        "ValidateRequest": ["image_url", "image_base64"],
        "ValidateForm": ["file", "image_url", "image_base64"],
        "AnalyzeRequest": ["image_id", "image_url", "image_base64"],
        "AnalyzeForm": ["file", "image_id", "image_url", "image_base64"],
    }
    for name, names in sources.items():
        schema = components[name]
        assert schema["oneOf"] == [{"required": [source]} for source in names], name
        for source in names:
            if source != "file":
                assert schema["properties"][source]["minLength"] == 1, (name, source)
        assert "type" not in schema["properties"]["wipe_cache"]  # a flag: anyOf its spellings
    client = keyed_app.test_client()
    for body in ({"image_url": "", "image_base64": ""}, {"image_url": ""}, {"image_id": ""}):
        answer = client.post("/api/analyze", json=body, headers=ADMIN)
        assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "input.invalid"


def test_options_on_a_trace_allows_only_what_the_trace_serves(keyed_app):
    image_id = "0" * 64
    answer = keyed_app.test_client().options(f"/api/images/{image_id}/trace", headers=ADMIN)
    assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    record = keyed_app.test_client().options(f"/api/images/{image_id}", headers=ADMIN)
    assert set(record.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "DELETE"}


@pytest.mark.parametrize("limit", [20, 7, 150])
def test_max_faces_maximum_is_the_configured_limit(config, limit, astronaut_jpeg):
    app = create_app(dict(config, MAX_FACES_LIMIT=limit))
    schemas = document(app)["components"]["schemas"]
    for name in ("AnalyzeRequest", "AnalyzeForm", "JobRequest", "JobArchiveForm"):
        assert schemas[name]["properties"]["max_faces"]["maximum"] == limit, name
    client = app.test_client()
    image_id = client.post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    ).get_json()["image_id"]
    at_limit = client.post("/api/analyze", json={"image_id": image_id, "max_faces": limit})
    assert at_limit.status_code == 200, at_limit.get_json()
    over = client.post("/api/analyze", json={"image_id": image_id, "max_faces": limit + 1})
    assert over.status_code == 400 and over.get_json()["error"]["field"] == "max_faces"


def test_the_snapshot_states_the_default_max_faces_limit():
    from faceapp.config import DEFAULTS

    snapshot = json.loads((Path(__file__).parent.parent / "docs" / "openapi.json").read_text())
    maximum = snapshot["components"]["schemas"]["AnalyzeRequest"]["properties"]["max_faces"]
    assert maximum["maximum"] == DEFAULTS["MAX_FACES_LIMIT"]


def test_the_document_is_public_even_when_keys_are_set(keyed_app):
    """The document holds no secret, and Swagger UI and client generators need it before a key
    is typed: it never needs one (it is rate limited like the rest), and says so of itself."""
    public = document(keyed_app, headers={})
    assert public == document(keyed_app, headers=USER)
    operation = public["paths"]["/api/openapi.json"]["get"]
    assert operation["security"] == [] and "401" not in operation["responses"]
    assert "429" in operation["responses"]
    assert public["paths"]["/api/attributes"]["get"]["security"] != []
    assert keyed_app.test_client().get("/api/attributes").status_code == 401


# -- real answers match it ----------------------------------------------------------------------


def test_real_answers_match_the_document(keyed_app, astronaut_jpeg, coffee_jpeg):
    schema = load(keyed_app)

    def call(path, method, **case):
        answer = (
            schema[path][method]
            .Case(headers=dict(ADMIN), **case)
            .call_and_validate(checks=CONFORMANCE)
        )
        return answer

    validated = call(
        "/api/validate",
        "POST",
        body={"file": astronaut_jpeg},
        media_type="multipart/form-data",
        query={"details": "1"},
    )
    image_id = validated.json()["image_id"]
    assert validated.status_code == 200 and "details" in validated.json()
    assert (
        call(
            "/api/validate", "POST", body={"file": coffee_jpeg}, media_type="multipart/form-data"
        ).json()["valid"]
        is False
    )
    analyzed = call(
        "/api/analyze",
        "POST",
        media_type="application/json",
        body={
            "image_id": image_id,
            "labels": ["a person wearing a hat"],
            "include_embedding": True,
        },
    )
    assert analyzed.status_code == 200 and analyzed.json()["faces"][0]["embedding"]
    yaml = call(
        "/api/analyze",
        "POST",
        media_type="application/json",
        query={"format": "yaml"},
        body={"image_id": image_id},
    )
    assert yaml.headers["content-type"][0].startswith("application/yaml")
    for path, method, params, status in [
        ("/api/images/{image_id}", "GET", {"image_id": image_id}, 200),
        ("/api/images/{image_id}/trace", "GET", {"image_id": image_id}, 200),
        ("/api/attributes", "GET", {}, 200),
        ("/api/setup", "POST", {}, 200),
        ("/api/ready", "GET", {}, 200),
        ("/api/health", "GET", {}, 200),
        ("/api/images/{image_id}", "DELETE", {"image_id": image_id}, 200),
        ("/api/images/{image_id}", "GET", {"image_id": image_id}, 404),
        ("/api/images/{image_id}", "GET", {"image_id": "NOT-AN-ID"}, 400),
        ("/api/cache/wipe", "POST", {}, 200),
    ]:
        answer = call(path, method, path_parameters=params)
        assert answer.status_code == status, (path, method, answer.text)


def test_a_not_ready_answer_matches_the_document(config):
    config["API_KEYS"] = "user-key"
    schema = load(create_app(config))
    documented = [check for check in CONFORMANCE if check is not not_a_server_error]  # 503 it is
    answer = schema["/api/ready"]["GET"].Case().call_and_validate(checks=documented)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "model.not_ready"


# -- generated requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value
)
@pytest.mark.parametrize("label", FUZZED)
def test_generated_requests_with_a_key(keyed_app, label, mode):
    """No 5xx, and every answer is documented (status, content type, body, headers)."""
    method, path = label.split(" ")
    operation = load(keyed_app)[path][method]
    checks = [*CONFORMANCE, ignored_auth]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(mode, headers=dict(ADMIN_BOTH)))
    def run(case):
        case.call_and_validate(checks=checks)

    run()


@pytest.mark.parametrize("label", FUZZED)
def test_generated_requests_without_a_key_are_refused(keyed_app, label):
    method, path = label.split(" ")
    operation = load(keyed_app, headers=USER)[path][method]

    def refused_unless_a_probe(ctx, response, case) -> None:
        if path in PROBES:
            assert response.status_code < 500
        else:
            assert response.status_code == 401, (response.status_code, response.text)
            assert "auth.required" in response.text  # JSON, or YAML when ?format=yaml

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy())
    def run(case):
        case.call_and_validate(checks=[refused_unless_a_probe, not_a_server_error])

    run()


# -- schemathesis as QA runs it: every phase and every check, against gunicorn --------------------

ST_CONFIG = """
[checks.positive_data_acceptance]
# A schema-valid image source may still carry no image (400, 415), be unreachable (422), or be
# a job of more than MAX_JOB_ITEMS items (413). A form never has more parts than MAX_FORM_PARTS:
# it is derived from the schemas' own limits (faceapp/schemas.py, form_parts_allowed).
# tests/schemathesis_hooks.py holds the schema to what it can state.
expected-statuses = ["2xx", 400, 401, 403, 404, 409, 413, 415, 422, 429]

[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]

"""


@pytest.mark.slow
def test_schemathesis_with_all_checks_finds_nothing(tmp_path, tiny_model_dir, redis_url):
    """`st run --checks all` (examples, coverage, fuzzing and stateful phases) on a bounded,
    deterministic set of cases: no 5xx, and the document says what the service enforces. Jobs
    go to a Redis database of their own, which no worker reads."""
    import os
    import subprocess
    import sys

    from tests.servers import ROOT, app_env, gunicorn

    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(ST_CONFIG, encoding="utf-8")
    broker = redis_url.rsplit("/", 1)[0] + "/4"
    redis.Redis.from_url(broker).flushdb()
    env = app_env(
        str(tmp_path / "instance"),
        tiny_model_dir,
        API_KEYS="user-key",
        ADMIN_KEYS="admin-key",
        RATELIMIT_ENABLED="false",
        URL_ALLOWED_HOSTS="images.invalid",  # no generated URL is ever fetched
        DETECTOR="haar",
        BROKER_URL=broker,
        MAX_ACTIVE_JOBS="1000",
    )
    st = os.path.join(os.path.dirname(sys.executable), "st")
    with gunicorn(env, workers=1, log_path=str(tmp_path / "g.log")) as (base, _):
        command = [
            st,
            "--config-file",
            str(config_file),
            "run",
            base + "/api/openapi.json",
            "--checks",
            "all",
            # DELETE /api/jobs/{job_id} cancels a job, which stays readable (state cancelled):
            # not a removal. (DELETE /api/images/{id} answering 404 afterwards: test_analyze.py.)
            "--exclude-checks",
            "use_after_free",
            "--max-examples",
            "8",
            "--generation-deterministic",
            "--header",
            "Authorization: Bearer admin-key",
            "--continue-on-failure",
            "--warnings",
            "off",
            "--workers",
            "1",
        ]
        hooks = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": ROOT}
        run = subprocess.run(
            command, capture_output=True, text=True, env=hooks, timeout=300, cwd=str(tmp_path)
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " generated" in run.stdout  # the summary: how many cases ran
