"""Jobs end to end: real gunicorn, a real redis-server (append-only, so it can be restarted) and
two real Celery worker processes (`flask --app wsgi worker`), fed by a local photo site.

The tests share one set of servers and run in file order; the last one SIGKILLs a worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import time
import zipfile
from contextlib import ExitStack

import pytest
import requests

from tests.servers import (
    app_env,
    celery_worker,
    gunicorn,
    photo_site,
    redis_server,
    wait_until,
    wait_worker_ready,
)

KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"Authorization": "Bearer key-b"}
SLOW_S = 0.4  # seconds the photo site takes per slow/ photo
CHUNK, WINDOW = 4, 2


class Cluster:
    """The servers of this module, and a way to restart its Redis."""

    def __init__(self, tmp, files):
        self.tmp = tmp
        self.files = files
        self.stack = ExitStack()
        self.redis_stack = ExitStack()
        self.redis_dir = str(tmp / "redis")
        os.makedirs(self.redis_dir)

    def start(self, tiny_model_dir):
        self.redis_url = self.redis_stack.enter_context(
            redis_server(self.redis_dir, appendonly=True)
        )
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.site = self.stack.enter_context(photo_site(self.files, slow=SLOW_S))
        env = app_env(
            str(self.tmp / "instance"),
            tiny_model_dir,
            STORE_URL=self.redis_url,
            DETECTOR="haar",
            TORCH_THREADS="1",
            URL_ALLOW_PRIVATE_NETWORKS="true",
            API_KEYS="key-a,key-b",
            ADMIN_KEYS="admin-key",
            RATELIMIT_ENABLED="false",
            JOBS_VISIBILITY_TIMEOUT="4",
            JOBS_CHUNK_SIZE=str(CHUNK),
            JOBS_WINDOW=str(WINDOW),
            TESTER_ENABLED="true",
            SECRET_KEY="jobs-test-secret-key-not-for-production",
        )
        self.logs = {name: str(self.tmp / f"{name}.log") for name in ("a", "b", "gunicorn")}
        self.worker_a = self.stack.enter_context(celery_worker(env, self.logs["a"], wait=False))
        self.worker_b = self.stack.enter_context(celery_worker(env, self.logs["b"], wait=False))
        self.base, self.gunicorn = self.stack.enter_context(
            gunicorn(env, workers=1, log_path=self.logs["gunicorn"])
        )
        wait_worker_ready(self.worker_a, self.logs["a"])
        wait_worker_ready(self.worker_b, self.logs["b"])

    def restart_redis(self):
        self.redis_stack.close()
        self.redis_stack = ExitStack()
        self.redis_stack.enter_context(
            redis_server(self.redis_dir, port=self.redis_port, appendonly=True)
        )

    def close(self):
        self.stack.close()
        self.redis_stack.close()


@pytest.fixture(scope="module")
def photos(astronaut_jpeg, coffee_jpeg):
    from PIL import Image
    from skimage import data

    camera = io.BytesIO()
    Image.fromarray(data.camera()).save(camera, "PNG")
    return {
        "astronaut.jpg": astronaut_jpeg,
        "coffee.jpg": coffee_jpeg,
        "camera.png": camera.getvalue(),
        "notes.jpg": b"these are not the pixels you are looking for",
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_dir, photos):
    cluster = Cluster(tmp_path_factory.mktemp("jobs-cluster"), photos)
    try:
        cluster.start(tiny_model_dir)
        yield cluster
    finally:
        cluster.close()


def submit(cluster, body, headers=KEY_A) -> dict:
    answer = requests.post(f"{cluster.base}/api/jobs", json=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"].endswith(f"/api/jobs/{answer.json()['job_id']}")
    return answer.json()


def status(cluster, job_id, headers=KEY_A) -> dict:
    answer = requests.get(f"{cluster.base}/api/jobs/{job_id}", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_state(cluster, job_id, states=("succeeded",), timeout=90.0, headers=KEY_A) -> dict:
    found = {}

    def ended() -> bool:
        try:
            found.update(status(cluster, job_id, headers))
        except (requests.RequestException, AssertionError):
            return False  # Redis restarting: ask again
        return found["state"] in states or found["state"] in ("failed", "cancelled")

    wait_until(ended, timeout, f"job {job_id} ending")
    assert found["state"] in states, found
    return found


def wait_done(cluster, job_id, at_least: int) -> None:
    wait_until(lambda: status(cluster, job_id)["done"] >= at_least, 60, f"{at_least} items done")


def lines_of(cluster, job_id, after=None, headers=KEY_A) -> list[dict]:
    query = "" if after is None else f"?after={after}"
    answer = requests.get(
        f"{cluster.base}/api/jobs/{job_id}/results{query}", headers=headers, timeout=30
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.text.splitlines()]


def assert_each_index_once(lines, total):
    assert [line["index"] for line in lines] == list(range(total))


def slow_items(cluster, count):
    return [{"image_url": f"{cluster.site}/slow/astronaut.jpg"} for _ in range(count)]


# -- the tests, in order ----------------------------------------------------------------------


def test_a_job_of_real_photos_by_url_answers_each_item_once(cluster, photos):
    names = ["astronaut.jpg", "coffee.jpg", "camera.png", "notes.jpg", "missing.jpg"] * 2
    job = submit(cluster, {"items": [{"image_url": f"{cluster.site}/{n}"} for n in names]})
    assert job["state"] == "queued" and job["total"] == 10
    finished = wait_state(cluster, job["job_id"])
    assert finished["done"] == 10 and finished["failed"] == 4
    assert finished["started_at"] and finished["finished_at"] and finished["eta_seconds"] == 0
    lines = lines_of(cluster, job["job_id"])
    assert_each_index_once(lines, 10)
    for name, line in zip(names, lines, strict=True):
        assert line["source"] == f"{cluster.site}/{name}"
        if name in photos and name != "notes.jpg":
            assert line["image_id"] == hashlib.sha256(photos[name]).hexdigest()
            assert set(line) == {
                "index", "source", "image_id", "valid", "errors", "warnings", "faces",
                "face_count", "model"
            }  # fmt: skip
    assert lines[0]["valid"] is True and lines[0]["faces"][0]["attributes"]
    assert lines[1]["valid"] is False and lines[1]["errors"][0]["code"] == "face.none"
    assert lines[3]["error"]["code"] == "url.not_image"
    assert lines[4]["error"]["code"] == "url.bad_status"
    assert [line["index"] for line in lines_of(cluster, job["job_id"], after=6)] == [7, 8, 9]
    listed = requests.get(f"{cluster.base}/api/jobs", headers=KEY_A, timeout=10).json()["jobs"]
    assert listed[0]["job_id"] == job["job_id"]
    other = requests.get(f"{cluster.base}/api/jobs/{job['job_id']}", headers=KEY_B, timeout=10)
    assert other.status_code == 404 and other.json()["error"]["code"] == "job.not_found"


def test_a_zip_job_answers_bad_entries_with_their_own_errors(cluster, photos):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("people/astronaut.jpg", photos["astronaut.jpg"])
        archive.writestr("../../etc/cron.d/evil.jpg", photos["astronaut.jpg"])
        archive.writestr("readme.txt", b"hello")
    answer = requests.post(
        f"{cluster.base}/api/jobs",
        files={"archive": ("photos.zip", buffer.getvalue(), "application/zip")},
        headers=KEY_A,
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    wait_state(cluster, job_id)
    lines = lines_of(cluster, job_id)
    assert_each_index_once(lines, 3)
    assert lines[0]["source"] == "people/astronaut.jpg" and lines[0]["valid"] is True
    assert lines[1]["error"]["code"] == "archive.bad_name"
    assert lines[2]["error"]["code"] == "image.unsupported_format"
    assert not os.path.exists("/etc/cron.d/evil.jpg")


def test_the_jobs_page_in_chromium(cluster, browser, tmp_path):
    import csv

    from tests.browser import VIEWPORT, collect_console_errors

    names = ["astronaut.jpg", "coffee.jpg", "missing.jpg"]
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    console_errors = collect_console_errors(page)  # script errors, CSP violations
    try:
        page.goto(f"{cluster.base}/app/jobs")
        page.wait_for_url(re.compile(r"/app/login"))  # keys apply as on the other pages
        page.fill("#key", "key-a")
        page.click("#login-button")
        page.wait_for_url(re.compile(r"/app/jobs$"))
        page.fill("#urls", "\n".join(f"{cluster.site}/{name}" for name in names))
        page.fill("#labels", "a person wearing a hat")
        page.click("#start-job")  # a CSRF-checked form
        page.wait_for_url(re.compile(r"/app/jobs/[0-9a-f]{32}$"))
        # The page refreshes itself until the job has ended.
        page.wait_for_selector("#job-state:text('succeeded')", timeout=60_000)
        assert page.inner_text("#job-counts").startswith("3 of 3 done · 1 failed")
        assert page.locator("#job-progress").get_attribute("value") == "3"
        rows = page.locator("#job-results tbody tr")
        assert rows.count() == 3
        assert "url.bad_status" in rows.nth(2).inner_text()
        page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
        with page.expect_download() as download:
            page.click("#download-csv")
        with open(download.value.path(), newline="", encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        assert [row["source"] for row in table] == [f"{cluster.site}/{n}" for n in names]
        assert table[0]["valid"] == "true" and table[2]["error_code"] == "url.bad_status"
        page.locator("#job-results a.image-link").first.click()
        page.wait_for_url(re.compile(r"/app/images/[0-9a-f]{64}$"))
        assert page.locator("#trace").count() == 1
        assert console_errors == []
    finally:
        context.close()


def _process_tree(pid: int) -> list[int]:
    """`pid` and its children (a Celery worker's pool, gunicorn's workers)."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
        return [pid, *(int(child) for child in fh.read().split())]


