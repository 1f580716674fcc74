"""The tester's Jobs page (/app/jobs): upload a zip or paste URLs, watch the job, read the results.

Routes of the tester's blueprint (its key check, CSRF tokens, rate limits and error pages apply),
calling the same service functions as /api/jobs. The job page refreshes itself while the job runs
(a meta refresh: the pages allow no inline script). Results download as JSONL (the API's lines)
or CSV (one row per item).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from flask import Response, redirect, render_template, request, url_for

from faceapp import access
from faceapp.errors import FaceappError
from faceapp.forms import job_options
from faceapp.jobs import service
from faceapp.tester import bp

TABLE_ROWS = 500  # result lines shown on the page (the downloads have them all)
CSV_COLUMNS = [
    "index",
    "source",
    "image_id",
    "valid",
    "faces",
    "errors",
    "warnings",
    "error_code",
    "error_message",
]


@bp.get("/jobs")
def jobs_page() -> str:
    """The new-job form and the caller's jobs."""
    return render_jobs_page()


@bp.post("/jobs")
def submit_job() -> Response | tuple[str, int]:
    """Make a job from a zip or pasted URLs (as POST /api/jobs does), then show it."""
    form = request.form
    urls_text = form.get("urls", "")
    try:
        options = job_options(form)
        upload = request.files.get("archive")
        if upload is not None and upload.filename:
            job, _ = service.create_job(access.current_caller(), options, None, upload.stream)
        else:
            urls = [line.strip() for line in urls_text.splitlines() if line.strip()]
            if not urls:
                raise FaceappError("input.missing", "Choose a zip file or paste image URLs.")
            items = [{"image_url": url} for url in urls]
            job, _ = service.create_job(access.current_caller(), options, items, None)
    except FaceappError as error:
        return render_jobs_page(error, urls=urls_text, labels=form.get("labels", "")), error.status
    return redirect(url_for(".job_page", job_id=job["job_id"]), 303)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    """A job's progress, counts and results table."""
    caller = access.current_caller()
    job, lines = service.result_lines(job_id, caller, -1)
    rows = []
    for chunk in lines:
        rows += [json.loads(line) for line in chunk.splitlines() if line]
        if len(rows) >= TABLE_ROWS:
            break
    return render_template("tester/job.html", job=job, rows=rows[:TABLE_ROWS])


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a job (as DELETE /api/jobs/<id>), then show it."""
    try:
        service.cancel_job(job_id, access.current_caller())
    except FaceappError as error:
        if error.code != "job.finished":  # ended meanwhile: its page says so
            raise
    return redirect(url_for(".job_page", job_id=job_id), 303)


@bp.get("/jobs/<job_id>/results.jsonl")
def job_jsonl(job_id: str) -> Response:
    """The finished items' lines, as the API streams them."""
    _, lines = service.result_lines(job_id, access.current_caller(), -1)
    return _download(lines, f"job-{job_id}.jsonl", "application/x-ndjson")


@bp.get("/jobs/<job_id>/results.csv")
def job_csv(job_id: str) -> Response:
    """The finished items as CSV: one row per item."""
    _, lines = service.result_lines(job_id, access.current_caller(), -1)
    return _download(_csv_rows(lines), f"job-{job_id}.csv", "text/csv")


def _csv_rows(chunks: Iterator[bytes]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS)
    writer.writeheader()
    for chunk in chunks:
        for raw in chunk.splitlines():
            line = json.loads(raw)
            error = line.get("error") or {}
            writer.writerow(
                {
                    "index": line["index"],
                    "source": line["source"],
                    "image_id": line.get("image_id", ""),
                    "valid": "" if "valid" not in line else str(line["valid"]).lower(),
                    "faces": len(line.get("faces") or []) if "faces" in line else "",
                    "errors": " ".join(issue["code"] for issue in line.get("errors", [])),
                    "warnings": " ".join(issue["code"] for issue in line.get("warnings", [])),
                    "error_code": error.get("code", ""),
                    "error_message": error.get("message", ""),
                }
            )
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")


def _download(body: Iterator[bytes], name: str, mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def render_jobs_page(error: FaceappError | None = None, urls: str = "", labels: str = "") -> str:
    """The form (refilled, with the error when there is one) and the caller's jobs."""
    listed = service.list_jobs(access.current_caller())["jobs"]
    return render_template("tester/jobs.html", jobs=listed, error=error, urls=urls, labels=labels)
