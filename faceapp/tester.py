"""The tester pages under /app: server-rendered forms for QA staff.

What they show and how they are used: README.md, "The tester pages".

They call the same service functions as the JSON API (never the API over HTTP), work without
JavaScript (post, redirect, get), and answer every failure as an HTML page with the message.
Served only when TESTER_ENABLED is true; the forms carry Flask-WTF CSRF tokens.

The pages keep the API's rules: with API_KEYS set they need a key (the login form, or the API's
own headers), the rate limits count them, and the recent list shows only the caller's uploads
(everything to an admin key). An Analyze runs once, in its POST: what it computed is kept as a
"tester run" beside the image's results, and the page it redirects to only reads that back.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter import RateLimitExceeded
from flask_wtf.csrf import CSRFError, CSRFProtect
from PIL import Image
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from faceapp import access, security, services
from faceapp.analysis import analyzers, attribute_set
from faceapp.config import instance_secret_key
from faceapp.errors import PAGE_ERRORS_KEY, FaceappError, human_bytes, public_error, public_text
from faceapp.extension import Slot
from faceapp.face_models import models
from faceapp.forms import analysis_options, labels_text, submitted_options, upload_options
from faceapp.inputs import pick_source
from faceapp.model_files import random_weights_configured
from faceapp.output import dump_yaml, to_plain
from faceapp.store import IMAGE_ID_RE, store

log = logging.getLogger(__name__)

bp = Blueprint("tester", __name__, url_prefix="/app")
bp.add_app_template_filter(human_bytes, "human_bytes")  # "772 bytes", "1.2 MiB", as errors say
# The tester's state is its error page, which errors.py asks for under this key.
SLOT = Slot(PAGE_ERRORS_KEY, "faceapp.tester.init_app(app)")
csrf = CSRFProtect()

RECENT_LIMIT = 24
THUMBNAIL_SIDE = 160
OPEN_ENDPOINTS = {"tester.login", "tester.logout"}
IMAGE_PAGE_RE = re.compile(r"^/app/images/([0-9a-f]{64})$")
# The service's messages speak to API clients (image_base64, "send force=true", /api/validate);
# a page says instead what its own forms offer.
PAGE_MESSAGES = {
    "input.missing": "No image was given: choose a photo file or paste an image URL.",
    "input.ambiguous": "Give a photo file or an image URL, not both.",
    "image_id.not_found": "No image is stored under this id: it expired, was wiped or never "
    "existed. Upload the photo again.",
    "image.not_valid": "The image failed validation (its errors are listed under Validation); "
    "Analyze anyway (force) analyses it all the same.",
}

# services.stale_reason's codes, as the image page says them.
STALE_REASONS = {
    "detector_changed": "by another face detector than the one in use now",
    "rules_changed": "under other validation settings (thresholds such as MIN_FACE_PX or "
    "BLUR_THRESHOLD, or STORED_MAX_SIDE)",
}


def init_app(app: Flask) -> None:
    """Serve the pages, with CSRF-checked forms (the key-authenticated JSON API is exempt).

    The Jobs page (faceapp/jobs/pages.py) adds its routes to this blueprint when it is imported:
    create_app imports it first, so that this module need not import it back.
    """
    from faceapp import api
    from faceapp.jobs import api as jobs_api

    SLOT.check_free(app)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = instance_secret_key(app.instance_path)
    csrf.init_app(app)
    csrf.exempt(api.bp)
    csrf.exempt(jobs_api.bp)
    access.init_app(app, lambda: store.backend)  # sign-out ends a sign-in server-side
    app.register_blueprint(bp)
    SLOT.register(app, http_error_page)  # /app/<no such page> answers a page too


def for_page(error: FaceappError | None) -> FaceappError | None:
    """The error in a page's words where the service's message gives an API client's advice,
    with server paths for admins only."""
    if error is None:
        return None
    if error.code not in PAGE_MESSAGES:
        return public_error(error)
    worded = FaceappError(error.code, PAGE_MESSAGES[error.code], field=error.field)
    worded.line = getattr(error, "line", None)
    return worded


# -- who may see the pages -----------------------------------------------------------------------


@bp.before_request
def require_key() -> Response | None:
    """With API_KEYS set, every page needs a key: a signed-in session or the API's headers."""
    if not access.keys_required() or request.endpoint in OPEN_ENDPOINTS:
        return None
    caller = access.current_caller()
    if caller.key_id is not None:
        return None
    if caller.sent_unknown_key:
        raise FaceappError("auth.required", "The key sent is not one this service accepts.")
    if request.endpoint == "tester.analyze":  # keep what was typed through the sign-in
        target = url_for(".image_page", image_id=request.view_args["image_id"])
        return render_login(target, pending=request.form), 401
    return redirect(url_for(".login", next=request.full_path.rstrip("?")), 303)


