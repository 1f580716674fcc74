"""Issue 22 item 5: only requests that do work count toward MAX_REQUESTS (gunicorn.conf.py)."""

from __future__ import annotations

import pytest
import requests

from tests.servers import app_env, gunicorn, wait_until
from tests.test_gunicorn import _worker_pids

pytestmark = pytest.mark.slow


def test_cheap_requests_never_recycle_a_worker_and_work_does(
    tmp_path, tiny_model_dir, astronaut_jpeg
):
    env = {
        **app_env(str(tmp_path / "instance"), tiny_model_dir, LOAD_MODEL_ON_START="false"),
        "MAX_REQUESTS": "5",  # 5 or 6 with jitter
    }
    with gunicorn(env, workers=1, log_path=str(tmp_path / "g.log")) as (base, process):
        (worker,) = _worker_pids(process.pid)
        with requests.Session() as session:
            for number in range(40):  # 404s, probes, refusals: no work done
                session.get(f"{base}/no-such-page-{number}", timeout=10)
                session.get(f"{base}/api/health", timeout=10)
                session.post(f"{base}/api/validate", json={}, timeout=10)
        assert _worker_pids(process.pid) == [worker], "cheap requests recycled the worker"
        for _ in range(8):
            with requests.Session() as session:
                answer = session.post(
                    base + "/api/validate", files={"file": ("a.jpg", astronaut_jpeg)}, timeout=30
                )
            assert answer.status_code == 200
        wait_until(lambda: worker not in _worker_pids(process.pid), 30, "a recycle after work")
