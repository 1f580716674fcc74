"""The jobs sections of ``make bench`` (issue 18's goals): a job's throughput, a big POST, the
results stream, and interactive latency while a job runs.

One redis-server, one gunicorn (2 workers) and one Celery worker (2 processes) on this host,
started and stopped here with the test suite's helpers (tests/servers.py), and a local site
serving the photos. Each figure is a ratio within this run:

- jobs_throughput: a job of N image_url items on 2 worker processes vs ``flask batch`` over the
  same URLs in this process (goal: >= 0.8x its images/s).
- jobs_post_10000: POST /api/jobs with 10,000 items vs the goal's 1 s.
- jobs_results_stream: reading a finished 1,000-item job's NDJSON vs the goal's 5,000 lines/s.
- jobs_interactive_p95: p95 of a one-face analyze by image_id while a job runs vs with none.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack

import requests
from PIL import Image

from bench.batch import batch_app, batch_pass
from bench.http import detector_settings
from bench.photos import jpeg_bytes
from bench.timing import Comparison

KEY = "bench-jobs-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
LATENCY_REQUESTS = 40


def variants(photo: Image.Image, count: int) -> dict[str, bytes]:
    """`count` different JPEGs of the photo (each its own image_id): sizes and qualities vary."""
    found = {}
    for index in range(count):
        side = 448 + index % 64
        image = photo.resize((side, side), Image.Resampling.BILINEAR)
        found[f"p{index}.jpg"] = jpeg_bytes(image, quality=80 + index // 64)
    return found


def run_jobs(plan, folder: str, photo: Image.Image) -> list[Comparison]:
    """Every jobs section, on servers started and stopped here."""
    from tests.servers import app_env, celery_worker, gunicorn, photo_site, redis_server

    count = 20 if plan.size == "tiny" else 200
    photos = variants(photo, count + 16)
    scratch = tempfile.mkdtemp(prefix="faceapp-bench-jobs-")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        redis_url = stack.enter_context(redis_server(scratch))
        site = stack.enter_context(photo_site(photos))
        env = app_env(
            os.path.join(scratch, "instance"),
            folder,
            MODELS_DIR=folder,
            STORE_URL=redis_url,
            URL_ALLOW_PRIVATE_NETWORKS="true",
            API_KEYS=KEY,
            RATELIMIT_ENABLED="false",
            LOG_LEVEL="WARNING",
            MAX_ACTIVE_JOBS="100",
            DTYPE="auto",  # the product's default (the tests' app_env pins float32)
            **detector_settings(),  # the same detector as flask batch's below
        )
        base, _ = stack.enter_context(gunicorn(env, workers=2))
        worker_log = os.path.join(scratch, "worker.log")
        stack.enter_context(celery_worker(env, worker_log, concurrency=2))
        session = stack.enter_context(requests.Session())
        session.headers.update(HEADERS)
        names = sorted(photos, key=lambda name: int(name[1:-4]))
        # Two chunks (JOBS_CHUNK_SIZE's default, 8, each), so that both worker processes have
        # loaded their model before the timing.
        run_job(session, base, [f"{site}/{n}" for n in names[-16:]])
        job_urls = [f"{site}/{n}" for n in names[:count]]
        results = [
            bench_throughput(plan, session, base, folder, job_urls),
            bench_post(plan, session, base),
            bench_stream(plan, session, base, site, names[0]),
            bench_latency(session, base, site, names),
        ]
    return results


def run_job(session: requests.Session, base: str, urls: list[str]) -> dict:
    """Post a job of these URLs and wait for it to end; returns its final state."""
    answer = session.post(f"{base}/api/jobs", json={"items": [{"image_url": u} for u in urls]})
    answer.raise_for_status()
    job_id = answer.json()["job_id"]
    while True:
        job = session.get(f"{base}/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            if job["state"] != "succeeded" or job["failed"]:
                raise RuntimeError(f"the bench job ended {job['state']}: {job}")
            return job
        time.sleep(0.1)


def bench_throughput(plan, session, base: str, folder: str, urls: list[str]) -> Comparison:
    """The job against ``flask batch`` (its runner and writer, in this process) over the same
    URLs; each with its own store, so neither finds the other's results cached."""
    from faceapp.batch.pipeline import Options, Pipeline, default_workers

    began = time.perf_counter()
    job = run_job(session, base, urls)
    job_ms = (time.perf_counter() - began) * 1000 / len(urls)
    scratch = tempfile.mkdtemp(prefix="faceapp-bench-jobs-batch-")
    try:
        app = batch_app(folder, scratch, plan.threads, URL_ALLOW_PRIVATE_NETWORKS=True)
        pipeline = Pipeline(app, Options())  # loads and warms the model, as the workers are
        workers = default_workers(app.config)
        out = os.path.join(scratch, "out.jsonl")
        batch_ms = batch_pass(urls, pipeline.process, out, workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Comparison(
        "jobs_throughput",
        f"a job of {len(urls)} image_url items",
        "flask batch",
        "job, 2 worker processes",
        [batch_ms],
        [job_ms],
        "a job on 2 Celery worker processes answers at this fraction of flask batch's images/s "
        "over the same URLs (goal >= 0.8)",
        sanity={"job_images_per_s": job["images_per_second"], "batch_ms_per_image": batch_ms},
    )


def bench_post(plan, session, base: str) -> Comparison:
    items = [{"image_url": f"http://images.invalid/{n}.jpg"} for n in range(10_000)]
    samples = []
    for _ in range(max(2, min(plan.repeats, 5))):
        began = time.perf_counter()
        answer = session.post(f"{base}/api/jobs", json={"items": items})
        samples.append((time.perf_counter() - began) * 1000)
        answer.raise_for_status()
        session.delete(f"{base}/api/jobs/{answer.json()['job_id']}").raise_for_status()
    return Comparison(
        "jobs_post_10000",
        "POST /api/jobs, 10,000 items",
        "POST",
        "goal 1 s",
        samples,
        [1000.0] * len(samples),
        "the POST's time over the goal's 1 s (goal <= 1)",
    )


def bench_stream(plan, session, base: str, site: str, name: str) -> Comparison:
    lines_wanted = 200 if plan.size == "tiny" else 1000  # --quick reads a shorter job
    job = run_job(session, base, [f"{site}/{name}"] * lines_wanted)  # cached after the first
    goal_ms = lines_wanted / 5000 * 1000
    samples = []
    for _ in range(max(2, min(plan.repeats, 5))):
        began = time.perf_counter()
        with session.get(f"{base}/api/jobs/{job['job_id']}/results", stream=True) as answer:
            lines = sum(1 for line in answer.iter_lines() if line)
        samples.append((time.perf_counter() - began) * 1000)
        if lines != lines_wanted:
            raise RuntimeError(f"the stream had {lines} lines, not {lines_wanted}")
    return Comparison(
        "jobs_results_stream",
        f"results of a {lines_wanted}-item job",
        "stream",
        "goal 5,000 lines/s",
        samples,
        [goal_ms] * len(samples),
        "the time to read a finished job's NDJSON over the goal's (5,000 lines/s; goal <= 1)",
        sanity={"lines_per_s": round(lines_wanted / (statistics.median(samples) / 1000))},
    )


def bench_latency(session, base: str, site: str, names: list[str]) -> Comparison:
    image_id = session.post(f"{base}/api/validate", json={"image_url": f"{site}/{names[0]}"})
    image_id = image_id.json()["image_id"]

    def p95() -> list[float]:
        samples = []
        for _ in range(LATENCY_REQUESTS):
            began = time.perf_counter()
            answer = session.post(
                f"{base}/api/analyze", json={"image_id": image_id, "wipe_cache": True}
            )
            answer.raise_for_status()
            samples.append((time.perf_counter() - began) * 1000)
        return samples

    idle = p95()
    busy_job = session.post(
        f"{base}/api/jobs", json={"items": [{"image_url": f"{site}/{n}"} for n in names]}
    ).json()
    busy = p95()
    state = session.get(f"{base}/api/jobs/{busy_job['job_id']}").json()
    session.delete(f"{base}/api/jobs/{busy_job['job_id']}")
    return Comparison(
        "jobs_interactive_p95",
        "analyze by id while a job runs (p95)",
        "job running",
        "no job",
        [_p95(busy)],
        [_p95(idle)],
        "p95 of a one-face analyze by image_id while a job runs over its p95 with no job "
        "(goal <= 2)",
        sanity={"job_done_meanwhile": state["done"], "job_state": state["state"]},
    )


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