def session_ended() -> bool:
    """Whether this browser signed in with a key that is no longer accepted."""
    return access.SESSION_KEY_ID in session and access.current_caller().key_id is None


def render_login(
    target: str, *, pending: MultiDict | None = None, error: FaceappError | None = None
) -> str:
    """The sign-in form, saying why it is shown, with an interrupted Analyze's fields kept."""
    kept = None
    if pending is not None and IMAGE_PAGE_RE.match(target):
        kept = {
            "lines": labels_text(pending).splitlines(),  # one hidden field each, blanks too
            **{name: name in pending for name in ("include_embedding", "force")},
        }
    return render_template(
        "tester/login.html",
        next=target,
        error=error,
        ended=session_ended(),
        pending=kept,
        pending_labels=[line.strip() for line in kept["lines"] if line.strip()] if kept else [],
    )


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int]:
    """Sign in with an API key; the session then holds the key's id (never the key).

    Without API_KEYS there is nothing to sign in to: the page says so and a post goes on.
    An Analyze interrupted by signing in comes back on its image page with its fields filled.
    """
    target = safe_next(request.values.get("next", ""))
    pending = request.form if "pending_analyze" in request.form else None
    if not access.keys_required():
        if request.method == "GET":
            return render_template("tester/login.html", next=target, open_service=True), 200
        return redirect(target, 303)
    if request.method == "GET":
        return render_login(target), 200
    try:
        access.sign_in(request.form.get("key", "").strip())
    except FaceappError as error:
        return render_login(target, pending=pending, error=error), error.status
    match = IMAGE_PAGE_RE.match(target)
    if pending is not None and match:
        meta = services.image_record(match.group(1))
        options = {
            "labels": [],
            **{name: name in pending for name in ("include_embedding", "force")},
        }
        notice = "Signed in. What you typed is back in the form: press Analyze to run it."
        return render_image_page(
            meta, options=options, typed_labels=labels_text(pending), notice=notice
        )
    return redirect(target, 303)


@bp.post("/logout")
def logout() -> Response:
    """Forget this browser's key."""
    access.sign_out()
    return redirect(url_for(".login"), 303)


