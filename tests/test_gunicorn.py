"""faceapp under real gunicorn, as `make run` serves it: two workers sharing one store."""

from __future__ import annotations

import hashlib
import http.server
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests

from tests.servers import gunicorn, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path, tiny_model_dir):
    env = {
        "FACEAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "FACEAPP_MODEL_NAME": tiny_model_dir,
        "FACEAPP_MODEL_AUTO_PULL": "false",
        "FACEAPP_ADMIN_KEYS": "admin-key",
        "FACEAPP_TESTER_ENABLED": "true",
        # Sync workers take one connection at a time, so concurrent requests must spread.
        "WORKER_CLASS": "sync",
    }
    with gunicorn(env, workers=2, log_path=str(tmp_path / "gunicorn.log")) as (base, process):
        yield base, process


def test_two_workers_share_the_store_and_load_the_model_after_fork(served, astronaut_jpeg):
    base, process = served

    def post(_):
        # A new connection each time, so the requests spread over both workers.
        with requests.Session() as session:
            response = session.post(
                base + "/api/validate", files={"file": ("a.jpg", astronaut_jpeg)}, timeout=30
            )
        assert response.status_code == 200, response.text
        return response.json()["image_id"]

    # Each worker loads its model in the background after fork; both become ready.
    def both_ready() -> bool:
        pids = set()
        for _ in range(20):
            with requests.Session() as session:
                answer = session.get(base + "/api/ready", timeout=5)
            if answer.status_code != 200:
                return False
            pids.add(answer.json()["worker"]["pid"])
        return len(pids) == 2

    wait_until(both_ready, 60, "both workers ready")

    image_id = hashlib.sha256(astronaut_jpeg).hexdigest()
    assert post(0) == image_id  # stored (and validated) by one worker
    with ThreadPoolExecutor(4) as pool:
        for _ in range(6):
            assert set(pool.map(post, range(8))) == {image_id}
            events = requests.get(f"{base}/api/images/{image_id}/trace", timeout=10).json()[
                "events"
            ]
            if len({e["worker_pid"] for e in events}) > 1:
                break
    stored_by = [e["worker_pid"] for e in events if e["cached"] is False]
    read_by = {e["worker_pid"] for e in events if e["cached"] is True}
    assert len(stored_by) == 1 and read_by - set(stored_by), "no second worker read the image"
    assert process.pid not in read_by | set(stored_by)  # workers, never the master, serve


def test_behind_nginx_large_bodies_get_the_json_413(served, tmp_path, astronaut_jpeg):
    from tests.servers import nginx

    base, _ = served
    with nginx(base.removeprefix("http://"), str(tmp_path / "nginx")) as proxy:
        ok = requests.post(
            proxy + "/api/validate",
            files={"file": ("a.jpg", astronaut_jpeg)},
            headers={"X-Request-ID": "via-nginx"},
            timeout=30,
        )
        assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "via-nginx"
        assert requests.get(proxy + "/api/health", timeout=5).headers["X-Request-ID"]
        # Over MAX_UPLOAD_BYTES but under nginx's cap: faceapp answers.
        mid = requests.post(
            proxy + "/api/validate", files={"file": ("a.jpg", b"\xff" * 11_000_000)}, timeout=30
        )
        assert mid.status_code == 413 and mid.json()["error"]["code"] == "image.too_large"
        # Over nginx's client_max_body_size: nginx answers, in the same envelope.
        huge = requests.post(
            proxy + "/api/validate", files={"file": ("a.jpg", b"\xff" * 20_000_000)}, timeout=30
        )
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "image.too_large"
        # The tester's upload form: a page with the message, never raw JSON.
        page = requests.post(
            proxy + "/app", files={"file": ("a.jpg", b"\xff" * 20_000_000)}, timeout=30
        )
        assert page.status_code == 413 and page.headers["Content-Type"].startswith("text/html")
        assert "The upload is too large (the proxy in front refused it)" in page.text
        assert "image.too_large" in page.text and '{"error"' not in page.text
    assert requests.get(base + "/api/health", timeout=5).status_code == 200


def test_workers_recycled_or_killed_do_not_fail_requests(tmp_path, tiny_model_dir, astronaut_jpeg):
    import os
    import signal

    env = {
        "FACEAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "FACEAPP_MODEL_NAME": tiny_model_dir,
        "FACEAPP_MODEL_AUTO_PULL": "false",
        "MAX_REQUESTS": "5",  # each worker is recycled after about 5 requests (with jitter)
        "THREADS": "1",
    }
    with gunicorn(env, workers=2, log_path=str(tmp_path / "g.log")) as (base, process):
        statuses, pids = [], set()
        for index in range(40):
            with requests.Session() as session:
                answer = session.post(
                    base + "/api/validate", files={"file": ("a.jpg", astronaut_jpeg)}, timeout=30
                )
            statuses.append(answer.status_code)
            if index == 20:
                # Kill one worker outright between requests: the other keeps serving and the
                # master starts a replacement.
                children = _worker_pids(process.pid)
                os.kill(children[0], signal.SIGKILL)
        events = requests.get(
            base + f"/api/images/{answer.json()['image_id']}/trace", timeout=10
        ).json()["events"]
        pids = {e["worker_pid"] for e in events}
    assert statuses == [200] * 40
    assert len(pids) > 2, "workers were not recycled"


