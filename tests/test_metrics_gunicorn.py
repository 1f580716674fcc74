"""/metrics under real gunicorn: two workers' figures add up, recycled workers count once."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import app_env, gunicorn, wait_until

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": "Bearer admin-key"}


def samples(base: str) -> list:
    with requests.Session() as session:
        answer = session.get(base + "/metrics", headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    return [s for family in text_string_to_metric_families(answer.text) for s in family.samples]


def validated_ok(found) -> float:
    return sum(
        s.value
        for s in found
        if s.name == "faceapp_http_requests_total"
        and s.labels == {"endpoint": "api.validate", "method": "POST", "status": "200"}
    )


def test_counts_add_up_across_recycled_workers(tmp_path, tiny_model_dir, astronaut_jpeg):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over from an earlier run")
    env = {
        **app_env(
            str(tmp_path / "instance"),
            tiny_model_dir,
            ADMIN_KEYS="admin-key",
            METRICS_ENABLED="true",
        ),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MAX_REQUESTS": "6",  # each worker is recycled after 6 or so requests (with jitter)
        "WORKER_CLASS": "sync",  # one connection at a time: requests spread over both workers
    }
    sent = 30
    with gunicorn(env, workers=2, log_path=str(tmp_path / "gunicorn.log")) as (base, process):
        # The stale file was removed at start, or its garbage would break every scrape.
        assert validated_ok(samples(base)) == 0
        for _ in range(sent):
            with requests.Session() as session:
                answer = session.post(
                    base + "/api/validate", files={"file": ("a.jpg", astronaut_jpeg)}, timeout=30
                )
            assert answer.status_code == 200, answer.text
        image_id = answer.json()["image_id"]
        trace = requests.get(f"{base}/api/images/{image_id}/trace", timeout=10).json()["events"]
        served_by = {event["worker_pid"] for event in trace}
        assert len(served_by) > 2, "no worker was recycled"

        found = samples(base)
        assert validated_ok(found) == sent  # every worker's count, dead or alive, exactly once
        cache = {
            s.labels["result"]: s.value
            for s in found
            if s.name == "faceapp_cache_requests_total" and s.labels["cache"] == "validation"
        }
        assert cache == {"miss": 1, "hit": sent - 1}
        decode = [
            s.value
            for s in found
            if s.name == "faceapp_stage_duration_seconds_count"
            and s.labels == {"event": "validated", "stage": "total"}
        ]
        assert decode == [sent]

        def series_are_the_living_workers() -> bool:
            found = samples(base)  # (this scrape counts towards MAX_REQUESTS too)
            ready = {s.labels["pid"]: s.value for s in found if s.name == "faceapp_model_ready"}
            living = {str(pid) for pid in worker_pids(process.pid)}
            # Exactly one series per living worker: a dead worker's went at child_exit.
            return set(ready) == living and validated_ok(found) == sent

        wait_until(series_are_the_living_workers, 30, "model_ready series = the living workers")
    assert not any(metrics_dir.glob("gauge_liveall_*.db")), "live gauges outlived their workers"


def worker_pids(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children", encoding="utf-8") as fh:
        return [int(pid) for pid in fh.read().split()]