def safe_next(target: str) -> str:
    """Where to go after signing in: a path under /app on this site, else the upload form."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/app") or "\\" in target:
        return url_for(".index")
    return target


# -- views -------------------------------------------------------------------------------------


@bp.get("")
def index() -> str | tuple[str, int]:
    """The upload form and the recently stored images."""
    if request.args.get("error") == "too_large":  # nginx refused the body (deploy/ config)
        return render_index(upload_too_large("the proxy in front refused it")), 413
    return render_index()


@bp.post("")
def upload() -> Response | tuple[str, int]:
    """Validate an upload or image_url (as /api/validate does), then show its page."""
    form = request.form.copy()
    if "image_url" in form:  # a pasted URL often brings a space or a line break with it
        form["image_url"] = form["image_url"].strip()
    try:
        source = pick_source(form, request.files)
        meta = services.ingest(source, **upload_options(form))
    except FaceappError as error:
        return render_index(error, image_url=form.get("image_url", "")), error.status
    return redirect(url_for(".image_page", image_id=meta["image_id"]), 303)


@bp.get("/images/<image_id>")
def image_page(image_id: str) -> str | tuple[str, int]:
    """An image: preview with faces, validation, a tester run when one is asked for, its trace."""
    meta = services.image_record(image_id)
    run_id = request.args.get("run")
    if run_id is None:
        return render_image_page(meta)
    run = services.tester_run(image_id, run_id)
    if run is None:
        gone = (
            "This analysis is no longer stored, or is another key's (a wipe of the cache drops "
            "it: an admin's, or its own key's)"
        )
        options = services.tester_run_options(image_id, run_id)
        if options is None:
            return render_image_page(meta, notice=gone + "; press Analyze to run it again."), 404
        notice = (
            gone + ". Its labels and options are back in the form: press Analyze to run it again."
        )
        return render_image_page(meta, notice=notice, options=options), 404
    return render_image_page(meta, run=run, options=run["options"])


@bp.post("/images/<image_id>")
def analyze(image_id: str) -> Response | tuple[str, int]:
    """Analyze once, keep what was computed as a tester run, and redirect to it (PRG).

    The run's id goes into the request's trace event too, so that a run dropped by a wipe can
    still refill the form; the redirect lands on the result (#analysis), not the page's top.
    """
    meta = services.image_record(image_id)
    options = None
    run_id = secrets.token_urlsafe(12)
    try:
        options = analysis_options(request.form)
        analysis = services.analyze(None, image_id, **options, trace_extra={"tester_run": run_id})
    except FaceappError as error:
        options = options or submitted_options(request.form)
        page = render_image_page(meta, error=error, options=options)
        return page, error.status
    run = {
        "run_id": run_id,
        "created_at": services.now_iso(),
        "options": options,
        "key_id": access.current_caller().key_id,  # whose run: only that key (or an admin) sees it
        "abstain_below": abstain_thresholds(),
        "analysis": analysis,
    }
    services.save_tester_run(image_id, run)
    return redirect(url_for(".image_page", image_id=image_id, run=run_id, _anchor="analysis"), 303)


@bp.post("/images/<image_id>/validate")
def revalidate(image_id: str) -> Response:
    """Validate again a stored image whose validation was made under other settings (another
    detector, other thresholds), then show its page."""
    services.revalidate_if_stale(image_id)
    return redirect(url_for(".image_page", image_id=image_id), 303)


def abstain_thresholds() -> dict[str, float]:
    """The margin each attribute needs to answer, for those that abstain below one."""
    return {
        name: attribute.abstain_below
        for name, attribute in attribute_set().attributes.items()
        if attribute.abstain_below is not None
    }


@bp.get("/images/<image_id>/preview.jpg")
def preview(image_id: str) -> Response:
    """The stored image's preview (a JPEG of at most 1024 px, written at validation)."""
    return Response(services.image_preview(image_id), mimetype="image/jpeg")


@bp.get("/images/<image_id>/thumbnail.jpg")
def thumbnail(image_id: str) -> Response:
    """A small JPEG of the stored image for the recent list."""
    image = Image.open(io.BytesIO(services.image_preview(image_id)))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=80)
    return Response(buffer.getvalue(), mimetype="image/jpeg")


# -- rendering ---------------------------------------------------------------------------------


def render_index(error: FaceappError | None = None, image_url: str = "") -> str:
    """The upload form (refilled, with the error when there is one) and the recent images."""
    return render_template(
        "tester/index.html",
        recent=services.recent_uploads(access.current_caller(), RECENT_LIMIT),
        error=for_page(error),
        image_url=image_url,
    )