def _worker_pids(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children", encoding="utf-8") as fh:
        return [int(pid) for pid in fh.read().split()]


@contextmanager
def slow_image_server(image: bytes, pause: float = 2.0):
    """A local server that sends half of `image`, waits `pause` seconds, then the rest."""

    class SlowImage(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            half = len(image) // 2
            self.wfile.write(image[:half])
            self.wfile.flush()
            time.sleep(pause)  # the request is in flight when SIGTERM arrives
            self.wfile.write(image[half:])

        def log_message(self, *args):
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowImage)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{slow.server_address[1]}/slow.jpg"
    finally:
        slow.shutdown()
        slow.server_close()


def _one_worker_env(tmp_path, tiny_model_dir) -> dict:
    return {
        "FACEAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "FACEAPP_MODEL_NAME": tiny_model_dir,
        "FACEAPP_MODEL_AUTO_PULL": "false",
        "FACEAPP_URL_ALLOW_PRIVATE_NETWORKS": "true",
        "FACEAPP_RATELIMIT_ENABLED": "false",
    }


def test_sigterm_lets_in_flight_requests_finish(tmp_path, tiny_model_dir, astronaut_jpeg):
    """A request still running when gunicorn is told to stop gets its answer (graceful_timeout)."""
    with (
        slow_image_server(astronaut_jpeg) as url,
        gunicorn(_one_worker_env(tmp_path, tiny_model_dir), workers=1) as (base, process),
    ):
        result = {}

        def fetch():
            result["answer"] = requests.post(
                base + "/api/validate", json={"image_url": url}, timeout=30
            )

        client = threading.Thread(target=fetch)
        client.start()
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        client.join(timeout=30)
        assert process.wait(timeout=30) == 0
    assert result["answer"].status_code == 200
    assert result["answer"].json()["valid"] is True


def test_sigterm_drains_the_inference_queue(tmp_path, tiny_model_dir, astronaut_jpeg):
    """Analyses that reach the inference thread after SIGTERM still run, then the worker exits."""
    log_path = str(tmp_path / "gunicorn.log")
    env = _one_worker_env(tmp_path, tiny_model_dir)
    with (
        slow_image_server(astronaut_jpeg, pause=1.5) as url,
        gunicorn(env, workers=1, log_path=log_path) as (base, process),
    ):
        wait_until(
            lambda: requests.get(base + "/api/ready", timeout=5).status_code == 200, 60, "ready"
        )
        answers: list = [None] * 3

        def analyze(index: int) -> None:
            body = {"image_url": url, "labels": [f"label {index}", "other"]}
            answers[index] = requests.post(base + "/api/analyze", json=body, timeout=30)

        clients = [threading.Thread(target=analyze, args=(i,)) for i in range(3)]
        for client in clients:
            client.start()
        time.sleep(0.7)  # every request is waiting for its image
        process.send_signal(signal.SIGTERM)
        for client in clients:
            client.join(timeout=30)
        assert process.wait(timeout=30) == 0
    for answer in answers:
        assert answer is not None and answer.status_code == 200, answer and answer.text
        assert answer.json()["faces"][0]["attributes"]
    with open(log_path, encoding="utf-8") as fh:
        assert "Traceback" not in fh.read()


def _maps_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps", encoding="utf-8") as fh:
        return "libtorch_cpu" in fh.read()


@pytest.mark.parametrize("preload", ["1", "0"])
def test_master_imports_torch_once_and_forked_workers_still_run_it(
    tmp_path, tiny_model_dir, astronaut_jpeg, preload
):
    """The master imports torch and transformers (PRELOAD_LIBRARIES, on by default) but runs no
    torch operation, so a worker it forks later (here: after one is killed) runs the model on
    two threads without hanging (gunicorn #2478). PRELOAD_LIBRARIES=0 leaves torch to workers."""
    import os

    env = {
        **_one_worker_env(tmp_path, tiny_model_dir),
        "FACEAPP_TORCH_THREADS": "2",
        "PRELOAD_LIBRARIES": preload,
    }
    log_path = tmp_path / "g.log"
    with gunicorn(env, workers=1, log_path=str(log_path)) as (base, process):
        assert _maps_torch(process.pid) is (preload == "1")
        image_id = requests.post(
            base + "/api/validate", files={"file": ("a.jpg", astronaut_jpeg)}, timeout=30
        ).json()["image_id"]
        first = requests.post(base + "/api/analyze", json={"image_id": image_id}, timeout=60)
        assert first.status_code == 200, first.text
        (worker,) = _worker_pids(process.pid)
        os.kill(worker, signal.SIGKILL)

        def replaced() -> bool:
            pids = _worker_pids(process.pid)
            return bool(pids) and pids != [worker]

        wait_until(replaced, 30, "a replacement worker")
        again = requests.post(
            base + "/api/analyze", json={"image_id": image_id, "wipe_cache": True}, timeout=60
        )
        assert again.status_code == 200, again.text
        assert again.json()["faces"] == first.json()["faces"]
    imported = "imported torch, transformers and faceapp" in log_path.read_text()
    assert imported is (preload == "1")


def test_workers_fix_glibcs_malloc_thresholds_unless_the_operator_set_them(monkeypatch):
    import os
    import platform

    from faceapp.gunicorn_worker import tune_malloc
    from tests.servers import ROOT

    if platform.libc_ver()[0] == "glibc":
        assert tune_malloc() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert tune_malloc() is False
    with open(os.path.join(ROOT, "gunicorn.conf.py"), encoding="utf-8") as fh:
        assert "tune_malloc()" in fh.read()  # gunicorn's post_fork hook calls it in each worker
