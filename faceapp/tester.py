"""The tester pages under /app: server-rendered forms for QA staff (API.md, "Tester pages").

They call the same service functions as the JSON API (never the API over HTTP), work without
JavaScript (post, redirect, get), and answer every failure as an HTML page with the message.
Served only when TESTER_ENABLED is true; the forms carry Flask-WTF CSRF tokens.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect
from marshmallow import Schema, fields, validate
from PIL import Image
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from faceapp import services
from faceapp.analysis import analyzers
from faceapp.config import instance_secret_key
from faceapp.errors import FaceappError
from faceapp.face_models import models
from faceapp.inputs import pick_source
from faceapp.model_files import read_manifest, resolve_model_folder
from faceapp.output import dump_yaml, to_plain
from faceapp.schemas import Flag, parse
from faceapp.store import store

log = logging.getLogger(__name__)

bp = Blueprint("tester", __name__, url_prefix="/app")
csrf = CSRFProtect()

RECENT_LIMIT = 24
THUMBNAIL_SIDE = 160
# Pages allow nothing inline and nothing from elsewhere: no inline script, style or style="".
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
OPTION_FLAGS = ("include_embedding", "wipe_cache", "force")


def init_app(app: Flask) -> None:
    """Serve the pages, with CSRF-checked forms (the key-authenticated JSON API is exempt)."""
    from faceapp import api

    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = instance_secret_key(app.instance_path)
    csrf.init_app(app)
    csrf.exempt(api.bp)
    app.register_blueprint(bp)


class UploadForm(Schema):
    """The upload form's options (the image itself is `file` or `image_url`)."""

    wipe_cache = Flag(load_default=False)


class AnalyzeForm(Schema):
    """The Analyze form: free-text labels (one per line) and the analysis options."""

    labels = fields.List(
        fields.String(validate=validate.Length(min=1, max=200)),
        validate=validate.Length(max=32),
        load_default=list,
    )
    include_embedding = Flag(load_default=False)
    wipe_cache = Flag(load_default=False)
    force = Flag(load_default=False)


def analysis_options(data: MultiDict) -> dict[str, Any]:
    """The Analyze options from a form or a query string (labels one per line, or repeated)."""
    labels = [line.strip() for value in data.getlist("labels") for line in value.splitlines()]
    given = {name: data[name] for name in OPTION_FLAGS if name in data}
    return parse(AnalyzeForm(), {**given, "labels": [label for label in labels if label]})


def upload_options(data: MultiDict) -> dict[str, Any]:
    """The upload form's options (the CSRF token and the image itself are not among them)."""
    return parse(UploadForm(), {name: data[name] for name in ("wipe_cache",) if name in data})


# -- views -------------------------------------------------------------------------------------


@bp.get("")
def index() -> str:
    """The upload form and the recently stored images."""
    return render_index()


@bp.post("")
def upload() -> Response | tuple[str, int]:
    """Validate an upload or image_url (as /api/validate does), then show its page."""
    try:
        source = pick_source(request.form, request.files)
        meta = services.ingest(source, **upload_options(request.form))
    except FaceappError as error:
        return render_index(error), error.status
    return redirect(url_for(".image_page", image_id=meta["image_id"]))


@bp.get("/images/<image_id>")
def image_page(image_id: str) -> str | tuple[str, int]:
    """An image: preview with faces, validation, the latest analysis asked for, and its trace."""
    meta = services.image_record(image_id)
    if not request.args.get("analyze"):
        return render_image_page(meta)
    options = {**analysis_options(request.args), "wipe_cache": False}  # a GET never wipes
    # Rendering never loads the model. After Analyze the result is read back (a cache hit, and
    # the trace says so) when this worker's model is ready; the page says why when it is not.
    if models.peek() is None:
        return render_image_page(meta, options=options, pending=True)
    try:
        analysis = services.analyze(None, image_id, **options)
    except FaceappError as error:
        return render_image_page(meta, error=error, options=options), error.status
    return render_image_page(meta, analysis=analysis, options=options)


@bp.post("/images/<image_id>")
def analyze(image_id: str) -> Response | tuple[str, int]:
    """Analyze the image, then redirect back to its page with the options (post/redirect/get)."""
    meta = services.image_record(image_id)
    try:
        options = analysis_options(request.form)
        services.analyze(None, image_id, **options)
    except FaceappError as error:
        return render_image_page(meta, error=error, options=submitted_options()), error.status
    # wipe_cache is done with; the redirected page asks for the same result again.
    flags = {name: 1 for name in ("include_embedding", "force") if options[name]}
    return redirect(
        url_for(
            ".image_page", image_id=image_id, analyze=1, labels=options["labels"] or None, **flags
        )
    )


@bp.get("/images/<image_id>/image.png")
def image_png(image_id: str) -> Response:
    """The stored image's preview (content-addressed, so it may be cached; a JPEG since v2)."""
    return _image_response(services.image_preview(image_id), "image/jpeg")


