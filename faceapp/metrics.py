"""Prometheus metrics at ``GET /metrics`` (README, "Metrics"): off unless METRICS_ENABLED.

Under gunicorn every worker writes its figures to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode). gunicorn.conf.py gives that folder to the workers,
empty, before the first one starts, and tells prometheus_client when a worker exits; a scrape,
answered by whichever worker gets it, adds up the files of every worker, living or recycled.
Without that folder (``flask run``, tests) the app keeps its figures in its own registry.

The rest of the code reports through one-line hooks that do nothing when metrics are off:
:func:`observe_event` (every trace event), :func:`count_url_fetch`, :func:`count_rate_limited`
and :func:`count_evicted`; requests and model readiness are observed here. This module sits
below the store and the model holder, which report to it: it imports neither, and
``create_app`` hands it the two at :func:`init_app` (the store's size is read at each scrape).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, current_app, g, request

from faceapp.access import current_caller
from faceapp.errors import FaceappError
from faceapp.extension import Slot
from faceapp.version import __version__

log = logging.getLogger(__name__)

SLOT = Slot("faceapp.metrics", "faceapp.metrics.init_app(app, store=..., models=...)")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from a cached answer (milliseconds) to a slow image_url plus a cold analysis.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# The method label's values: any other method a client sends counts as "other", so clients
# cannot add series (5,000 made-up methods once added 5,000 of them).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# Trace events that answer from a cache, and the cache each belongs to.
CACHE_OF_EVENT = {"validated": "validation", "analyzed": "analysis", "cache_hit": "analysis"}

bp = Blueprint("metrics", __name__)


class SizedStore(Protocol):
    """The store as metrics reads it (faceapp/store: ``store.backend.usage()``)."""

    @property
    def backend(self) -> Any: ...


class ReadyHooks(Protocol):
    """The model holder as metrics hooks it (faceapp/face_models.py's ``models``)."""

    def add_ready_hook(self, app: Flask, hook: Callable[[Any], None]) -> None: ...


class Metrics:
    """The metric objects of one app (multiprocess mode: their values live in files)."""

    def __init__(self, multiprocess: bool, store: SizedStore | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = multiprocess
        self.store = store  # its size is read at each scrape (faceapp_store_*)
        # In multiprocess mode nothing is registered: a scrape reads every worker's files.
        self.registry = None if multiprocess else CollectorRegistry(auto_describe=True)
        own = {"registry": self.registry}
        self.requests = Counter(
            "faceapp_http_requests",
            "HTTP requests answered, by Flask endpoint, method and status.",
            ["endpoint", "method", "status"],
            **own,
        )
        self.latency = Histogram(
            "faceapp_http_request_duration_seconds",
            "Time from the request reaching the app to its answer, by Flask endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            **own,
        )
        self.stages = Histogram(
            "faceapp_stage_duration_seconds",
            "Time spent in each stage of a trace event (timings_ms), e.g. "
            "validated/decode, validated/detect, analyzed/encode, analyzed/queue.",
            ["event", "stage"],
            buckets=STAGE_BUCKETS,
            **own,
        )
        self.batch_size = Histogram(
            "faceapp_inference_batch_size",
            "Images in the inference batch each analysis ran in.",
            buckets=BATCH_BUCKETS,
            **own,
        )
        self.cache = Counter(
            "faceapp_cache_requests",
            "Lookups of the validation and analysis caches, by result (hit or miss).",
            ["cache", "result"],
            **own,
        )
        self.url_fetches = Counter(
            "faceapp_url_fetches",
            "image_url downloads by outcome: ok, or the error code (url.timeout, ...).",
            ["outcome"],
            **own,
        )
        self.rate_limited = Counter(
            "faceapp_rate_limited_requests",
            "Requests refused with 429 rate.limited, by Flask endpoint.",
            ["endpoint"],
            **own,
        )
        self.evictions = Counter(
            "faceapp_store_evictions",
            "Images the store evicted (age or size limit).",
            **own,
        )
        # Per worker (multiprocess: a pid label; a dead worker's series go with it).
        per_worker = {"multiprocess_mode": "liveall", **own}
        self.model_ready = Gauge(
            "faceapp_model_ready",
            "1 when this worker's model is loaded and warm, else 0.",
            **per_worker,
        )
        self.model_load = Gauge(
            "faceapp_model_load_seconds",
            "How long this worker took to load its model.",
            **per_worker,
        )
        self.model_warmup = Gauge(
            "faceapp_model_warmup_seconds",
            "How long this worker's model warm-up took.",
            **per_worker,
        )
        self.info = Gauge(
            "faceapp_build_info",
            "Always 1; the version label is faceapp's package and API version.",
            ["version"],
            multiprocess_mode="max",
            **own,
        )
        self.info.labels(version=__version__).set(1)
        self.model_ready.set(0)
        # Other extensions' figures read at scrape time (add_scrape_collector): the jobs'.
        self.scrape_collectors: list[Callable[[], Any]] = []

    def render(self, store_usage: tuple[int, int] | None) -> tuple[bytes, str]:
        """The text exposition of every figure, plus the store's size read now."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = self.registry
        collectors = [StoreCollector(store_usage)]
        collectors += [_Collect(collect) for collect in self.scrape_collectors]
        for collector in collectors:
            registry.register(collector)
        try:
            return generate_latest(registry), CONTENT_TYPE_LATEST
        finally:
            for collector in collectors:
                registry.unregister(collector)


class _Collect:
    """A function yielding metric families, as a prometheus_client collector."""

    def __init__(self, collect: Callable[[], Any]) -> None:
        self.collect = collect


class StoreCollector:
    """The images and bytes in the store, read at scrape time (shared by every worker)."""

    def __init__(self, usage: tuple[int, int] | None) -> None:
        self.usage = usage

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("faceapp_store_up", "1 when the store answered this scrape.")
        up.add_metric([], 0 if self.usage is None else 1)
        yield up
        if self.usage is None:
            return
        images, size = self.usage
        yield GaugeMetricFamily("faceapp_store_images", "Images in the store.", value=images)
        yield GaugeMetricFamily(
            "faceapp_store_bytes", "Bytes the store holds (images, metadata, results).", value=size
        )


def init_app(app: Flask, *, store: SizedStore, models: ReadyHooks) -> None:
    """Serve /metrics and observe requests and the model, when METRICS_ENABLED.

    `store` is read at each scrape and `models` tells when a model is ready (their extensions
    are registered before this one); both are handed in, since both report to this module.
    """
    SLOT.check_free(app)
    if not app.config["METRICS_ENABLED"]:
        SLOT.register(app, None)  # /metrics does not exist (404) and every hook is a no-op
        return
    import prometheus_client

    # The *_created series are the same in every worker and not added up in multiprocess mode.
    prometheus_client.disable_created_metrics()
    metrics = Metrics(multiprocess=bool(os.environ.get(MULTIPROC_ENV)), store=store)
    if not metrics.multiprocess and int(app.config.get("WORKERS") or 1) > 1:
        log.warning("metrics: %s is not set, so each worker reports only itself", MULTIPROC_ENV)
    SLOT.register(app, metrics)
    # First of all before_request functions, so even a request refused early is timed.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_count_request)
    # The hook may run in the model-loading thread, outside any app context.
    models.add_ready_hook(app, functools.partial(_model_ready, metrics))
    app.register_blueprint(bp)


def add_scrape_collector(app: Flask, collect: Callable[[], Any]) -> None:
    """Read `collect()`'s metric families at every scrape (no-op when metrics are off)."""
    metrics = SLOT.get(app)
    if metrics is not None:
        metrics.scrape_collectors.append(collect)


def _current() -> Metrics | None:
    """This app's figures; None when metrics are off or there is no app (hooks do nothing)."""
    return SLOT.get() if SLOT.registered() else None


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    metrics = _current()
    endpoint = request.endpoint or "unrouted"  # the app's own routes: a fixed set
    method = request.method if request.method in METHODS else "other"
    metrics.requests.labels(endpoint, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    return response


def _model_ready(metrics: Metrics, model: Any) -> None:
    metrics.model_load.set(model.load_ms / 1000)
    metrics.model_warmup.set(model.warmup_ms / 1000)
    metrics.model_ready.set(1)


# -- hooks called from other modules ------------------------------------------------------------


def observe_event(event: str, timings_ms: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """services.record_event: stage timings, batch size and cache hits of one trace event."""
    metrics = _current()
    if metrics is None:
        return
    for stage, value in timings_ms.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.stages.labels(event, stage.removesuffix("_ms")).observe(value / 1000)
    batch = extra.get("batch_size")
    if isinstance(batch, int | float) and not isinstance(batch, bool):
        metrics.batch_size.observe(batch)
    cache = CACHE_OF_EVENT.get(event)
    if cache is not None:
        hit = event == "cache_hit" or (event == "validated" and extra.get("cached") is True)
        metrics.cache.labels(cache, "hit" if hit else "miss").inc()


def count_url_fetch(fetch: Callable[..., bytes]) -> Callable[..., bytes]:
    """Decorate url_fetch.fetch_url: count each download as ok or by its error code."""

    @functools.wraps(fetch)
    def counted(*args: Any, **kwargs: Any) -> bytes:
        outcome = "error"
        try:
            data = fetch(*args, **kwargs)
            outcome = "ok"
            return data
        except FaceappError as exc:
            outcome = exc.code
            raise
        finally:
            metrics = _current()
            if metrics is not None:
                metrics.url_fetches.labels(outcome).inc()

    return counted


def count_rate_limited() -> None:
    """security's 429 handler: one request refused by the rate limit."""
    metrics = _current()
    if metrics is not None:
        metrics.rate_limited.labels(request.endpoint or "unrouted").inc()


def count_evicted(images: int) -> None:
    """The store's eviction pass removed `images` images."""
    metrics = _current()
    if metrics is not None and images:
        metrics.evictions.inc(images)


# -- the endpoint -------------------------------------------------------------------------------


@bp.get("/metrics")
def scrape() -> Response:
    """The Prometheus text exposition of every worker's figures (admin key when ADMIN_KEYS)."""
    _check_access()
    metrics = _current()
    body, content_type = metrics.render(_store_usage(metrics.store))
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def _check_access() -> None:
    """An admin key when ADMIN_KEYS is set, unless METRICS_PUBLIC; else open (keep it internal).

    No key, a wrong key and a user key get the same 401, so /metrics never tells a valid user
    key from a made-up one; each counts as a failed key check (faceapp/security.py).
    """
    if current_app.config["ADMIN_KEYS"] and not current_app.config["METRICS_PUBLIC"]:
        if not current_caller().admin:
            raise FaceappError("auth.required", "Metrics need an admin key.")


def _store_usage(store: SizedStore | None) -> tuple[int, int] | None:
    from redis.exceptions import RedisError

    if store is None:
        return None
    try:
        return store.backend.usage()
    except (OSError, RedisError) as exc:  # the store's own probe (/api/ready) says more
        log.warning("metrics: the store did not answer (%s)", type(exc).__name__)
        return None
    except FaceappError as exc:  # the guarded backend's 503 store.unavailable: store_up 0
        if exc.code != "store.unavailable":
            raise
        return None


# -- gunicorn's side (gunicorn.conf.py) ---------------------------------------------------------


def prepare_multiprocess_dir() -> str | None:
    """In gunicorn's master before any worker: an empty folder for the workers' metric files.

    ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of old files), else a new temporary folder;
    returns the folder made here (for :func:`remove_multiprocess_dir`), else None.
    """
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):  # the files of an earlier run would be added in
                os.unlink(os.path.join(folder, name))
        return None
    folder = tempfile.mkdtemp(prefix="faceapp-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


def remove_multiprocess_dir(folder: str | None) -> None:
    """On gunicorn's exit: remove the folder :func:`prepare_multiprocess_dir` made."""
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: drop a dead worker's per-worker gauges (its counts stay)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
