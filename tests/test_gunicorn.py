"""faceapp under real gunicorn, as `make run` serves it: two workers sharing one store."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

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
        "THREADS": "1",  # one request at a time per worker, so concurrent ones must spread
    }
    with gunicorn(env, workers=2, log_path=str(tmp_path / "gunicorn.log")) as (base, process):
        yield base, process


def test_two_workers_share_the_store_and_load_the_model_after_fork(served, astronaut_jpeg):
    base, process = served

    def post(_):
        # A new connection each time, so the requests spread over both workers.
        with requests.Session() as session:
            response = session.post(base + "/api/validate", files={"file": ("a.jpg", astronaut_jpeg)},
                                    timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["image_id"]

    image_id = hashlib.sha256(astronaut_jpeg).hexdigest()
    # Stored once first: two workers' first requests at the same instant may both find it absent
    # and both store it (allowed: same bytes, atomic writes), which is not what is checked here.
    assert post(None) == image_id
    with ThreadPoolExecutor(4) as pool:
        for _ in range(6):
            assert set(pool.map(post, range(8))) == {image_id}
            events = requests.get(f"{base}/api/images/{image_id}/trace", timeout=10).json()["events"]
            if len({e["worker_pid"] for e in events}) > 1:
                break
    stored_by = [e["worker_pid"] for e in events if e["cached"] is False]
    read_by = {e["worker_pid"] for e in events if e["cached"] is True}
    assert len(stored_by) == 1 and read_by - set(stored_by), "no second worker read the image"
    assert process.pid not in read_by | set(stored_by)  # workers, never the master, serve

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
