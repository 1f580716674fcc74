"""POST/GET/DELETE /api/jobs against a real redis-server, with no worker listening: what the API
decides by itself (checks, keys, client_token, limits, archives, no broker). Jobs that run on
real Celery workers: tests/test_jobs_workers.py."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import redis

from faceapp import create_app
from faceapp.jobs.archive import read_archive
from tests.conftest import ADMIN
from tests.servers import free_port

KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"Authorization": "Bearer key-b"}
URL = "http://images.example/photo.jpg"


@pytest.fixture
def broker(redis_url):
    """Database 1 of the session's redis-server, emptied: a queue no worker reads."""
    url = redis_url.rsplit("/", 1)[0] + "/1"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def jobs_app(config, broker):
    config.update(
        BROKER_URL=broker,
        API_KEYS="key-a,key-b",
        RATELIMIT_ENABLED=False,
        MAX_ACTIVE_JOBS=2,
        MAX_JOB_ITEMS=50,
        JOBS_CHUNK_SIZE=4,
        JOBS_WINDOW=2,
        MAX_ARCHIVE_BYTES=5_000_000,
    )
    return create_app(config)


@pytest.fixture
def api(jobs_app):
    return jobs_app.test_client()


def post(api, body, headers=KEY_A):
    return api.post("/api/jobs", json=body, headers=headers)


def queued_messages(broker) -> int:
    return redis.Redis.from_url(broker).llen("faceapp:celery:faceapp.jobs")


def test_a_job_is_made_at_once_and_only_its_first_chunks_are_queued(api, broker):
    answer = post(api, {"items": [{"image_url": URL}] * 10, "labels": ["a hat"]})
    assert answer.status_code == 202
    job = answer.get_json()
    assert answer.headers["Location"] == f"/api/jobs/{job['job_id']}"
    assert job["state"] == "queued" and job["total"] == 10 and job["done"] == 0
    assert job["options"]["labels"] == ["a hat"] and job["kind"] == "items"
    # 10 items in chunks of 4 are 3 chunks; a window of 2 queues two, the rest as they finish.
    assert queued_messages(broker) == 2
    again = api.get(job["results"].replace("/results", ""), headers=KEY_A).get_json()
    assert again["job_id"] == job["job_id"] and again["state"] == "queued"
    lines = api.get(job["results"], headers=KEY_A)
    assert lines.status_code == 200 and lines.mimetype == "application/x-ndjson"
    assert lines.data == b"" and lines.headers["X-Job-State"] == "queued"


def test_a_malformed_item_is_refused_with_its_index_and_nothing_is_queued(api, broker):
    bad = [{"image_url": URL}, {"image_url": URL}, {"image_url": "ftp://x/y.jpg"}]
    answer = post(api, {"items": bad})
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "input.invalid" and error["field"] == "items[2]"
    assert "items[2]" in error["message"]
    for items in ([{"image_id": "nope"}], [{"image_url": URL, "image_id": "a" * 64}], ["x"], []):
        assert post(api, {"items": items}).status_code == 400
    assert post(api, {"items": [{"image_url": URL}], "max_faces": 0}).status_code == 400
    over = post(api, {"items": [{"image_url": URL}], "max_faces": 21})  # MAX_FACES_LIMIT: 20
    assert over.status_code == 400 and over.get_json()["error"]["field"] == "max_faces"
    unknown = post(api, {"items": [{"image_url": URL}], "attributes": ["shoe_size"]})
    assert unknown.status_code == 400
    too_many = post(api, {"items": [{"image_url": URL}] * 51})
    assert too_many.status_code == 413
    assert too_many.get_json()["error"]["code"] == "jobs.too_many_items"
    assert post(api, {"labels": ["x"]}).get_json()["error"]["code"] == "input.missing"
    assert queued_messages(broker) == 0
    assert api.get("/api/jobs", headers=KEY_A).get_json() == {"jobs": []}


def test_client_token_returns_the_same_job_for_the_same_key_only(api):
    body = {"items": [{"image_url": URL}], "client_token": "upload-7"}
    first = post(api, body)
    second = post(api, body)
    assert first.status_code == 202 and second.status_code == 200
    assert second.get_json()["job_id"] == first.get_json()["job_id"]
    other_key = post(api, body, headers=KEY_B)
    assert other_key.status_code == 202
    assert other_key.get_json()["job_id"] != first.get_json()["job_id"]
    assert len(api.get("/api/jobs", headers=KEY_A).get_json()["jobs"]) == 1