def render_image_page(
    meta: dict,
    *,
    run: dict | None = None,
    error: FaceappError | None = None,
    notice: str | None = None,
    options: dict | None = None,
    typed_labels: str | None = None,
) -> str:
    """The image page for stored metadata, with a tester run and an error where there are.

    The labels box shows `typed_labels` when given, else what an error came with, else the
    labels of `options`.
    """
    image_id = meta["image_id"]
    validation = services.validation_answer(meta)
    analysis = run["analysis"] if run else None
    events = services.image_trace(image_id)["events"]
    last_upload = next((e for e in reversed(events) if e.get("event") == "validated"), {})
    options = options or {"labels": []}
    if typed_labels is None:
        typed_labels = labels_text(request.form) if error else "\n".join(options["labels"])
    return render_template(
        "tester/image.html",
        meta=meta,
        # A validation made under other settings is shown as it was, said so, with Validate again.
        stale=STALE_REASONS.get(services.stale_reason(meta, current_app.config)),
        source=last_upload.get("source") or meta.get("source"),
        source_name=last_upload.get("name"),
        validation=validation,
        validation_json=pretty_json(validation),
        run=run,
        analysis=analysis,
        analysis_json=pretty_json(analysis) if analysis else None,
        analysis_yaml=dump_yaml(to_plain(analysis)) if analysis else None,
        trace_rows=[trace_row(event) for event in events],
        error=for_page(error),
        notice=notice,
        options=options,
        labels_text=typed_labels,
        error_line=getattr(error, "line", None),
        # A run keeps the thresholds it was scored with; older runs show the current ones.
        abstain_below=run["abstain_below"]
        if run and "abstain_below" in run
        else abstain_thresholds(),
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
        return " · ".join(str(item) for item in value)
    return str(value)


def pretty_json(document: Any) -> str:
    """A document as indented JSON, for reading."""
    return json.dumps(to_plain(document), indent=2, ensure_ascii=False)


def upload_too_large(why: str) -> FaceappError:
    """413 image.too_large, as the upload form shows it."""
    limit = human_bytes(current_app.config["MAX_UPLOAD_BYTES"])
    message = f"The upload is too large ({why}): the largest image accepted is {limit}."
    return FaceappError("image.too_large", message)


@bp.context_processor
def page_context() -> dict[str, Any]:
    """What every page says about this worker's model (without loading it) and the caller."""
    caller = access.current_caller()
    signed_in = {
        "keys_required": access.keys_required(),
        "caller": caller,
        "session_key": request.blueprint == "tester" and access.presented_key() is None,
    }
    model = models.peek()
    if model is not None:
        return {
            **signed_in,
            "model_status": "ready",
            "model_info": analyzers.peek().describe(),
            "random_weights": model.random_weights,
            "model_reason": "",
        }
    return {
        **signed_in,
        "model_status": models.status(),
        "model_info": None,
        "random_weights": random_weights_configured(current_app.config),
        "model_reason": public_text(models.reason()),
    }


# -- errors: pages answer in HTML, never in the API's JSON envelope -----------------------------


@bp.errorhandler(FaceappError)
def faceapp_error_page(error: FaceappError) -> tuple[str, int, dict]:
    page = render_template("tester/error.html", error=for_page(error), status=error.status)
    retry = getattr(error, "retry_after", None)  # a limit that knows when it frees up
    return page, error.status, ({"Retry-After": str(retry)} if retry else {})


@bp.errorhandler(CSRFError)
def csrf_error_page(error: CSRFError) -> tuple[str, int]:
    """An expired or missing token: a link back to the same page with a fresh form."""
    image_id = (request.view_args or {}).get("image_id", "")
    if request.endpoint == "tester.analyze" and IMAGE_ID_RE.fullmatch(image_id):
        back, where = url_for(".image_page", image_id=image_id), "the image"
    elif request.endpoint == "tester.login":
        back, where = url_for(".login"), "the sign-in form"
    else:
        back, where = url_for(".index"), "the upload form"
    message = f"The form could not be accepted: {error.description}"
    return render_template(
        "tester/error.html", message=message, status=400, back=back, back_label=where
    ), 400


@bp.errorhandler(RateLimitExceeded)
def rate_limited_page(exc: RateLimitExceeded) -> tuple[str, int, dict]:
    wait = security.retry_after_seconds()
    error = FaceappError("rate.limited", security.rate_limited_message(exc, wait))
    page = render_template("tester/error.html", error=error, status=429)
    return page, 429, {"Retry-After": str(wait)}


@bp.errorhandler(HTTPException)
def http_error_page(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    if status == 413:  # the body is over MAX_CONTENT_LENGTH: say so as the upload form would
        too_large = upload_too_large("over the request size limit")
        if request.endpoint == "tester.upload":
            return render_index(too_large), 413
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
