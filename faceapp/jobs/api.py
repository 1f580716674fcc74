"""/api/jobs (docs/API.md, "Jobs"): views parse, call one function of service.py, and render."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request, stream_with_context, url_for

from faceapp.access import check_api_key, current_caller
from faceapp.errors import FaceappError, human_bytes
from faceapp.jobs import service
from faceapp.output import render
from faceapp.schemas import JobArchiveForm, JobRequest, parse, request_fields

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")
bp.before_request(check_api_key)

NDJSON = "application/x-ndjson"
FORM_OVERHEAD = 1024 * 1024  # room for the form's other fields beside the archive


@bp.post("")
def create() -> Response:
    """Make a job of image URLs or stored image_ids (JSON), or of a zip's images (multipart)."""
    if request.mimetype == "multipart/form-data":
        # An archive may be larger than one image: this request alone gets MAX_ARCHIVE_BYTES.
        limit = current_app.config["MAX_ARCHIVE_BYTES"]
        if (request.content_length or 0) > limit + FORM_OVERHEAD:
            raise FaceappError(
                "archive.too_large",
                f"The archive is larger than {human_bytes(limit)} (MAX_ARCHIVE_BYTES).",
                field="archive",
            )
        request.max_content_length = limit + FORM_OVERHEAD
    fields = request_fields(request)
    upload = request.files.get("archive")
    if upload is not None and upload.filename:
        options = parse(JobArchiveForm(exclude=("archive",)), fields)
        items, archive = None, upload.stream
    else:
        items = fields.pop("items", None) if isinstance(fields, dict) else None
        if items is None:
            raise FaceappError(
                "input.missing",
                "Send items (a JSON list) or an archive (a zip file).",
                field="items",
            )
        options = parse(JobRequest(exclude=("items",)), fields)
        archive = None
    answer, made = service.create_job(current_caller(), options, items, archive)
    response = render(answer, status=202 if made else 200)
    response.headers["Location"] = url_for("jobs.status", job_id=answer["job_id"])
    return response


@bp.get("")
def listing() -> Response:
    """The caller's jobs, newest first (every job for an admin key)."""
    return render(service.list_jobs(current_caller()))


@bp.get("/<job_id>")
def status(job_id: str) -> Response:
    """A job's state, counts, times, speed and ETA."""
    return render(service.get_job(job_id, current_caller()))


@bp.get("/<job_id>/results")
def results(job_id: str) -> Response:
    """The finished items' lines as NDJSON, in index order; ?after=N resumes after index N."""
    raw = request.args.get("after", "-1")
    try:
        after = int(raw)
    except ValueError:
        after = -2
    if after < -1:
        raise FaceappError(
            "input.invalid",
            "?after: give the index of the last line read (-1: none).",
            field="after",
        )
    job, lines = service.result_lines(job_id, current_caller(), after)
    response = Response(stream_with_context(lines), mimetype=NDJSON)
    response.headers["X-Job-State"] = job["state"]
    return response


@bp.delete("/<job_id>")
def cancel(job_id: str) -> Response:
    """Cancel a job: items not started are never processed."""
    return render(service.cancel_job(job_id, current_caller()))
