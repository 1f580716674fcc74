"""GET /metrics: off by default, guarded by admin keys, and figures that follow what the app did."""

from __future__ import annotations

import base64

import pytest
from prometheus_client.parser import text_string_to_metric_families

from faceapp import create_app, services
from tests.conftest import ADMIN


def scrape(client, headers=ADMIN) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(answer.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(config):
    config["METRICS_ENABLED"] = True
    return create_app(config)


def test_off_by_default(client):
    answer = client.get("/metrics", headers=ADMIN)
    assert answer.status_code == 404 and answer.json["error"]["code"] == "route.not_found"


@pytest.mark.parametrize(
    ("settings", "headers", "status"),
    [
        ({}, {}, 401),  # ADMIN_KEYS set (conftest): an admin key is needed
        ({"API_KEYS": "user-key"}, {"Authorization": "Bearer user-key"}, 401),  # as a wrong key
        ({}, {"Authorization": "Bearer wrong"}, 401),
        ({}, ADMIN, 200),
        ({"METRICS_PUBLIC": True}, {}, 200),
        ({"ADMIN_KEYS": ""}, {}, 200),  # no admin keys at all: open (keep it internal at nginx)
    ],
)
def test_who_may_scrape(config, settings, headers, status):
    config.update(METRICS_ENABLED=True, **settings)
    answer = create_app(config).test_client().get("/metrics", headers=headers)
    assert answer.status_code == status
    if status != 200:
        assert answer.json["error"]["code"] in ("auth.required", "auth.forbidden")


def test_requests_caches_and_stages_are_counted(metered, astronaut_jpeg):
    client = metered.test_client()
    body = {"image_base64": base64.b64encode(astronaut_jpeg).decode()}
    for _ in range(2):  # stored and validated, then a validation cache hit
        assert client.post("/api/validate", json=body).status_code == 200
    image_id = client.post("/api/validate", json=body).json["image_id"]
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    for _ in range(2):  # analysed, then an analysis cache hit
        answer = client.post("/api/analyze", json={"image_id": image_id})
        assert answer.status_code == 200
    assert client.get("/api/images/" + "0" * 64).status_code == 404

    samples = scrape(client)
    requests_total = "faceapp_http_requests_total"
    assert value(samples, requests_total, endpoint="api.validate", method="POST", status="200") == 3
    assert value(samples, requests_total, endpoint="api.analyze", method="POST", status="200") == 2
    assert value(samples, requests_total, endpoint="api.image_record", method="GET", status="404")
    latency = "faceapp_http_request_duration_seconds_count"
    assert value(samples, latency, endpoint="api.validate") == 3
    cache = "faceapp_cache_requests_total"
    assert value(samples, cache, cache="validation", result="miss") == 1
    assert value(samples, cache, cache="validation", result="hit") == 2
    assert value(samples, cache, cache="analysis", result="miss") == 1
    assert value(samples, cache, cache="analysis", result="hit") == 1
    stages = "faceapp_stage_duration_seconds_count"
    for event, stage, count in [
        ("validated", "decode", 1),
        ("validated", "detect", 1),
        ("validated", "total", 3),
        ("analyzed", "encode", 1),
        ("cache_hit", "total", 1),
    ]:
        assert value(samples, stages, event=event, stage=stage) == count, (event, stage)
    assert value(samples, "faceapp_stage_duration_seconds_sum", event="validated", stage="decode")
    assert value(samples, "faceapp_model_ready") == 1
    assert value(samples, "faceapp_model_load_seconds") > 0
    assert value(samples, "faceapp_store_images") == 1
    assert value(samples, "faceapp_store_bytes") > 1000
    assert value(samples, "faceapp_store_up") == 1
    assert value(samples, "faceapp_build_info", version=__import__("faceapp").__version__) == 1


def test_model_not_ready_is_zero(metered):
    assert value(scrape(metered.test_client()), "faceapp_model_ready") == 0


def test_batch_size_and_queue_wait_come_from_the_event(metered):
    with metered.test_request_context():
        services.record_event("a" * 64, "analyzed", {"queue_ms": 12.0, "encode": 30}, batch_size=3)
        services.record_event("a" * 64, "analyzed", {"queue": 2.0, "encode": 5}, batch_size=1)
        services.record_event("a" * 64, "validated", {"decode": 1}, cached=False, flag=True)
    samples = scrape(metered.test_client())
    assert value(samples, "faceapp_inference_batch_size_count") == 2
    assert value(samples, "faceapp_inference_batch_size_sum") == 4
    queue = value(samples, "faceapp_stage_duration_seconds_sum", event="analyzed", stage="queue")
    assert queue == pytest.approx(0.014)


def test_url_fetches_by_outcome(config, httpserver, astronaut_jpeg):
    config.update(METRICS_ENABLED=True, URL_ALLOW_PRIVATE_NETWORKS=True)
    client = create_app(config).test_client()
    httpserver.expect_request("/a.jpg").respond_with_data(astronaut_jpeg, content_type="image/jpeg")
    httpserver.expect_request("/gone.jpg").respond_with_data("no", status=404)
    fetched = client.post("/api/validate", json={"image_url": httpserver.url_for("/a.jpg")})
    assert fetched.status_code == 200
    missing = client.post("/api/validate", json={"image_url": httpserver.url_for("/gone.jpg")})
    assert missing.json["error"]["code"] == "url.bad_status"
    samples = scrape(client)
    assert value(samples, "faceapp_url_fetches_total", outcome="ok") == 1
    assert value(samples, "faceapp_url_fetches_total", outcome="url.bad_status") == 1


def test_rate_limited_requests(config):
    config.update(METRICS_ENABLED=True, RATELIMIT="2 per minute")
    client = create_app(config).test_client()
    statuses = [client.get("/api/attributes").status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    samples = scrape(client)
    assert value(samples, "faceapp_rate_limited_requests_total", endpoint="api.attributes") == 2
    assert (
        value(
            samples,
            "faceapp_http_requests_total",
            endpoint="api.attributes",
            method="GET",
            status="429",
        )
        == 2
    )


def test_evictions_and_store_size(config, astronaut_jpeg, coffee_jpeg):
    config.update(METRICS_ENABLED=True, STORE_MAX_BYTES=1)  # every image is over the limit
    client = create_app(config).test_client()
    for data in (astronaut_jpeg, coffee_jpeg):
        body = {"image_base64": base64.b64encode(data).decode()}
        assert client.post("/api/validate", json=body).status_code == 200
    samples = scrape(client)
    # The first store evicts at once; the second comes within the eviction interval.
    assert value(samples, "faceapp_store_evictions_total") == 1
    assert value(samples, "faceapp_store_images") == 1
