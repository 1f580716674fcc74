"""The Celery app, made from the Flask config (Flask's "Background Tasks with Celery" pattern),
and ``flask --app wsgi worker``.

Work is never lost to a dead worker: tasks are acknowledged late (after they ran), a task whose
pool process died is put back at once (``reject_on_worker_lost``), and one held by a worker
that vanished whole (SIGKILL, a host gone) goes back to the queue once
``JOBS_VISIBILITY_TIMEOUT`` seconds have passed since it was handed out, and so does one it had
taken off the queue but not yet recorded as handed out (faceapp/jobs/sweeper.py). That timeout
must be longer than a chunk takes, or a slow chunk is started a second time elsewhere
(harmless: each item is answered once, faceapp/jobs/store.py, but wasted work).

Each worker process loads the model after fork, in ``worker_process_init``, as gunicorn's workers
do in ``post_worker_init``: a model used in the parent before fork hangs the children
(gunicorn #2478, pytorch #49555, which apply to Celery's prefork pool too).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any

import click
from celery import Celery, Task
from celery import signals as celery_signals
from flask import Flask, current_app
from flask.cli import with_appcontext

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
    from faceapp.jobs import tasks  # noqa: F401 - registers the shared task with this app

    return celery


def _load_model(app: Flask, **_: Any) -> None:
    """worker_process_init: this pool process loads its model now, in the background (Celery
    gives the hook 4 s, a first load can take longer; the first chunk waits for it)."""
    from faceapp.face_models import models

    models.load_in_background(app)


@click.command("worker")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes (default: the CPU cores). Each loads its own model.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@with_appcontext
def worker_command(concurrency: int | None, loglevel: str) -> None:
    """Run a Celery worker for jobs (POST /api/jobs), on the Redis of STORE_URL or BROKER_URL."""
    from faceapp.face_models import available_cores, import_libraries, models
    from faceapp.jobs import jobs, sweeper

    app = current_app._get_current_object()
    if not jobs.available(app):
        raise click.ClickException(
            "jobs need Redis: set FACEAPP_STORE_URL=redis://host:6379/0 (or FACEAPP_BROKER_URL)"
        )
    processes = concurrency or available_cores()
    models.share_cores(app, processes)  # torch threads per process: the cores shared among them
    celery_signals.worker_process_init.connect(functools.partial(_load_model, app), weak=False)
    seconds, failed = import_libraries()  # imports only, no torch operation: safe before fork
    log.info("imported torch, transformers and faceapp in %.1f s", seconds)
    if failed:
        log.warning("could not import %s: the worker processes will say why", ", ".join(failed))
    celery = jobs.celery(app)
    keys = sweeper.BrokerKeys(queues=QUEUE_KEYS, unacked=UNACKED_KEY)
    celery.steps["worker"].add(sweeper.worker_step(app, keys))  # finds chunks lost in transit
    celery.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={processes}",
            f"--loglevel={loglevel}",
            f"--queues={QUEUE}",
            f"--hostname=faceapp-{os.getpid()}@{socket.gethostname()}",
            "--without-mingle",
            "--without-gossip",
        ]
    )
