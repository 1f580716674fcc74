"""The OpenAPI 3 document of /api (GET /api/openapi.json), made by apispec from faceapp/schemas.py.

Each operation below names its request and answer schemas and the error statuses it can give;
tests/test_openapi.py fails when a route of the api blueprint is missing here. The document is
built once per app, for that app's configuration (whether a key is needed depends on API_KEYS).
"""

from __future__ import annotations

import base64
import copy
import os
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, current_app

from faceapp import schemas, versioning
from faceapp.errors import STATUS_BY_CODE
from faceapp.output import YAML_MIMETYPE
from faceapp.version import __version__

DOCUMENT_KEY = "faceapp.openapi"
OPENAPI_VERSION = "3.0.3"
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <key>` (API_KEYS or ADMIN_KEYS).",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "`X-API-Key: <key>`, the same keys as the bearer scheme.",
    },
}
KEYED = [{"bearerAuth": []}, {"apiKeyAuth": []}]

IMAGE_ID = {
    "name": "image_id",
    "in": "path",
    "required": True,
    "description": "The lowercase hex SHA-256 of the image bytes.",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}
# Query flags are lenient: a value the service does not know means the default, not a 400.
# No example: Swagger UI would fill it in, and every "Try it out" would answer YAML.
FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": "`yaml` answers in YAML (as does `Accept: application/yaml`); any other "
    "value, or none, JSON.",
    "schema": {"type": "string"},
}
DETAILS = {
    "name": "details",
    "in": "query",
    "required": False,
    "description": "`1` (or true, yes, on) adds `details` (size, format, faces, quality).",
    "schema": {"type": "string", "example": "1"},
}

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The id POST /api/jobs answered (32 lowercase hex characters).",
    "schema": {"type": "string"},
}
AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "The index of the last line already read: the stream starts after it "
    "(default -1, from the first item).",
    "schema": {"type": "integer", "minimum": -1},
}

# The request examples Swagger UI fills in, so that "Try it out" runs as it is: a 160 px crop of
# scikit-image's astronaut (Eileen Collins, a NASA photo in the public domain), valid under
# YuNet and Haar.
EXAMPLE_FACE = os.path.join(os.path.dirname(__file__), "example-face.jpg")
EXAMPLE_LABELS = ["a person wearing a hat", "a person in a space suit"]


def request_examples() -> dict[str, dict]:
    """The JSON request examples of validate and analyze, by operation path."""
    with open(EXAMPLE_FACE, "rb") as fh:
        image = base64.b64encode(fh.read()).decode("ascii")
    return {
        "/api/validate": {"image_base64": image},
        # No attribute names: an operator's ATTRIBUTES_FILE may name others; all are scored.
        "/api/analyze": {"image_base64": image, "labels": EXAMPLE_LABELS},
    }


# Statuses every keyed operation can give besides its own: no or a wrong key, too many requests.
KEYED_ERRORS = (401, 429)
SOURCE_ERRORS = (400, 413, 415, 422, 504)  # inputs: upload, base64 and image_url

# (path, method): what the operation is. "errors" are the statuses besides 200 and 500.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/api/validate", "post"): {
        "summary": "Store an image under its image_id and check it",
        "request": (schemas.ValidateRequest, schemas.ValidateForm),
        "parameters": [DETAILS],
        "answer": schemas.ValidateResponse,
        "errors": SOURCE_ERRORS,
    },
    ("/api/analyze", "post"): {
        "summary": "Score the faces of an image (by image_id, or sent now)",
        "request": (schemas.AnalyzeRequest, schemas.AnalyzeForm),
        "answer": schemas.AnalyzeResponse,
        "errors": (*SOURCE_ERRORS, 404, 409, 503),
    },
    ("/api/attributes", "get"): {
        "summary": "The attribute set in use: names, labels, prompts and their version",
        "answer": schemas.AttributesResponse,
    },
    ("/api/setup", "post"): {
        "summary": "Load and warm this worker's model now (idempotent)",
        "admin": True,
        "answer": schemas.SetupResponse,
        "errors": (503,),
    },
    ("/api/health", "get"): {
        "summary": "Liveness: this process serves (never needs a key, never rate limited)",
        "public": True,
        "answer": schemas.HealthResponse,
    },
    ("/api/ready", "get"): {
        "summary": "Readiness: this worker's model is loaded and warm (never needs a key)",
        "public": True,
        "answer": schemas.ReadyResponse,
        "errors": {503: None},
    },
    ("/api/images/{image_id}", "get"): {
        "summary": "Stored metadata and the validation result of an image",
        "parameters": [IMAGE_ID],
        "answer": schemas.ImageRecord,
        "errors": (400, 404),
    },
    ("/api/images/{image_id}", "delete"): {
        "summary": "Forget an image, its results and its trace",
        "admin": True,
        "parameters": [IMAGE_ID],
        "answer": schemas.DeleteResponse,
        "errors": (400, 404),
    },
    ("/api/images/{image_id}/trace", "get"): {
        "summary": "Every event of an image, oldest first",
        "parameters": [IMAGE_ID],
        "answer": schemas.TraceResponse,
        "errors": (400, 404),
    },
    ("/api/cache/wipe", "post"): {
        "summary": "Forget every stored image and result",
        "admin": True,
        "answer": schemas.WipeResponse,
    },
    ("/api/jobs", "post"): {
        "summary": "Make a job of image URLs or image_ids (JSON), or of a zip of images",
        "tag": "jobs",
        "request": (schemas.JobRequest, schemas.JobArchiveForm),
        "status": 202,
        "also": {200: "The job this key's client_token made before."},
        "answer": schemas.Job,
        "errors": (404, 413, 429, 503),
    },
    ("/api/jobs", "get"): {
        "summary": "The caller's jobs, newest first (every job for an admin key)",
        "tag": "jobs",
        "answer": schemas.JobList,
        "errors": (503,),
    },
    ("/api/jobs/{job_id}", "get"): {
        "summary": "A job's state, counts, times, speed and ETA",
        "tag": "jobs",
        "parameters": [JOB_ID],
        "answer": schemas.Job,
        "errors": (404, 503),
    },
    ("/api/jobs/{job_id}", "delete"): {
        "summary": "Cancel a job: items not started are never processed",
        "tag": "jobs",
        "parameters": [JOB_ID],
        "answer": schemas.Job,
        "errors": (404, 409, 503),
    },
    ("/api/jobs/{job_id}/results", "get"): {
        "summary": "The finished items' lines as NDJSON, in index order (readable while it runs)",
        "tag": "jobs",
        "parameters": [JOB_ID, AFTER],
        "answer": "ndjson",
        "yaml": False,
        "errors": (400, 404, 503),
    },
    ("/api/openapi.json", "get"): {
        "summary": "This document (never needs a key: it holds no secret)",
        "keyless": True,
        "answer": None,  # an OpenAPI document; not described by itself
        "yaml": False,
    },
}


def document() -> dict:
    """The OpenAPI document of the current app (built on first use, then reused)."""
    app = current_app._get_current_object()
    if DOCUMENT_KEY not in app.extensions:
        app.extensions[DOCUMENT_KEY] = build_document(app)
    return app.extensions[DOCUMENT_KEY]


def build_document(app: Flask) -> dict:
    """Build the document for `app`'s configuration."""
    keys_required = bool(app.config["API_KEYS"])
    spec = APISpec(
        title="faceapp",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": _description(keys_required, bool(app.config["ADMIN_KEYS"]))},
    )
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    spec.components.schema("ErrorResponse", schema=schemas.ErrorResponse)
    for status in sorted(set(STATUS_BY_CODE.values())):
        spec.components.response(_error_ref(status), _error_response(status))

    paths: dict[str, dict[str, Any]] = {}
    examples = request_examples()
    for (path, method), spec_op in OPERATIONS.items():
        operation = _operation(path, method, spec_op, keys_required)
        if path in examples:
            operation["requestBody"]["content"]["application/json"]["example"] = examples[path]
        paths.setdefault(path, {})[method] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _state_what_marshmallow_cannot(document["components"]["schemas"])
    _state_configured_limits(document["components"]["schemas"], app.config)
    return versioning.annotate_document(document)


def _request_schemas() -> set[type]:
    """The request schemas of every operation (JSON and form)."""
    return {schema for op in OPERATIONS.values() for schema in op.get("request", ())}


def _state_what_marshmallow_cannot(components: dict[str, dict]) -> None:
    """Say in the request schemas what the service checks beyond their fields: exactly one image
    source (oneOf; each is non-empty by its minLength), and the yes/no spellings a flag takes."""
    for schema in _request_schemas():
        component = components[schema.__name__]
        if hasattr(schema, "SOURCES"):  # a job's items or archive are plain required fields
            component["oneOf"] = [{"required": [name]} for name in schema.SOURCES]
        for name, field in schema().fields.items():
            if isinstance(field, schemas.Flag):
                documented = component["properties"][name]
                documented.pop("type", None)
                documented.update(copy.deepcopy(schemas.FLAG_SCHEMA))


def _state_configured_limits(components: dict[str, dict], config: Any) -> None:
    """State the limits the operator sets where the schemas cannot know them: max_faces is at
    most MAX_FACES_LIMIT (analysis.check_max_faces refuses more with 400 input.invalid)."""
    for schema in _request_schemas():
        properties = components[schema.__name__].get("properties", {})
        if "max_faces" in properties:
            properties["max_faces"]["maximum"] = int(config["MAX_FACES_LIMIT"])


def _description(keys_required: bool, admin_enabled: bool) -> str:
    keys = (
        "This service needs a key on every operation except the health and ready probes and "
        "this document."
        if keys_required
        else "This service runs without API_KEYS: no key is needed except for admin operations."
    )
    admin = (
        "Admin operations (tagged `admin`) need a key from ADMIN_KEYS; a user key gets 403."
        if admin_enabled
        else "Admin operations (tagged `admin`) are off here (no ADMIN_KEYS): they answer 403."
    )
    return (
        f"Face detection and CLIP zero-shot face attributes. {keys} {admin} Every error is "
        "the ErrorResponse envelope with a stable code; clients are rate limited per address "
        "(429 rate.limited with Retry-After)."
    )


def _operation(path: str, method: str, op: dict[str, Any], keys_required: bool) -> dict:
    public, admin = op.get("public", False), op.get("admin", False)
    operation: dict[str, Any] = {
        "operationId": _operation_id(path, method),
        "summary": op["summary"],
        "tags": ["admin" if admin else "probes" if public else op.get("tag", "images")],
        "parameters": [*op.get("parameters", []), *([FORMAT] if op.get("yaml", True) else [])],
    }
    if public or op.get("keyless"):
        operation["security"] = []
    elif admin or keys_required:
        operation["security"] = KEYED
    else:
        operation["security"] = [{}, *KEYED]  # a key is optional here; admin keys are accepted
    if admin:
        operation["x-faceapp-admin"] = True
        operation["description"] = "Admin: needs a key from ADMIN_KEYS (403 for a user key)."

    if "request" in op:
        json_schema, form_schema = op["request"]
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }

    answer = _answer("The answer.", op["answer"], op.get("yaml", True))
    responses: dict[str, Any] = {str(op.get("status", 200)): answer}
    for status, description in op.get("also", {}).items():
        responses[str(status)] = {**answer, "description": description}
    errors = op.get("errors", ())
    error_schemas = dict(errors) if isinstance(errors, dict) else dict.fromkeys(errors)
    statuses = set(error_schemas) | {500}
    if op.get("keyless"):
        statuses |= {429}  # rate limited like the rest, but no key is asked for
    elif not public:
        statuses |= set(KEYED_ERRORS)
    if admin:
        statuses |= {401, 403}
    if "requestBody" in operation:
        # A malformed body; a body over MAX_CONTENT_LENGTH; a body neither JSON nor a form.
        statuses |= {400, 413, 415}
    for status in sorted(statuses):
        if status in error_schemas and error_schemas[status] is not None:
            responses[str(status)] = _answer(_codes_for(status), error_schemas[status])
        else:
            responses[str(status)] = _error_ref(status)  # components/responses/<that name>
    operation["responses"] = responses
    return operation


def _error_ref(status: int) -> str:
    return f"Error{status}"


def _error_response(status: int) -> dict:
    response = _answer(_codes_for(status), schemas.ErrorResponse)
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until the client may send again.",
                "schema": {"type": "integer", "minimum": 1},
                "required": True,
            }
        }
    return response


def _answer(description: str, schema: Any, yaml: bool = True) -> dict:
    if schema == "ndjson":
        ndjson = {"type": "string", "description": "One JSON object a line."}
        return {"description": description, "content": {"application/x-ndjson": {"schema": ndjson}}}
    if schema is None:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    content = {"application/json": {"schema": schema}}
    if yaml:
        content[YAML_MIMETYPE] = {"schema": schema}
    return {"description": description, "content": content}


def _codes_for(status: int) -> str:
    codes = [code for code, code_status in STATUS_BY_CODE.items() if code_status == status]
    return "Error: " + ", ".join(f"`{code}`" for code in codes) if codes else "Error."


def _operation_id(path: str, method: str) -> str:
    words = [w.strip("{}").replace(".", "_") for w in path.split("/")[2:] if w]
    return method + "_" + "_".join(words)