def test_the_jobs_workers_run_below_the_services_cpu_priority(cluster):
    """JOBS_WORKER_NICE (10 by default): every process of a worker, pool included, runs 10
    steps nicer than it was started (at most 19), so on a shared host interactive requests get
    the cores first; gunicorn's processes keep the priority they were started with."""
    started_at = os.getpriority(os.PRIO_PROCESS, 0)  # the servers inherit this test's niceness
    worker = _process_tree(cluster.worker_b.pid)
    assert len(worker) >= 2  # the main process and its pool
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in worker} == {min(19, started_at + 10)}
    service = _process_tree(cluster.gunicorn.pid)
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in service} == {started_at}


def test_a_niceness_outside_0_to_19_stops_the_worker_with_one_line():
    import click

    from faceapp.jobs.worker import lower_priority

    for bad in (-1, 20):
        with pytest.raises(click.ClickException, match="JOBS_WORKER_NICE: .* between 0 and 19"):
            lower_priority(bad)
    assert lower_priority(0) == os.getpriority(os.PRIO_PROCESS, 0)  # 0: left as started


def test_chunks_of_different_keys_interleave(cluster):
    big = submit(cluster, {"items": slow_items(cluster, 40)})
    small = submit(cluster, {"items": slow_items(cluster, 2)}, headers=KEY_B)
    wait_state(cluster, small["job_id"], timeout=60, headers=KEY_B)
    # Only WINDOW chunks of the big job were ever queued ahead of the small one's.
    big_now = status(cluster, big["job_id"])
    assert big_now["state"] == "running" and big_now["done"] <= 20, big_now
    requests.delete(f"{cluster.base}/api/jobs/{big['job_id']}", headers=KEY_A, timeout=10)


