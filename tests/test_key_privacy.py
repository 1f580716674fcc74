"""Issue 22 item 5: one key's images, traces, labels and tester runs are not another key's.

The rule (docs/SECURITY.md, "What a key sees"): with API_KEYS set, a user key sees an image once
it has sent it, and then only its own trace events and tester runs; an image only other keys
sent answers as one never stored. A user key's wipe removes its own tester runs and nothing of
anyone else's. Admin keys see and wipe everything.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import redis

from faceapp import create_app
from tests.conftest import ADMIN

A = {"Authorization": "Bearer key-a"}
B = {"X-API-Key": "key-b"}


@pytest.fixture
def keyed(config):
    config["API_KEYS"] = "key-a,key-b"
    app = create_app(config)
    assert app.test_client().post("/api/setup", headers=ADMIN).status_code == 200
    return app


def send(client, data: bytes, headers: dict, name: str = "a-private-name.jpg", **fields):
    answer = client.post(
        "/api/analyze",
        headers=headers,
        data={"file": (io.BytesIO(data), name), **fields},
    )
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["image_id"]


def run_tester(client, image_id: str, headers: dict, labels: str) -> str:
    answer = client.post(f"/app/images/{image_id}", headers=headers, data={"labels": labels})
    assert answer.status_code == 303, answer.data[:300]
    return answer.headers["Location"]


def test_an_image_only_another_key_sent_answers_as_never_stored(keyed, astronaut_jpeg):
    client = keyed.test_client()
    image_id = send(client, astronaut_jpeg, A, labels="a secret label")
    never = hashlib.sha256(b"never sent").hexdigest()
    for path in (f"/api/images/{image_id}", f"/api/images/{image_id}/trace"):
        assert client.get(path, headers=A).status_code == 200
        theirs, unknown = (
            client.get(path, headers=B),
            client.get(path.replace(image_id, never), headers=B),
        )
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.get_json()["error"]["code"] == "image_id.not_found"
        assert theirs.get_json()["error"].keys() == unknown.get_json()["error"].keys()
    by_id = client.post("/api/analyze", headers=B, json={"image_id": image_id})
    assert by_id.status_code == 404 and by_id.get_json()["error"]["code"] == "image_id.not_found"
    page = f"/app/images/{image_id}"
    for path in (page, f"{page}/preview.jpg", f"{page}/thumbnail.jpg"):
        assert client.get(path, headers=A).status_code == 200
        answer = client.get(path, headers=B)
        assert answer.status_code == 404, path
        assert b"a-private-name" not in answer.data and b"a secret label" not in answer.data
    assert client.post(page, headers=B, data={"labels": "x"}).status_code == 404


def test_a_key_that_sends_the_same_photo_sees_only_its_own_events(keyed, astronaut_jpeg):
    client = keyed.test_client()
    image_id = send(client, astronaut_jpeg, A, labels="a secret label")
    send(client, astronaut_jpeg, B, name="bs-own-name.jpg")
    theirs = client.get(f"/api/images/{image_id}/trace", headers=B).get_json()["events"]
    text = json.dumps(theirs)
    assert "a-private-name" not in text and "a secret label" not in text
    assert "bs-own-name.jpg" in text
    assert {event["key_id"] for event in theirs} == {theirs[0]["key_id"]}
    page = client.get(f"/app/images/{image_id}", headers=B).get_data(as_text=True)
    assert "a-private-name" not in page and "a secret label" not in page
    assert "bs-own-name.jpg" in page
    everything = client.get(f"/api/images/{image_id}/trace", headers=ADMIN).get_json()["events"]
    assert len({event["key_id"] for event in everything}) == 2  # an admin sees both keys'
    assert "a secret label" in json.dumps(everything)


def test_one_keys_wipe_keeps_another_keys_runs_and_results(keyed, astronaut_jpeg):
    client = keyed.test_client()
    image_id = send(client, astronaut_jpeg, A)
    run = run_tester(client, image_id, A, "a secret label")
    send(client, astronaut_jpeg, B, wipe_cache="true")  # validate and analyze afresh
    wiped = client.post("/api/analyze", headers=B, json={"image_id": image_id, "wipe_cache": True})
    assert wiped.status_code == 200 and wiped.get_json()["cached"] is False
    run_tester(client, image_id, B, "b label")
    client.post(f"/app/images/{image_id}", headers=B, data={"wipe_cache": "1"})
    mine = client.get(run, headers=A)
    assert mine.status_code == 200 and "a secret label" in mine.get_data(as_text=True)
    cached = client.post("/api/analyze", headers=A, json={"image_id": image_id})
    assert cached.get_json()["cached"] is True  # B's fresh answer replaced it, not removed it
    # Another key cannot open A's run, even knowing its address.
    theirs = client.get(run, headers=B)
    assert theirs.status_code == 404 and "a secret label" not in theirs.get_data(as_text=True)
    # An admin sees it, and an admin's wipe drops every run and result of the image.
    assert client.get(run, headers=ADMIN).status_code == 200
    client.post("/api/analyze", headers=ADMIN, json={"image_id": image_id, "wipe_cache": True})
    assert client.get(run, headers=A).status_code == 404


@pytest.mark.parametrize("how", ["analyze", "validate"])
def test_a_keys_wipe_drops_its_own_earlier_runs(keyed, astronaut_jpeg, how):
    client = keyed.test_client()
    image_id = send(client, astronaut_jpeg, A)
    send(client, astronaut_jpeg, B)
    own = [run_tester(client, image_id, A, label) for label in ("first", "second")]
    theirs = run_tester(client, image_id, B, "b label")
    if how == "analyze":
        body = {"image_id": image_id, "wipe_cache": True}
        assert client.post("/api/analyze", headers=A, json=body).status_code == 200
    else:
        send_again = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg"), "wipe_cache": "true"}
        assert client.post("/api/validate", headers=A, data=send_again).status_code == 200
    for run in own:
        assert client.get(run, headers=A).status_code == 404
        assert client.get(run, headers=ADMIN).status_code == 404  # gone, not only hidden
    kept = client.get(theirs, headers=B)
    assert kept.status_code == 200 and "b label" in kept.get_data(as_text=True)


def test_without_api_keys_everyone_sees_and_wipes_everything(client, astronaut_jpeg):
    image_id = send(client, astronaut_jpeg, {})
    run = run_tester(client, image_id, {}, "a label")
    assert client.get(f"/api/images/{image_id}/trace").status_code == 200
    assert client.get(run).status_code == 200
    client.post("/api/analyze", json={"image_id": image_id, "wipe_cache": True})
    assert client.get(run).status_code == 404


@pytest.mark.parametrize("backend", ["file", pytest.param("redis", marks=pytest.mark.slow)])
def test_a_capped_trace_never_hides_an_image_from_the_key_that_sent_it(
    config, astronaut_jpeg, backend, request
):
    """TRACE_MAX_EVENTS 3: another key's events push every event of the first key out of the
    trace; the first key still sees the image (record, trace, recent uploads), also after the
    image was validated afresh under other rules (the store keeps its senders apart)."""
    config.update(API_KEYS="key-a,key-b", TRACE_MAX_EVENTS=3)
    if backend == "redis":
        url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/2"
        redis.Redis.from_url(url).flushdb()
        config["STORE_URL"] = url
    client = create_app(config).test_client()
    image_id = send(client, astronaut_jpeg, A)
    for _ in range(4):
        send(client, astronaut_jpeg, B)
    assert client.get(f"/api/images/{image_id}/trace", headers=A).get_json()["events"] == []
    assert client.get(f"/api/images/{image_id}", headers=A).status_code == 200
    assert image_id in client.get("/app", headers=A).get_data(as_text=True)
    strict = create_app(dict(config, MIN_FACE_PX=4000)).test_client()
    send(strict, astronaut_jpeg, B, force="true")  # validated afresh: stored again
    assert strict.get(f"/api/images/{image_id}", headers=A).status_code == 200
    never = hashlib.sha256(b"never sent").hexdigest()
    assert strict.get(f"/api/images/{never}", headers=A).status_code == 404
