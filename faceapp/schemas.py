"""Marshmallow schemas: what each endpoint accepts, and the documents it answers with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Request
from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate

from faceapp.config import FALSE_WORDS, TRUE_WORDS, yes_no  # the one yes/no parser
from faceapp.errors import STATUS_BY_CODE, FaceappError


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_WORDS = "|".join(sorted(_any_case(word) for word in TRUE_WORDS | FALSE_WORDS if word))
#: What a :class:`Flag` accepts, as JSON Schema: a boolean, 0 or 1, or a yes/no word in any case.
FLAG_SCHEMA = {
    "anyOf": [
        {"type": "boolean"},
        {"type": "integer", "enum": [0, 1]},
        {"type": "string", "pattern": f"^\\s*({_WORDS})?\\s*$"},
    ]
}


class Flag(fields.Boolean):
    """A boolean field that reads the usual form spellings through :func:`yes_no`
    (faceapp/openapi.py documents it as :data:`FLAG_SCHEMA`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        try:
            return yes_no(value)
        except ValueError:
            raise self.make_error("invalid", input=value) from None


class SourceSchema(Schema):
    """The image sources (the multipart `file` travels beside these, in request.files)."""

    class Meta:
        unknown = RAISE

    image_url = fields.String(validate=validate.Length(min=1, max=4096))
    image_base64 = fields.String(validate=validate.Length(min=1))
    wipe_cache = Flag(load_default=False)

    #: Exactly one of these is sent (faceapp/openapi.py says so with oneOf).
    SOURCES: tuple[str, ...] = ("image_url", "image_base64")


class ValidateRequest(SourceSchema):
    """POST /api/validate."""


#: A request's free-text labels: at most this many, each at most this long (the tester's forms
#: check the same, faceapp/forms.py).
MAX_LABELS, MAX_LABEL_CHARS = 32, 200


def distinct_labels(labels: list[str]) -> None:
    """Refuse a label given twice (case aside: CLIP lowercases, so both would score the same)."""
    seen: set[str] = set()
    for label in labels:
        if label.casefold() in seen:
            raise ValidationError(f"{label[:64]!r} is given twice; give each label once.")
        seen.add(label.casefold())


class AnalysisOptions(Schema):
    """What to compute for an image (POST /api/analyze, and every item of a job)."""

    class Meta:
        unknown = RAISE

    attributes = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)), validate=validate.Length(max=64)
    )
    labels = fields.List(
        fields.String(validate=validate.Length(min=1, max=MAX_LABEL_CHARS)),
        validate=[validate.Length(max=MAX_LABELS), distinct_labels],
    )
    include_embedding = Flag(load_default=False)
    force = Flag(load_default=False)
    # The upper bound is the operator's MAX_FACES_LIMIT (analysis.check_max_faces), which the
    # document states as this field's maximum (faceapp/openapi.py).
    max_faces = fields.Integer(
        validate=validate.Range(min=1),
        metadata={
            "description": "Analyse at most this many faces, the main face first, then the "
            "largest (MAX_FACES); the answer's face_count says how many were left out. The "
            "maximum is this service's MAX_FACES_LIMIT; more is 400 input.invalid."
        },
    )


class AnalyzeRequest(SourceSchema, AnalysisOptions):
    """POST /api/analyze: an image_id or an image source, and what to compute."""

    SOURCES = ("image_id", *SourceSchema.SOURCES)

    image_id = fields.String(validate=validate.Length(min=1))  # then check_image_id (API.md)


class JobItem(Schema):
    """One item of a job: exactly one of image_url and image_id."""

    image_url = fields.String(metadata={"example": "https://example.com/photo.jpg"})
    image_id = fields.String(metadata={"pattern": "^[0-9a-f]{64}$"})


class JobRequest(AnalysisOptions):
    """POST /api/jobs as JSON: the items, the analyze options, and an optional client_token."""

    # Checked by faceapp/jobs/service.py (a bad item's index in the message), not loaded here.
    items = fields.List(
        fields.Nested(JobItem),
        required=True,
        metadata={"description": "At most MAX_JOB_ITEMS items, each image_url or image_id."},
    )
    client_token = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "The same token from the same key returns the same job."},
    )


class JobArchiveForm(AnalysisOptions):
    """POST /api/jobs as multipart/form-data: a zip of images and the same options."""

    archive = fields.Raw(
        required=True,
        metadata={"type": "string", "format": "binary", "description": "A zip of images."},
    )
    client_token = fields.String(validate=validate.Length(min=1, max=200))