def test_cancel_mid_job_stops_it(cluster):
    job = submit(cluster, {"items": slow_items(cluster, 40)})
    wait_done(cluster, job["job_id"], 2)
    answer = requests.delete(f"{cluster.base}/api/jobs/{job['job_id']}", headers=KEY_A, timeout=10)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    at_cancel = answer.json()["done"]
    time.sleep(3 * SLOW_S + 1)  # what was in flight has finished by now
    after = status(cluster, job["job_id"])
    assert after["state"] == "cancelled"
    in_flight = 2 * CHUNK  # two worker processes, a chunk each
    assert after["done"] <= at_cancel + in_flight < 40
    time.sleep(2 * SLOW_S)
    assert status(cluster, job["job_id"])["done"] == after["done"]  # nothing more runs
    again = requests.delete(f"{cluster.base}/api/jobs/{job['job_id']}", headers=KEY_A, timeout=10)
    assert again.status_code == 200


def test_a_chunk_taken_off_the_queue_by_a_worker_that_died_comes_back(cluster):
    """What a worker SIGKILLed between taking a chunk (BRPOP) and recording it as handed out
    leaves: the chunk in no queue and not unacked. The workers' sweeper queues it again."""
    import redis

    from faceapp.jobs.sweeper import task_chunk

    made = [(submit(cluster, {"items": slow_items(cluster, 16)}, h), h) for h in (KEY_A, KEY_B)]
    ours = {job["job_id"] for job, _ in made}
    client = redis.Redis.from_url(cluster.redis_url)
    queue = "faceapp:celery:faceapp.jobs"

    def take_one_of_ours() -> bool:
        message = client.rpop(queue)
        if message is not None and task_chunk(message).split(":")[0] not in ours:
            client.rpush(queue, message)  # an older job's: put it back where it was
            return False
        return message is not None

    wait_until(take_one_of_ours, 30, "a chunk of these jobs waiting in the queue")
    for job, headers in made:
        finished = wait_state(cluster, job["job_id"], timeout=120, headers=headers)
        assert finished["done"] == 16 and finished["failed"] == 0
        assert_each_index_once(lines_of(cluster, job["job_id"], headers=headers), 16)
    client.close()


def test_a_redis_restart_mid_job_is_waited_out(cluster):
    job = submit(cluster, {"items": slow_items(cluster, 24)})
    wait_done(cluster, job["job_id"], 2)
    cluster.restart_redis()
    finished = wait_state(cluster, job["job_id"], timeout=120)
    assert finished["done"] == 24 and finished["failed"] == 0
    assert_each_index_once(lines_of(cluster, job["job_id"]), 24)


def test_a_sigkilled_worker_loses_no_item(cluster):
    """Killed mid-chunk, its chunk comes back after the visibility timeout; killed just after
    it took the next chunk off the queue (before the broker recorded it as handed out), the
    sweeper brings that one back (test_jobs.py has that case without timing luck)."""
    job = submit(cluster, {"items": slow_items(cluster, 24)})
    wait_done(cluster, job["job_id"], 2)
    os.killpg(cluster.worker_a.pid, signal.SIGKILL)  # the whole worker: parent and pool
    cluster.worker_a.wait(timeout=10)
    finished = wait_state(cluster, job["job_id"], timeout=120)
    assert finished["done"] == 24 and finished["failed"] == 0
    lines = lines_of(cluster, job["job_id"])
    assert_each_index_once(lines, 24)
    assert all(line["valid"] for line in lines)
