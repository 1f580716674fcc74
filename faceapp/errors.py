"""Typed application errors with stable codes, and the one place that turns errors into answers.

Every error a client can see is a :class:`FaceappError` carrying a code from :data:`STATUS_BY_CODE`.
Werkzeug's HTTP exceptions (404 routes, 405 methods, 413 bodies) are mapped into the same JSON
envelope, and anything else is logged with the request id and answered as ``internal``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from flask import Flask, Response, current_app, g, has_request_context, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

#: app.extensions key of the tester's page renderer for HTTP errors on paths under /app that
#: no route matched (faceapp/tester.py sets it), so that /app/<typo> answers a page, not JSON.
PAGE_ERRORS_KEY = "faceapp.page_errors"
#: app.extensions key of a callable saying whether this request's caller may see server paths
#: (faceapp/security.py sets it: admin keys); without it, nobody does.
SHOWS_PATHS_KEY = "faceapp.shows_paths"

# An absolute (or ~ or ./) file path in a message: a model folder, MODELS_DIR, the instance
# folder. Not a URL's path (preceded by its host), and not the API's own routes.
_SERVER_PATH = re.compile(r"(?<![\w.:/~-])(?:~|\.{1,2})?/(?!api/|app/)[^\s'\"`,;()<>\[\]{}]+")
HIDDEN_PATH = "[path]"


def hide_paths(text: str) -> str:
    """`text` with every server path replaced by ``[path]``."""
    return _SERVER_PATH.sub(HIDDEN_PATH, text)


def public_text(text: str) -> str:
    """`text` as this request's caller may see it: server paths only for admins (and logs)."""
    if not has_request_context():
        return text  # the CLI, logs: the operator's own
    shows: Callable[[], bool] | None = current_app.extensions.get(SHOWS_PATHS_KEY)
    return text if shows is not None and shows() else hide_paths(text)


#: Every code a client can receive, with its HTTP status (docs/API.md, "Error codes").
STATUS_BY_CODE: dict[str, int] = {
    "input.missing": 400,
    "input.ambiguous": 400,
    "input.invalid": 400,
    "input.unsupported_media_type": 415,
    "image.empty": 400,
    "image.corrupt": 400,
    "image.unsupported_format": 415,
    "image.too_large": 413,
    "image.too_many_pixels": 413,
    "image.busy": 503,
    "url.invalid": 400,
    "url.forbidden": 400,
    "url.unreachable": 422,
    "url.bad_status": 422,
    "url.not_image": 422,
    "url.too_many_redirects": 422,
    "url.too_large": 413,
    "url.timeout": 504,
    "image_id.invalid": 400,
    "image_id.not_found": 404,
    "image.not_valid": 409,
    "auth.required": 401,
    "auth.forbidden": 403,
    "rate.limited": 429,
    "model.not_ready": 503,
    "model.busy": 503,
    "model.unavailable": 503,
    "store.unavailable": 503,
    # Jobs (faceapp/jobs/): the queue, a job, and the zip archive a job may come from.
    "jobs.unavailable": 503,
    "jobs.too_many_items": 413,
    "jobs.too_many_active": 429,
    "job.not_found": 404,
    "job.finished": 409,
    "archive.invalid": 400,
    "archive.too_large": 413,
    # Result lines of archive entries that are not taken (never an HTTP answer's status).
    "archive.bad_name": 422,
    "archive.nested": 422,
    "archive.bad_entry": 422,
    "request.too_large": 413,
    "request.method_not_allowed": 405,
    "route.not_found": 404,
    "internal": 500,
}

# Werkzeug exceptions raised outside our code (routing, body limits) and the code each becomes.
_CODE_BY_HTTP_STATUS = {
    400: "input.invalid",
    401: "auth.required",
    403: "auth.forbidden",
    404: "route.not_found",
    405: "request.method_not_allowed",
    413: "request.too_large",
    415: "image.unsupported_format",
    429: "rate.limited",
}


class FaceappError(Exception):
    """An error with a stable code, a one-sentence message and (optionally) the field at fault."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": public_text(self.message)}
        if self.field:
            body["field"] = self.field
        return {"error": body}


def public_error(error: FaceappError) -> FaceappError:
    """The same error with the message this request's caller may see (pages render it)."""
    shown = FaceappError(error.code, public_text(error.message), field=error.field)
    for name, value in vars(error).items():  # line, retry_after, valid_methods...
        if name != "message":
            setattr(shown, name, value)
    return shown


def error_response(error: FaceappError) -> Response:
    """Render an error in the API's envelope (JSON, or YAML when the client asked for it)."""
    from faceapp.output import render  # late: output imports nothing from here at import time

    response = render(error.to_dict(), status=error.status)
    if getattr(error, "retry_after", None):  # a limit that knows when it frees up
        response.headers["Retry-After"] = str(error.retry_after)
    if error.code == "request.method_not_allowed" and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _from_http_exception(exc: HTTPException) -> FaceappError:
    status = exc.code or 500
    code = _CODE_BY_HTTP_STATUS.get(status, "internal")
    if status == 413 and _form_too_large():
        config = current_app.config
        message = (
            f"The form has too many fields (at most {config.get('MAX_FORM_PARTS')}) or a "
            f"text field over {human_bytes(config.get('MAX_FORM_MEMORY_SIZE') or 0)}."
        )
        code = "request.too_large"
    elif status == 413:
        limit = human_bytes(current_app.config.get("MAX_UPLOAD_BYTES") or 0)
        message = f"The request body is too large (the largest accepted image is {limit})."
        code = "image.too_large"
    elif code == "internal":
        message = "The server could not answer this request."
    else:
        message = exc.description or exc.name
    error = FaceappError(code, message.split("\n")[0])
    error.valid_methods = getattr(exc, "valid_methods", None)
    return error


def human_bytes(count: int) -> str:
    """A size in words: ``10 MiB``, ``1.5 KiB``, ``512 bytes``."""
    if count < 1024:
        return f"{count} bytes"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f}".removesuffix(".0") + f" {unit}"


def human_pixels(count: int) -> str:
    """A pixel count in words: ``40 MP``, ``2.5 MP``, ``640,000 pixels``."""
    if count < 1_000_000:
        return f"{count:,} pixels"
    return f"{count / 1_000_000:.1f}".removesuffix(".0") + " MP"


def _form_too_large() -> bool:
    """A 413 for a body within MAX_CONTENT_LENGTH: the form parser's part or field limits hit."""
    length, limit = request.content_length, current_app.config.get("MAX_CONTENT_LENGTH")
    return length is not None and limit is not None and length <= limit


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that give every failure the JSON envelope and no traceback."""

    @app.errorhandler(FaceappError)
    def _faceapp_error(error: FaceappError):
        # model.not_ready was logged once, when the load failed; not again for every request.
        if error.status >= 500 and error.code != "model.not_ready":
            log.warning("answered %s: %s", error.code, error.message)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        pages = current_app.extensions.get(PAGE_ERRORS_KEY)
        unrouted_page = request.blueprint is None and (
            request.path == "/app" or request.path.startswith("/app/")
        )
        if pages is not None and unrouted_page:
            return pages(exc)
        return error_response(_from_http_exception(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # the one catch-all: log it, answer without details
        log.exception("unhandled error (request %s)", g.get("request_id", "-"))
        return error_response(
            FaceappError("internal", "The server hit an unexpected error; it has been logged.")
        )