class ValidateForm(ValidateRequest):
    """POST /api/validate as multipart/form-data: the same fields, and the uploaded `file`."""

    SOURCES = ("file", *ValidateRequest.SOURCES)

    file = fields.Raw(
        metadata={
            "type": "string",
            "format": "binary",
            "description": "The image, as an uploaded file.",
        }
    )


class AnalyzeForm(AnalyzeRequest):
    """POST /api/analyze as multipart/form-data (lists as repeated or comma-separated fields)."""

    SOURCES = ("file", *AnalyzeRequest.SOURCES)

    file = fields.Raw(
        metadata={
            "type": "string",
            "format": "binary",
            "description": "The image, as an uploaded file.",
        }
    )


def form_parts(schema: type[Schema]) -> int:
    """The most parts a form this schema accepts has: one per field, a list's maximum length for
    a list (sent as repeated fields), and one image source of the several it names."""
    fields_by_name = schema._declared_fields
    sources = getattr(schema, "SOURCES", ())
    count = 1 if sources else 0
    for name, field in fields_by_name.items():
        if name in sources:
            continue
        lengths = [v.max for v in field.validators if isinstance(v, validate.Length)]
        count += lengths[0] if isinstance(field, fields.List) and lengths else 1
    return count


def form_parts_allowed() -> int:
    """MAX_FORM_PARTS unless the operator sets it: the largest form the multipart schemas accept
    (analyze's, with 64 attributes and 32 labels as repeated fields: 101 parts)."""
    return max(form_parts(schema) for schema in (ValidateForm, AnalyzeForm, JobArchiveForm))


# -- Answers (documented in /api/openapi.json). Where API.md allows more keys than it names, the
# schema says so (unknown=INCLUDE becomes additionalProperties: true); exact ones stay closed.

IMAGE_ID_PATTERN = "^[0-9a-f]{64}$"


def image_id_field() -> fields.String:
    return fields.String(required=True, metadata={"pattern": IMAGE_ID_PATTERN})


class Open(Schema):
    """An answer object that may carry more keys than the ones named here."""

    class Meta:
        unknown = INCLUDE


class ErrorBody(Schema):
    code = fields.String(required=True, validate=validate.OneOf(sorted(STATUS_BY_CODE)))
    message = fields.String(required=True)
    field = fields.String()


class ErrorResponse(Schema):
    """The envelope of every error answer (docs/API.md, "Conventions")."""

    error = fields.Nested(ErrorBody, required=True)


class Issue(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)


class Box(Schema):
    x = fields.Integer(required=True)
    y = fields.Integer(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)


class Pose(Schema):
    roll = fields.Float(required=True, metadata={"description": "Degrees, from the eyes."})
    yaw = fields.Float(
        required=True, metadata={"description": "Degrees, a rough estimate from the landmarks."}
    )


class Face(Open):
    box = fields.Nested(Box, required=True)
    confidence = fields.Float(required=True, allow_none=True)
    landmarks = fields.List(
        fields.List(fields.Float(), validate=validate.Length(equal=2)),
        validate=validate.Length(equal=5),
        metadata={
            "description": "YuNet's five points [x, y]: the eye on the image's left, the eye on "
            "its right, the nose tip, the mouth corner on the left, the one on the right."
        },
    )
    pose = fields.Nested(Pose, metadata={"description": "Geometric head pose (YuNet only)."})
    role = fields.String(
        validate=validate.OneOf(["main", "comparable", "background"]),
        metadata={
            "description": "main: the largest face in focus; comparable: counts toward "
            "face.multiple; background: smaller, cut by the border or out of focus "
            "(face.background)."
        },
    )
    sharpness = fields.Float(
        metadata={"description": "The face's sharpness (Laplacian variance, as BLUR_THRESHOLD)."}
    )


class DetectorFallback(Schema):
    from_ = fields.String(data_key="from", required=True)
    reason = fields.String(required=True)


class DetectorInfo(Schema):
    name = fields.String(required=True, validate=validate.OneOf(["yunet", "haar"]))
    version = fields.String(required=True)
    score_threshold = fields.Float(required=True)
    runtime = fields.String(
        validate=validate.OneOf(["onnxruntime", "opencv"]),
        metadata={
            "description": "What runs the detector: ONNX Runtime or OpenCV (DETECTOR_RUNTIME); "
            "absent from validations stored before it was reported."
        },
    )
    fallback = fields.Nested(
        DetectorFallback,
        metadata={"description": "Present when YuNet was configured but could not be used."},
    )


