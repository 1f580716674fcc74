"""The Celery app, made from the Flask config (Flask's "Background Tasks with Celery" pattern);
``flask --app wsgi worker`` is in faceapp/jobs/worker.py.

Work is never lost to a dead worker: tasks are acknowledged late (after they ran), a task whose
pool process died is put back at once (``reject_on_worker_lost``), and one held by a worker
that vanished whole (SIGKILL, a host gone) goes back to the queue once
``JOBS_VISIBILITY_TIMEOUT`` seconds have passed since it was handed out, and so does one it had
taken off the queue but not yet recorded as handed out (faceapp/jobs/sweeper.py). That timeout
must be longer than a chunk takes, or a slow chunk is started a second time elsewhere
(harmless: each item is answered once, faceapp/jobs/store.py, but wasted work).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from flask import Flask

log = logging.getLogger(__name__)

QUEUE = "faceapp.jobs"
KEY_PREFIX = "faceapp:celery:"  # every key Celery keeps in the shared Redis starts with this
# kombu's Redis queue lists (one per priority step: "\x06\x16" and the step) and unacked hash.
QUEUE_KEYS = (KEY_PREFIX + QUEUE, *(f"{KEY_PREFIX}{QUEUE}\x06\x16{step}" for step in (3, 6, 9)))
UNACKED_KEY = KEY_PREFIX + "unacked"


def celery_config(config: Any, url: str) -> dict[str, Any]:
    """Celery's settings for faceapp's jobs, from the Flask config."""
    visibility = int(config["JOBS_VISIBILITY_TIMEOUT"])
    return {
        "broker_url": url,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            # Look for abandoned work at least every 10 s (kombu's default throttle would make
            # it every 100 s), and sooner when the timeout is short.
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            # The lock a worker takes for that look (held for milliseconds) outlives a worker
            # killed while holding it by this long; kombu's default, 300 s, would stop every
            # other worker's look for five minutes.
            "unacked_mutex_expire": max(2, min(60, visibility // 2)),
            "global_keyprefix": KEY_PREFIX,
            "socket_timeout": 10,
            "socket_connect_timeout": 3,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        # A POST /api/jobs with the broker down answers 503 soon, not after Celery's long retry.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,  # results are the job's own lines, in faceapp/jobs/store.py
        "worker_prefetch_multiplier": 1,  # a worker holds one chunk per process, no more
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def make_celery(app: Flask, url: str) -> Celery:
    """A Celery app whose tasks run inside `app`'s application context."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.import_name, task_cls=FlaskTask)
    celery.config_from_object(celery_config(app.config, url))
    celery.set_default()
    # The task (faceapp/jobs/tasks.py, a shared task) joins every Celery app once its module is
    # imported: by the worker command, and by the service before it queues a chunk.
    return celery
