"""Jobs: many images submitted at once, worked through by Celery workers on any number of hosts.

A client posts a list of items (or a zip) to ``POST /api/jobs`` and gets a job id at once; the
items go to Celery workers (``flask --app wsgi worker``) in chunks, and the results are read back
as NDJSON while the job runs. Redis is the broker (the store's own, unless BROKER_URL names
another) and holds the job records (faceapp/jobs/store.py). Without Redis there are no jobs, and
the API says so (503 ``jobs.unavailable``).

Files, in the order a job meets them: service.py (checks the items, writes the job, queues its
first chunks; archive.py opens a zip), tasks.py (the Celery task, thin like a view), runner.py
(a chunk: each item through item.py's pipeline, its line recorded once, the next chunk queued),
api.py (the HTTP views) and pages.py (the tester's Jobs page), store.py (the job records),
figures.py (their metrics), celery_app.py (the Celery app made from the Flask config),
worker.py (the worker command) and sweeper.py (each worker's look for chunks lost between the
queue and a worker).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from flask import Flask

from faceapp.errors import FaceappError
from faceapp.extension import Slot

log = logging.getLogger(__name__)

SLOT = Slot("faceapp.jobs", "faceapp.jobs.jobs.init_app(app)")
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass
class _JobsState:
    broker_url: str | None
    celery: Any = None  # the Celery app (None without a broker)
    store: Any = None  # the JobStore (None without a broker)


def broker_url(config: Any) -> str | None:
    """The Redis the jobs use: BROKER_URL, else a redis:// STORE_URL, else None (no jobs)."""
    url = config.get("BROKER_URL") or config.get("STORE_URL") or ""
    return url if urlparse(url).scheme in REDIS_SCHEMES else None


class Jobs:
    """Flask extension holding the Celery app and the job store (``app.extensions``)."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Make the Celery app and the job store when there is a Redis (else jobs are off)."""
        SLOT.check_free(app)  # before a second Celery app is made
        url = broker_url(app.config)
        state = _JobsState(broker_url=url)
        if url is not None:
            from faceapp.jobs.celery_app import make_celery
            from faceapp.jobs.store import JobStore

            state.celery = make_celery(app, url)  # connects nothing until used
            state.store = JobStore(url)
            self._add_figures(app, state.store)
        SLOT.register(app, state)

    @staticmethod
    def _add_figures(app: Flask, store: Any) -> None:
        import functools

        from faceapp import metrics
        from faceapp.jobs import figures

        metrics.add_scrape_collector(app, functools.partial(figures.collect, store))

    def _state(self, app: Flask | None = None) -> _JobsState:
        return SLOT.get(app)

    def available(self, app: Flask | None = None) -> bool:
        """Whether this app has a broker for jobs (not whether it answers now)."""
        return self._state(app).store is not None

    @property
    def store(self):
        """The job store; 503 jobs.unavailable without Redis."""
        state = self._state()
        if state.store is None:
            raise unavailable_error()
        return state.store

    def celery(self, app: Flask | None = None):
        """The Celery app; 503 jobs.unavailable without Redis."""
        state = self._state(app)
        if state.celery is None:
            raise unavailable_error()
        return state.celery


def unavailable_error(reason: str | None = None) -> FaceappError:
    """503 jobs.unavailable: no Redis configured, or it does not answer."""
    if reason is None:
        return FaceappError(
            "jobs.unavailable",
            "Jobs need Redis: set FACEAPP_STORE_URL=redis://host:6379/0 (or FACEAPP_BROKER_URL) "
            "and start workers with `flask --app wsgi worker`.",
        )
    return FaceappError("jobs.unavailable", f"The job queue is unavailable ({reason}).")


jobs = Jobs()