class ValidateResponse(Schema):
    image_id = image_id_field()
    valid = fields.Boolean(required=True)
    errors = fields.List(fields.Nested(Issue), required=True)
    warnings = fields.List(fields.Nested(Issue), required=True)
    details = fields.Dict(
        metadata={"description": "Only with ?details=1: width, height, format, faces and quality."}
    )


class ModelInfo(Open):
    name = fields.String(required=True)
    version = fields.String(required=True)
    device = fields.String(required=True)
    dtype = fields.String()
    random_weights = fields.Boolean()
    detector = fields.Nested(DetectorInfo)


class AttributeScore(Open):
    label = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The top label; null when the answer is uncertain."},
    )
    score = fields.Float(
        required=True, allow_none=True, metadata={"description": "The top label's score."}
    )
    scores = fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True), required=True)
    margin = fields.Float(
        required=True,
        allow_none=True,
        metadata={"description": "The top score minus the second: how clear the answer is."},
    )
    uncertain = fields.Boolean(
        required=True,
        metadata={
            "description": "True when the margin is below the attribute's abstain_below; "
            "label is then null (scores are still given)."
        },
    )


class AnalyzedFace(Face):
    attributes = fields.Dict(
        keys=fields.String(), values=fields.Nested(AttributeScore), required=True
    )
    labels = fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True))
    embedding = fields.List(fields.Float(allow_none=True))


class FaceCount(Schema):
    found = fields.Integer(required=True, metadata={"description": "Faces validation found."})
    not_analysed = fields.Integer(
        required=True,
        metadata={"description": "Found faces left out by max_faces (the smallest ones)."},
    )
    max_faces = fields.Integer(
        required=True, metadata={"description": "The max_faces in force (MAX_FACES by default)."}
    )


class AnalyzeResponse(Schema):
    image_id = image_id_field()
    model = fields.Nested(ModelInfo, required=True)
    faces = fields.List(fields.Nested(AnalyzedFace), required=True)
    face_count = fields.Nested(FaceCount, required=True)
    cached = fields.Boolean(required=True)
    timings_ms = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)


class Worker(Open):
    pid = fields.Integer(required=True)


class SetupResponse(Schema):
    ready = fields.Boolean(required=True)
    model = fields.Nested(ModelInfo, required=True)
    load_ms = fields.Float(required=True, allow_none=True)
    warmup_ms = fields.Float(required=True, allow_none=True)
    worker = fields.Nested(Worker, required=True)


class JobsReadiness(Schema):
    available = fields.Boolean(
        required=True,
        metadata={"description": "Whether POST /api/jobs takes jobs now (Redis set and up)."},
    )
    reason = fields.String(metadata={"description": "Why not, when not."})


class Limits(Schema):
    max_faces = fields.Integer(
        required=True,
        metadata={"description": "Faces analyze analyses when a request sends no max_faces."},
    )
    max_faces_limit = fields.Integer(
        required=True, metadata={"description": "The largest max_faces a request may send."}
    )


class ReadyResponse(Schema):
    ready = fields.Boolean(required=True)
    model = fields.Nested(ModelInfo, required=True)
    worker = fields.Nested(Worker, required=True)
    limits = fields.Nested(Limits, required=True)
    jobs = fields.Nested(JobsReadiness, required=True)


JOB_STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


class Job(Schema):
    """A job's state and progress (POST, GET and DELETE /api/jobs...)."""

    job_id = fields.String(required=True, metadata={"pattern": "^[0-9a-f]{32}$"})
    state = fields.String(required=True, validate=validate.OneOf(JOB_STATES))
    kind = fields.String(required=True, validate=validate.OneOf(["items", "archive"]))
    total = fields.Integer(required=True)
    done = fields.Integer(
        required=True, metadata={"description": "Items answered (with a result or an error)."}
    )
    failed = fields.Integer(required=True, metadata={"description": "Items answered an error."})
    created_at = fields.String(required=True)
    started_at = fields.String(required=True, allow_none=True)
    finished_at = fields.String(required=True, allow_none=True)
    images_per_second = fields.Float(required=True, allow_none=True)
    eta_seconds = fields.Float(required=True, allow_none=True)
    options = fields.Dict(required=True)
    results = fields.String(required=True, metadata={"description": "The results' path."})
    error = fields.Nested(Issue, metadata={"description": "Why a failed job failed."})


class JobList(Schema):
    jobs = fields.List(fields.Nested(Job), required=True)


class HealthResponse(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})