@bp.get("/images/<image_id>/thumbnail.jpg")
def thumbnail(image_id: str) -> Response:
    """A small JPEG of the stored image for the recent list."""
    image = Image.open(io.BytesIO(services.image_preview(image_id)))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=80)
    return _image_response(buffer.getvalue(), "image/jpeg")


# -- rendering ---------------------------------------------------------------------------------


def render_index(error: FaceappError | None = None) -> str:
    """The upload form (refilled, with the error when there is one) and the recent images."""
    image_url = request.form.get("image_url", "") if error else ""
    return render_template(
        "tester/index.html",
        recent=store.backend.recent(RECENT_LIMIT),
        error=error,
        image_url=image_url,
    )


def render_image_page(
    meta: dict,
    *,
    analysis: dict | None = None,
    error: FaceappError | None = None,
    options: dict | None = None,
    pending: bool = False,
) -> str:
    """The image page for stored metadata, with an analysis and an error where there are."""
    image_id = meta["image_id"]
    validation = services.validation_answer(meta)
    return render_template(
        "tester/image.html",
        meta=meta,
        validation=validation,
        validation_json=pretty_json(validation),
        analysis=analysis,
        analysis_json=pretty_json(analysis) if analysis else None,
        analysis_yaml=dump_yaml(to_plain(analysis)) if analysis else None,
        trace_rows=[trace_row(event) for event in services.image_trace(image_id)["events"]],
        error=error,
        options=options or {"labels": []},
        pending=pending,
    )


def trace_row(event: dict) -> dict[str, Any]:
    """One trace event as a table row: the fixed columns, then its other keys in words."""
    fixed = ("event", "time", "worker_pid", "request_id", "timings_ms", "cached")
    details = [
        (key.replace("_", " "), _words(value))
        for key, value in event.items()
        if key not in fixed and value not in ([], None, "")
    ]
    return {
        "event": event.get("event", "?"),
        "time": event.get("time", ""),
        "worker_pid": event.get("worker_pid", ""),
        "request_id": event.get("request_id", ""),
        "cached": event.get("cached"),
        "timings": list((event.get("timings_ms") or {}).items()),
        "details": details,
    }


def _words(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def submitted_options() -> dict | None:
    """The submitted options to refill the form with, or None when they do not parse."""
    try:
        return analysis_options(request.form)
    except FaceappError:
        return None


def pretty_json(document: Any) -> str:
    """A document as indented JSON, for reading."""
    return json.dumps(to_plain(document), indent=2, ensure_ascii=False)


def _image_response(data: bytes, mimetype: str) -> Response:
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.context_processor
def model_status() -> dict[str, Any]:
    """What every page's banners say about this worker's model, without loading it."""
    model = models.peek()
    if model is not None:
        return {
            "model_ready": True,
            "model_info": analyzers.peek().describe(),
            "random_weights": model.random_weights,
            "model_reason": "",
        }
    return {
        "model_ready": False,
        "model_info": None,
        "random_weights": configured_random_weights(),
        "model_reason": models.reason(),
    }


def configured_random_weights() -> bool:
    """Whether the configured model folder's manifest says random weights (read, not loaded)."""
    config = current_app.config
    folder = resolve_model_folder(config["MODEL_NAME"], config["MODELS_DIR"])
    try:
        manifest = read_manifest(folder) if folder else None
    except (OSError, ValueError):
        return False
    return bool(manifest and manifest.get("random_weights"))


@bp.after_request
def security_headers(response: Response) -> Response:
    """A strict CSP and friends on every tester response."""
    response.headers.update(SECURITY_HEADERS)
    return response


# -- errors: pages answer in HTML, never in the API's JSON envelope -----------------------------


@bp.errorhandler(FaceappError)
def faceapp_error_page(error: FaceappError) -> tuple[str, int]:
    return render_template("tester/error.html", error=error, status=error.status), error.status


@bp.errorhandler(CSRFError)
def csrf_error_page(error: CSRFError) -> tuple[str, int]:
    message = f"The form could not be accepted: {error.description} Reload the page and try again."
    return render_template("tester/error.html", message=message, status=400), 400


@bp.errorhandler(HTTPException)
def http_error_page(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    if status == 413:  # the body is over MAX_CONTENT_LENGTH: say so as the upload form would
        limit = current_app.config["MAX_UPLOAD_BYTES"]
        message = f"The upload is too large: the largest image accepted is {limit} bytes."
        too_large = FaceappError("image.too_large", message)
        if request.endpoint == "tester.upload":
            return render_template(
                "tester/index.html", error=too_large, recent=store.backend.recent(RECENT_LIMIT)
            ), 413
        return faceapp_error_page(too_large)
    message = (error.description or error.name).split("\n")[0]
    return render_template("tester/error.html", message=message, status=status), status


@bp.errorhandler(Exception)
def unexpected_error_page(exc: Exception) -> tuple[str, int]:
    """Anything else: logged with the request id (as errors.py does), answered as a page."""
    log.exception("unhandled error (request %s)", g.get("request_id", "-"))
    return faceapp_error_page(
        FaceappError("internal", "The server hit an unexpected error; it has been logged.")
    )