def test_another_keys_job_is_not_found_and_an_admin_sees_all(api):
    job_id = post(api, {"items": [{"image_url": URL}]}).get_json()["job_id"]
    for method in (api.get, api.delete):
        answer = method(f"/api/jobs/{job_id}", headers=KEY_B)
        assert answer.status_code == 404
        assert answer.get_json()["error"]["code"] == "job.not_found"
    assert api.get(f"/api/jobs/{job_id}/results", headers=KEY_B).status_code == 404
    assert api.get(f"/api/jobs/{job_id}", headers=ADMIN).status_code == 200
    assert [j["job_id"] for j in api.get("/api/jobs", headers=ADMIN).get_json()["jobs"]] == [job_id]
    assert api.get("/api/jobs", headers=KEY_B).get_json() == {"jobs": []}
    assert api.get("/api/jobs/../etc", headers=KEY_A).status_code == 404
    assert api.get("/api/jobs", headers={}).status_code == 401


def test_cancel_and_the_active_jobs_limit(api):
    first = post(api, {"items": [{"image_url": URL}]}).get_json()["job_id"]
    post(api, {"items": [{"image_url": URL}]})
    refused = post(api, {"items": [{"image_url": URL}]})
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "jobs.too_many_active"
    cancelled = api.delete(f"/api/jobs/{first}", headers=KEY_A)
    assert cancelled.status_code == 200
    job = cancelled.get_json()
    assert job["state"] == "cancelled" and job["finished_at"] and job["done"] == 0
    assert api.delete(f"/api/jobs/{first}", headers=KEY_A).status_code == 200  # idempotent
    assert post(api, {"items": [{"image_url": URL}]}).status_code == 202  # room again


def test_results_after_must_be_an_index(api):
    job_id = post(api, {"items": [{"image_url": URL}]}).get_json()["job_id"]
    for after in ("x", "-2", "1.5"):
        answer = api.get(f"/api/jobs/{job_id}/results?after={after}", headers=KEY_A)
        assert answer.status_code == 400 and answer.get_json()["error"]["field"] == "after"


# -- archives -------------------------------------------------------------------------------------