class AttributeInfo(Open):
    name = fields.String(required=True)
    description = fields.String()
    labels = fields.List(fields.String(), required=True)
    prompts = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    temperature = fields.Float(
        metadata={"description": "Softmax temperature (1, or fitted by `flask eval --fit`)."}
    )
    abstain_below = fields.Float(
        allow_none=True,
        metadata={"description": "Margin below which answers are uncertain (null: never)."},
    )


class AttributesResponse(Open):
    prompt_version = fields.Raw(required=True)
    digest = fields.String(required=True)
    attributes = fields.List(fields.Nested(AttributeInfo), required=True)


class ValidationRecord(Open):
    valid = fields.Boolean(required=True)
    errors = fields.List(fields.Nested(Issue), required=True)
    warnings = fields.List(fields.Nested(Issue), required=True)
    quality = fields.Dict()


class ImageRecord(Open):
    """GET /api/images/<image_id>: what the store holds about an image."""

    image_id = image_id_field()
    created_at = fields.String(required=True)
    bytes = fields.Integer(required=True)
    source = fields.String()
    format = fields.String(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)
    faces = fields.List(fields.Nested(Face), required=True)
    detector = fields.Nested(DetectorInfo)
    validation = fields.Nested(ValidationRecord, required=True)


class TraceEvent(Open):
    event = fields.String(required=True)
    time = fields.String(required=True)
    worker_pid = fields.Integer(required=True)
    request_id = fields.String(required=True)
    timings_ms = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)


class TraceResponse(Schema):
    image_id = image_id_field()
    events = fields.List(fields.Nested(TraceEvent), required=True)
    max_events = fields.Integer(
        required=True,
        metadata={
            "description": "The most events a trace keeps (TRACE_MAX_EVENTS); older ones "
            "are dropped, oldest first."
        },
    )


class DeleteResponse(Schema):
    image_id = image_id_field()
    deleted = fields.Boolean(required=True)


class WipeResponse(Schema):
    wiped = fields.Integer(required=True)


LIST_FIELDS = ("attributes", "labels")
#: The bodies the API reads besides JSON (``application/json`` or any ``+json`` type).
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def request_fields(request: Request) -> dict[str, Any]:
    """The request's fields, from a JSON object body or from the form; a body of any other type
    (JSON sent as text/plain, say) is 415 input.unsupported_media_type, not "no input"."""
    if not request.is_json and request.mimetype not in FORM_TYPES:
        if request.mimetype or request.content_length:
            shown = _short(request.mimetype or "none", 40)
            raise FaceappError(
                "input.unsupported_media_type",
                f"The body's Content-Type is {shown!r}; send application/json, "
                "multipart/form-data or application/x-www-form-urlencoded.",
            )
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # json's parser recurses per bracket; 20,000 of them overflow it
            raise FaceappError("input.invalid", "The JSON body is nested too deeply.") from None
        if not isinstance(body, dict):
            raise FaceappError("input.invalid", "The JSON body must be an object.")
        check_unicode(body)
        return body
    data: dict[str, Any] = {}
    for key in request.form:
        values = request.form.getlist(key)
        # Lists in a form come as repeated fields, or as one comma-separated field.
        if key in LIST_FIELDS:
            data[key] = [v.strip() for value in values for v in value.split(",") if v.strip()]
        else:
            data[key] = values[-1]
    return data


def check_unicode(body: Mapping[str, Any]) -> None:
    """400 input.invalid, naming the field, for a string JSON let through that is not Unicode
    text: a lone surrogate (``"\\ud800"``) cannot be encoded, tokenized, stored or echoed."""
    for name, value in body.items():
        if not _encodable(name):
            raise FaceappError("input.invalid", "A field name is not valid Unicode text.")
        values = value if isinstance(value, list) else [value]
        for number, item in enumerate(values, start=1):
            if isinstance(item, str) and not _encodable(item):
                where = f"item {number}" if isinstance(value, list) else "the value"
                raise FaceappError(
                    "input.invalid",
                    f"{_short(name)}: {where} is not valid Unicode text (a lone surrogate).",
                    field=_short(name),
                )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Load `data` with `schema`; a problem is 400 input.invalid naming the first field at fault."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        field, problems = next(iter(exc.normalized_messages().items()))
        detail = problems if isinstance(problems, str) else _first_message(problems)
        name = _short(str(field))  # a field name is the client's text: never echo a megabyte
        raise FaceappError("input.invalid", f"{name}: {detail}", field=name) from None


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _first_message(problems: Any) -> str:
    while isinstance(problems, dict | list) and problems:
        problems = next(iter(problems.values())) if isinstance(problems, dict) else problems[0]
    return str(problems)
