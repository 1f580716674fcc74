"""``flask --app wsgi worker``: a Celery worker for jobs, on the Redis of STORE_URL or BROKER_URL.

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
from celery import signals as celery_signals
from flask import Flask, current_app
from flask.cli import with_appcontext

from faceapp.jobs import jobs, sweeper
from faceapp.jobs.celery_app import QUEUE, QUEUE_KEYS, UNACKED_KEY

log = logging.getLogger(__name__)


def lower_priority(steps: int) -> int:
    """Lower this process's CPU priority by `steps` (nice; its pool processes inherit it) and
    return the niceness it now has.

    A jobs worker on a host that also serves requests would otherwise take the cores from them
    as an equal: with 2 Celery processes beside 2 gunicorn workers on 2 cores, an interactive
    analyze's p95 was 1.8-2.4x its idle p95 (`make bench`, jobs_interactive_p95).
    """
    if not 0 <= steps <= 19:
        raise click.ClickException(f"FACEAPP_JOBS_WORKER_NICE: {steps} is not between 0 and 19")
    return os.nice(steps)


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
    from faceapp.face_models import available_cores, models
    from faceapp.jobs import tasks  # noqa: F401 - the shared task joins this worker's Celery app
    from faceapp.preload import import_libraries  # gunicorn's master preloads the same

    app = current_app._get_current_object()
    if not jobs.available(app):
        raise click.ClickException(
            "jobs need Redis: set FACEAPP_STORE_URL=redis://host:6379/0 (or FACEAPP_BROKER_URL)"
        )
    processes = concurrency or available_cores()
    niceness = lower_priority(int(app.config["JOBS_WORKER_NICE"]))
    log.info("running at niceness %d (JOBS_WORKER_NICE)", niceness)
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