def zip_of(entries: dict[str, bytes], method=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_an_archive_gives_one_item_per_entry_and_an_error_for_each_bad_one(
    astronaut_jpeg, coffee_jpeg
):
    nested = zip_of({"inner.jpg": astronaut_jpeg})
    data = zip_of(
        {
            "photos/astronaut.jpg": astronaut_jpeg,
            "photos/": b"",
            "../escape.jpg": astronaut_jpeg,
            "/etc/abs.jpg": coffee_jpeg,
            "a\\b.jpg": coffee_jpeg,
            "nested.zip": nested,
            "notes.txt": b"not an image",
            "empty.jpg": b"",
            "coffee.jpg": coffee_jpeg,
        }
    )
    config = {"MAX_ARCHIVE_BYTES": 10_000_000, "MAX_JOB_ITEMS": 100, "MAX_UPLOAD_BYTES": 10**7}
    items, blobs = read_archive(io.BytesIO(data), config)
    by_name = {item.get("archive") or item["source"]: item for item in items}
    assert len(items) == 8  # the folder entry is skipped
    assert by_name["photos/astronaut.jpg"] == {"archive": "photos/astronaut.jpg"}
    codes = {name: item["error"]["code"] for name, item in by_name.items() if "error" in item}
    assert codes == {
        "../escape.jpg": "archive.bad_name",
        "/etc/abs.jpg": "archive.bad_name",
        "a\\b.jpg": "archive.bad_name",
        "nested.zip": "archive.nested",
        "empty.jpg": "image.empty",
    }
    # Entries taken are kept by index; "notes.txt" is the decoder's to refuse, in a worker.
    taken = [i for i, item in enumerate(items) if "archive" in item]
    assert sorted(blobs) == taken and blobs[taken[0]] == astronaut_jpeg


def test_a_zip_bomb_is_refused_before_anything_is_decompressed(api, broker):
    zeros = b"\0" * 4_000_000  # each entry within MAX_UPLOAD_BYTES, together over the limit
    bomb = zip_of({f"{n}.jpg": zeros for n in range(8)}, method=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 100_000
    answer = api.post(
        "/api/jobs",
        data={"archive": (io.BytesIO(bomb), "bomb.zip")},
        headers=KEY_A,
        content_type="multipart/form-data",
    )
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] == "archive.too_large"
    not_zip = api.post(
        "/api/jobs",
        data={"archive": (io.BytesIO(b"plain text"), "x.zip")},
        headers=KEY_A,
        content_type="multipart/form-data",
    )
    assert not_zip.status_code == 400
    assert not_zip.get_json()["error"]["code"] == "archive.invalid"
    assert queued_messages(broker) == 0


def test_an_archive_job_is_made_from_a_multipart_form(api, astronaut_jpeg):
    data = zip_of({"a.jpg": astronaut_jpeg, "../b.jpg": astronaut_jpeg})
    answer = api.post(
        "/api/jobs",
        data={"archive": (io.BytesIO(data), "photos.zip"), "labels": "a hat, a scarf"},
        headers=KEY_A,
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202
    job = answer.get_json()
    assert job["kind"] == "archive" and job["total"] == 2
    assert job["options"]["labels"] == ["a hat", "a scarf"]


# -- no broker ------------------------------------------------------------------------------------


def test_without_redis_jobs_answer_503_saying_how_to_enable_them(client):
    answer = client.post("/api/jobs", json={"items": [{"image_url": URL}]})
    assert answer.status_code == 503
    error = answer.get_json()["error"]
    assert error["code"] == "jobs.unavailable" and "STORE_URL=redis://" in error["message"]
    assert client.get("/api/jobs").status_code == 503


def test_a_broker_that_does_not_answer_is_a_clear_503(config):
    config.update(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(config)
    answer = app.test_client().post("/api/jobs", json={"items": [{"image_url": URL}]})
    assert answer.status_code == 503
    error = answer.get_json()["error"]
    assert error["code"] == "jobs.unavailable" and "Redis does not answer" in error["message"]


def test_metrics_show_jobs_by_state_and_the_queue(config, broker):
    config.update(BROKER_URL=broker, METRICS_ENABLED=True, JOBS_CHUNK_SIZE=1, JOBS_WINDOW=3)
    client = create_app(config).test_client()
    made = client.post("/api/jobs", json={"items": [{"image_url": URL}] * 5})
    assert made.status_code == 202
    text = client.get("/metrics", headers=ADMIN).get_data(as_text=True)
    assert 'faceapp_jobs{state="queued"} 1.0' in text
    assert "faceapp_jobs_queue_depth 3.0" in text  # the window: 3 of the 5 one-item chunks
    assert 'faceapp_jobs_items_total{outcome="done"} 0.0' in text
    assert "faceapp_jobs_up 1.0" in text


def test_a_job_whose_items_were_lost_fails_clearly(jobs_app, api, broker):
    from faceapp.jobs import runner

    job_id = post(api, {"items": [{"image_url": URL}]}).get_json()["job_id"]
    redis.Redis.from_url(broker).delete(f"faceapp:jobs:job:{job_id}:items")  # Redis lost them
    with jobs_app.app_context():
        assert runner.run_chunk(job_id, 0, lambda *chunk: None) == "failed"
    job = api.get(f"/api/jobs/{job_id}", headers=KEY_A).get_json()
    assert job["state"] == "failed" and job["error"]["code"] == "jobs.unavailable"
    assert job["finished_at"] is not None


def test_a_chunk_run_twice_answers_each_item_once(jobs_app, api, astronaut_jpeg):
    from faceapp.jobs import runner

    image_id = api.post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}, headers=KEY_A
    ).get_json()["image_id"]
    items = [{"image_id": image_id}] * 4 + [{"image_id": "0" * 64}]
    job_id = post(api, {"items": items}).get_json()["job_id"]
    queued = []
    with jobs_app.app_context():
        # Chunk 0 (items 0-3) delivered twice, as after a lost worker: the second run finds
        # every item answered and queues nothing more (both chunks were queued at creation).
        assert runner.run_chunk(job_id, 0, lambda *chunk: queued.append(chunk)) == "done"
        assert runner.run_chunk(job_id, 0, lambda *chunk: queued.append(chunk)) == "done"
        running = api.get(f"/api/jobs/{job_id}", headers=KEY_A).get_json()
        assert running["state"] == "running" and running["done"] == 4
        assert runner.run_chunk(job_id, 1, lambda *chunk: queued.append(chunk)) == "done"
        assert runner.run_chunk(job_id, 1, lambda *chunk: queued.append(chunk)) == "succeeded"
    assert queued == []
    job = api.get(f"/api/jobs/{job_id}", headers=KEY_A).get_json()
    assert job["state"] == "succeeded" and job["done"] == 5 and job["failed"] == 1
    lines = [json.loads(line) for line in api.get(job["results"], headers=KEY_A).data.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["image_id"] == image_id and lines[0]["faces"][0]["attributes"]
    assert lines[4]["error"]["code"] == "image_id.not_found"


# -- the owner's window, chunks lost in transit, chunks that give up ------------------------------

QUEUE_KEY = "faceapp:celery:faceapp.jobs"
MISSING = [{"image_id": "0" * 64}]  # answered at once (image_id.not_found), no model needed


def broker_keys():
    from faceapp.jobs.celery_app import QUEUE_KEYS, UNACKED_KEY
    from faceapp.jobs.sweeper import BrokerKeys

    return BrokerKeys(queues=QUEUE_KEYS, unacked=UNACKED_KEY)


def queued_chunks(broker) -> list[tuple[str, int]]:
    """The chunks in the broker's queue, the next to be taken first (kombu takes from the right)."""
    from faceapp.jobs.sweeper import task_chunk

    raw = redis.Redis.from_url(broker).lrange(QUEUE_KEY, 0, -1)
    return [tuple(task_chunk(message).split(":")) for message in reversed(raw)]


def age_in_flight(broker) -> None:
    """Every chunk in flight looks queued long ago (older than any visibility timeout)."""
    client = redis.Redis.from_url(broker)
    for owner in client.smembers("faceapp:jobs:inflight_owners"):
        key = b"faceapp:jobs:inflight:" + owner
        client.zadd(key, {member: 0 for member in client.zrange(key, 0, -1)})


def test_a_keys_jobs_share_one_window_so_another_key_finishes_first(config, broker):
    """Key A's three jobs and key B's one, taken one chunk at a time in the broker's order (as a
    single worker does): B's job ends before all but A's first, whose chunks were queued first.
    With a window per job, A's six chunks were all queued ahead of B's and B finished last."""
    from faceapp.jobs import runner
    from faceapp.jobs.tasks import queue_chunk

    config.update(
        BROKER_URL=broker, API_KEYS="key-a,key-b", RATELIMIT_ENABLED=False,
        MAX_ACTIVE_JOBS=3, JOBS_CHUNK_SIZE=4, JOBS_WINDOW=2,
    )  # fmt: skip
    app = create_app(config)
    api = app.test_client()
    names = {}
    for name in ("a1", "a2", "a3"):
        names[post(api, {"items": MISSING * 8}).get_json()["job_id"]] = name
    names[post(api, {"items": MISSING * 8}, headers=KEY_B).get_json()["job_id"]] = "b"
    assert [names[job] for job, _ in queued_chunks(broker)] == ["a1", "a1", "b", "b"]
    finished = []
    with app.app_context():
        while chunks := queued_chunks(broker):
            job_id, chunk = chunks[0]
            redis.Redis.from_url(broker).rpop(QUEUE_KEY)
            runner.run_chunk(job_id, int(chunk), queue_chunk)
            for job, name in names.items():
                state = api.get(f"/api/jobs/{job}", headers=ADMIN).get_json()["state"]
                if state == "succeeded" and name not in finished:
                    finished.append(name)
    assert finished == ["a1", "b", "a2", "a3"]


def test_a_chunk_lost_in_transit_is_queued_again_by_the_sweeper(jobs_app, api, broker):
    """A worker took a chunk off the queue and died before the broker recorded it as handed out
    (kombu's BRPOP, then HSET unacked): only the sweeper brings it back."""
    from faceapp.jobs.sweeper import sweep

    job_id = post(api, {"items": MISSING * 10}).get_json()["job_id"]
    client = redis.Redis.from_url(broker)
    assert queued_chunks(broker) == [(job_id, "0"), (job_id, "1")]
    client.rpop(QUEUE_KEY)  # chunk 0, taken by a worker that was then SIGKILLed
    assert sweep(jobs_app, broker_keys()) == 0  # not in flight for long yet
    age_in_flight(broker)
    assert sweep(jobs_app, broker_keys()) == 1
    assert sorted(queued_chunks(broker)) == [(job_id, "0"), (job_id, "1")]
    # Handed to a worker and recorded as such (the unacked hash): held, not queued again.
    message = client.rpop(QUEUE_KEY)
    client.hset("faceapp:celery:unacked", "tag-1", b'[%s, "", "faceapp.jobs"]' % message)
    age_in_flight(broker)
    assert sweep(jobs_app, broker_keys()) == 0
    assert len(queued_chunks(broker)) == 1


def test_a_lost_chunk_of_an_ended_job_hands_its_place_to_the_keys_next_job(jobs_app, api, broker):
    from faceapp.jobs.sweeper import sweep

    first = post(api, {"items": MISSING * 8}).get_json()["job_id"]  # the key's whole window
    second = post(api, {"items": MISSING * 8}).get_json()["job_id"]
    assert queued_chunks(broker) == [(first, "0"), (first, "1")]
    redis.Redis.from_url(broker).delete(QUEUE_KEY)  # both lost in transit
    assert api.delete(f"/api/jobs/{first}", headers=KEY_A).status_code == 200
    age_in_flight(broker)
    assert sweep(jobs_app, broker_keys()) == 2
    assert queued_chunks(broker) == [(second, "0"), (second, "1")]


def test_metrics_count_the_chunks_the_sweeper_recovers(config, broker):
    """One lost chunk of a running job queued again, two of a cancelled job released: the
    counter says so (it is kept in Redis, as the sweeper runs in the Celery workers)."""
    from faceapp.jobs.sweeper import sweep

    config.update(
        BROKER_URL=broker, API_KEYS="key-a", ADMIN_KEYS="admin-key", METRICS_ENABLED=True,
        RATELIMIT_ENABLED=False, JOBS_CHUNK_SIZE=4, JOBS_WINDOW=2,
    )  # fmt: skip
    app = create_app(config)
    api = app.test_client()

    def recovered() -> list[str]:
        text = api.get("/metrics", headers=ADMIN).get_data(as_text=True)
        return [line for line in text.splitlines() if line.startswith("faceapp_jobs_chunks_rec")]

    assert recovered() == [
        'faceapp_jobs_chunks_recovered_total{outcome="requeued"} 0.0',
        'faceapp_jobs_chunks_recovered_total{outcome="released"} 0.0',
    ]
    running = post(api, {"items": MISSING * 8}).get_json()["job_id"]
    redis.Redis.from_url(broker).rpop(QUEUE_KEY)  # chunk 0, lost in transit
    age_in_flight(broker)
    assert sweep(app, broker_keys()) == 1
    assert sweep(app, broker_keys()) == 0  # queued again: not counted twice
    redis.Redis.from_url(broker).delete(QUEUE_KEY)  # both chunks lost this time
    assert api.delete(f"/api/jobs/{running}", headers=KEY_A).status_code == 200
    age_in_flight(broker)
    assert sweep(app, broker_keys()) == 0  # the key has no other job to hand the places to
    assert recovered() == [
        'faceapp_jobs_chunks_recovered_total{outcome="requeued"} 1.0',
        'faceapp_jobs_chunks_recovered_total{outcome="released"} 2.0',
    ]


def test_a_chunk_whose_model_never_loads_gives_up_after_the_attempts(config, broker, monkeypatch):
    from faceapp.jobs import item, runner

    config.update(
        BROKER_URL=broker, API_KEYS="key-a", JOBS_CHUNK_SIZE=4, JOBS_MAX_ATTEMPTS=3,
        RATELIMIT_ENABLED=False,
    )  # fmt: skip
    app = create_app(config)
    api = app.test_client()
    not_ready = {"error": {"code": "model.not_ready", "message": "The model failed to load."}}
    monkeypatch.setattr(item, "process_item", lambda source, options: not_ready)
    monkeypatch.setattr(runner, "PATIENCE_S", 0.0)  # each try gives up at once
    job_id = post(api, {"items": MISSING * 3}).get_json()["job_id"]
    with app.app_context():
        for _ in range(2):
            with pytest.raises(runner.Retry):
                runner.run_chunk(job_id, 0, lambda *chunk: None)  # goes back to the queue
        assert runner.run_chunk(job_id, 0, lambda *chunk: None) == "failed"
    job = api.get(f"/api/jobs/{job_id}", headers=KEY_A).get_json()
    assert job["state"] == "failed" and job["done"] == 3 and job["failed"] == 3
    assert job["error"]["code"] == "model.unavailable" and "3 tries" in job["error"]["message"]
    lines = [json.loads(line) for line in api.get(job["results"], headers=KEY_A).data.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert {line["error"]["code"] for line in lines} == {"model.unavailable"}
