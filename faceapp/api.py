"""The JSON API under /api (docs/API.md). Views parse, call one service function, and render."""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, request
from werkzeug.routing import PathConverter

from faceapp import analysis, openapi, services
from faceapp.access import admin_required, check_api_key
from faceapp.errors import FaceappError
from faceapp.face_models import models
from faceapp.inputs import pick_source
from faceapp.jobs import service as job_service
from faceapp.output import dump_json, render
from faceapp.schemas import AnalyzeRequest, ValidateRequest, parse, request_fields, yes_no
from faceapp.store import store

bp = Blueprint("api", __name__, url_prefix="/api")
bp.before_request(check_api_key)

# One instance each, shared by every request: a marshmallow schema keeps no state between
# loads, and making one deep-copies its declared fields (0.2 ms a request).
VALIDATE_REQUEST, ANALYZE_REQUEST = ValidateRequest(), AnalyzeRequest()


class ImageIdConverter(PathConverter):
    """An image_id in a URL: any text, slashes too (a malformed id is 400 image_id.invalid, not
    404), except text ending in ``/trace``: that is the trace's route, so OPTIONS on a trace
    does not offer the image's DELETE."""

    regex = r"[^/](?:(?!/trace$)[\s\S])*?"


# Before the routes below: the converter must be known when they are added to the app.
bp.record_once(lambda state: state.app.url_map.converters.setdefault("image_id", ImageIdConverter))


def _flag(name: str) -> bool:
    """A yes/no query parameter (absent: no); anything else is 400 input.invalid."""
    value = request.args.get(name, "")
    try:
        return yes_no(value)
    except ValueError:
        # The value is the client's text: echo a few characters of it, never kilobytes.
        shown = value if len(value) <= 16 else value[:16] + "…"
        raise FaceappError(
            "input.invalid",
            f"?{name}: {shown!r} is not a yes/no value (true/false, yes/no, on/off, 1/0).",
            field=name,
        ) from None


@bp.post("/validate")
def validate() -> Response:
    """Store an image under its image_id and check it."""
    options = parse(VALIDATE_REQUEST, request_fields(request))
    source = pick_source(options, request.files)
    answer = services.validate(source, wipe_cache=options["wipe_cache"], details=_flag("details"))
    return render(answer)


@bp.post("/analyze")
def analyze() -> Response:
    """Score the faces of an image (by image_id, or sent now) for the attribute set and labels."""
    options = parse(ANALYZE_REQUEST, request_fields(request))
    source = pick_source(options, request.files, image_id=options.get("image_id", ""))
    answer = services.analyze(
        source,
        options.get("image_id"),
        attributes=options.get("attributes"),
        labels=options.get("labels"),
        include_embedding=options["include_embedding"],
        wipe_cache=options["wipe_cache"],
        force=options["force"],
        max_faces=options.get("max_faces"),
    )
    return render(answer)


@bp.get("/attributes")
def attributes() -> Response:
    """The attribute set in use: names, labels, prompts and its version."""
    return render(analysis.attribute_set().to_dict())


@bp.post("/setup")
@admin_required
def setup() -> Response:
    """Load and warm this worker's model now (idempotent; retries a failed load)."""
    model = models.load(retry=True)
    if model is None:
        models.get()  # raises 503 model.not_ready with the reason (paths shown: an admin)
    return render(
        {
            "ready": True,
            "model": services.describe_model(analysis.analyzer()),
            "load_ms": model.load_ms,
            "warmup_ms": model.warmup_ms,
            "worker": {"pid": os.getpid()},
        }
    )


@bp.get("/health")
def health() -> Response:
    """Liveness: this process serves."""
    return render({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Readiness: the store answers and takes writes, and this worker's model is loaded and warm."""
    store.backend.ping()  # 503 store.unavailable when it does not
    model = models.peek()
    if model is None:  # never loads: a probe must answer at once
        raise FaceappError("model.not_ready", f"The model is not ready ({models.reason()}).")
    # The detector is in the answer: a Haar fallback (YuNet missing) is ready, but says so.
    described = services.describe_model(analysis.analyzer())
    answer = {"ready": True, "model": described, "worker": {"pid": os.getpid()}}
    # What a client cannot learn elsewhere: flask batch --server writes max_faces on the lines
    # of photos it does not analyse.
    limits = {
        "max_faces": current_app.config["MAX_FACES"],
        "max_faces_limit": current_app.config["MAX_FACES_LIMIT"],
    }
    return render({**answer, "limits": limits, "jobs": job_service.readiness()})


@bp.get("/images/<image_id:image_id>/trace")
def image_trace(image_id: str) -> Response:
    """Every event of an image_id, oldest first."""
    return render(services.image_trace(image_id))


@bp.get("/images/<image_id:image_id>")
def image_record(image_id: str) -> Response:
    """Stored metadata and the validation result of an image_id."""
    return render(services.image_record(image_id))


@bp.delete("/images/<image_id:image_id>")
@admin_required
def delete_image(image_id: str) -> Response:
    """Forget an image, its results and its trace (admin)."""
    return render(services.delete_image(image_id))


@bp.post("/cache/wipe")
@admin_required
def wipe_cache() -> Response:
    """Forget every stored image and result (admin)."""
    return render(services.wipe_all())


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3 document of this API (needs a key when API_KEYS is set, like the rest)."""
    return Response(dump_json(openapi.document()), mimetype="application/json")
