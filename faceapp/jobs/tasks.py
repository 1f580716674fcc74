"""The Celery task of jobs: thin, like a view; the work is in faceapp/jobs/runner.py.

``run_chunk`` is idempotent: a chunk delivered twice answers each item once and queues the next
chunk once. It is acknowledged late and requeued when its worker dies (faceapp/jobs/celery_app.py).
"""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Reject

from faceapp.jobs import jobs, runner

TASK_NAME = "faceapp.jobs.run_chunk"


@shared_task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_chunk(job_id: str, chunk: int) -> str:
    """Answer one chunk of a job's items and queue the job's next chunk."""
    try:
        return runner.run_chunk(job_id, chunk, queue_chunk)
    except runner.Retry as exc:
        raise Reject(str(exc), requeue=True) from exc


def queue_chunk(job_id: str, chunk: int) -> None:
    """Put one chunk of a job on the queue of this Flask app's broker (not Celery's default
    app: tests and tools may have made several)."""
    jobs.celery().tasks[TASK_NAME].apply_async((job_id, chunk))
