"""The jobs' figures in /metrics, read from Redis at scrape time (README, "Metrics").

They describe the shared Redis, so every host's scrape gives the same values: aggregate them
with ``max()`` across hosts, not ``sum()``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from redis.exceptions import RedisError

from faceapp.jobs.celery_app import KEY_PREFIX, QUEUE
from faceapp.jobs.store import JobStore

log = logging.getLogger(__name__)

WORKER_FORGET_S = 3600  # a worker silent this long leaves the figures


def collect(store: JobStore) -> Iterator:
    """The jobs' metric families (nothing but ``faceapp_jobs_up 0`` while Redis is down)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    up = GaugeMetricFamily("faceapp_jobs_up", "1 when the jobs' Redis answered this scrape.")
    try:
        by_state = store.counts_by_state()
        figures = store.figures(KEY_PREFIX + QUEUE, WORKER_FORGET_S)
    except RedisError as exc:
        log.warning("metrics: the jobs' Redis did not answer (%s)", type(exc).__name__)
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    jobs = GaugeMetricFamily("faceapp_jobs", "Jobs by state (the newest 10,000).", labels=["state"])
    for state, count in by_state.items():
        jobs.add_metric([state], count)
    yield jobs
    yield GaugeMetricFamily(
        "faceapp_jobs_queue_depth",
        "Chunks waiting for a worker.",
        value=figures["queue_depth"],
    )
    items = CounterMetricFamily(
        "faceapp_jobs_items", "Job items answered, by outcome (done, failed).", labels=["outcome"]
    )
    items.add_metric(["done"], figures["items_done"])
    items.add_metric(["failed"], figures["items_failed"])
    yield items
    recovered = CounterMetricFamily(
        "faceapp_jobs_chunks_recovered",
        "Chunks lost in transit that the sweeper recovered, by outcome: requeued, or released "
        "(their job had ended; their place went to the owner's next chunk).",
        labels=["outcome"],
    )
    recovered.add_metric(["requeued"], figures["chunks_requeued"])
    recovered.add_metric(["released"], figures["chunks_released"])
    yield recovered
    per_worker = CounterMetricFamily(
        "faceapp_jobs_worker_items", "Items each worker process answered.", labels=["worker"]
    )
    silent = GaugeMetricFamily(
        "faceapp_jobs_worker_idle_seconds",
        "Seconds since each worker process last answered an item.",
        labels=["worker"],
    )
    for worker, (count, idle) in sorted(figures["workers"].items()):
        per_worker.add_metric([worker], count)
        silent.add_metric([worker], round(idle, 1))
    yield per_worker
    yield silent
