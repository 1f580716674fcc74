"""One version for the package and the API, and deprecated request fields (docs/MIGRATION.md).

- Every answer carries ``X-Faceapp-Version: <faceapp.__version__>``; /api/openapi.json's
  ``info.version`` is the same string.
- A request field listed in :data:`DEPRECATIONS` is marked ``deprecated: true`` in the OpenAPI
  document, keeps working until its sunset, and a request that sends it gets the
  ``Deprecation`` (RFC 9745) and ``Sunset`` (RFC 8594) headers and one log line.
"""

from __future__ import annotations

import calendar
import logging
import re
from dataclasses import dataclass
from datetime import date
from email.utils import formatdate
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from faceapp.errors import STATUS_BY_CODE
from faceapp.version import __version__

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Faceapp-Version"


@dataclass(frozen=True)
class Deprecation:
    """A request field (body field or query parameter) on its way out."""

    method: str  # "POST"
    path: str  # the OpenAPI path, e.g. "/api/analyze"
    field: str
    since: str  # the version that deprecated it
    deprecated_on: date  # the day that version was released
    sunset: date  # from this day on it may be removed (in a release with a MIGRATION.md entry)
    instead: str  # what a client sends instead, in words

    @property
    def deprecation_header(self) -> str:
        """RFC 9745: the moment it was deprecated, as a structured-field date (@unix seconds)."""
        return f"@{calendar.timegm(self.deprecated_on.timetuple())}"

    @property
    def sunset_header(self) -> str:
        """RFC 8594: an HTTP-date."""
        return formatdate(calendar.timegm(self.sunset.timetuple()), usegmt=True)


#: The deprecated request fields of this version (none yet; docs/MIGRATION.md explains each).
DEPRECATIONS: tuple[Deprecation, ...] = ()


def init_app(app: Flask) -> None:
    """Put the version header on every answer and the deprecation headers where they apply."""
    app.after_request(add_version_headers)


def add_version_headers(response: Response) -> Response:
    response.headers[VERSION_HEADER] = __version__
    used = deprecations_used()
    if used:
        first = min(used, key=lambda d: d.sunset)  # one header each: the nearest sunset wins
        response.headers["Deprecation"] = first.deprecation_header
        response.headers["Sunset"] = first.sunset_header
        for item in used:
            log.warning(
                "deprecated field %s sent to %s %s (sunset %s; %s)",
                item.field,
                item.method,
                item.path,
                item.sunset.isoformat(),
                item.instead,
            )
    return response


def deprecations_used() -> list[Deprecation]:
    """The deprecated fields this request sent."""
    if request.url_rule is None:
        return []
    path = openapi_path(request.url_rule.rule)
    candidates = [d for d in DEPRECATIONS if d.method == request.method and d.path == path]
    if not candidates:
        return []
    sent = set(request.args)
    try:  # both are cached by now; parsing again only repeats the view's own error
        if request.is_json:
            body = request.get_json(silent=True)
            sent |= set(body) if isinstance(body, dict) else set()
        elif request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            sent |= set(request.form) | set(request.files)
    except HTTPException:
        pass
    return [d for d in candidates if d.field in sent]


def openapi_path(rule: str) -> str:
    """A Flask rule (``/api/images/<image_id:image_id>``) as an OpenAPI path."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def annotate_document(document: dict[str, Any]) -> dict[str, Any]:
    """Add the version header to every answer and ``deprecated: true`` to deprecated fields."""
    header = {
        "description": "faceapp's version (package and API are one version; docs/MIGRATION.md).",
        "schema": {"type": "string", "example": __version__},
    }
    document["x-faceapp-error-codes"] = dict(STATUS_BY_CODE)  # the contract: code -> status
    schemas = document.get("components", {}).get("schemas", {})
    for status_or_ref in document.get("components", {}).get("responses", {}).values():
        status_or_ref.setdefault("headers", {})[VERSION_HEADER] = header
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            for answer in operation.get("responses", {}).values():
                if "$ref" not in answer:
                    answer.setdefault("headers", {})[VERSION_HEADER] = header
            for item in DEPRECATIONS:
                if (item.method.lower(), item.path) == (method, path):
                    _mark_deprecated(operation, schemas, item)
    return document


def _mark_deprecated(operation: dict, schemas: dict, item: Deprecation) -> None:
    note = f"Deprecated since {item.since}, sunset {item.sunset.isoformat()}: {item.instead}"
    for parameter in operation.get("parameters", []):
        if parameter["name"] == item.field:
            parameter.update(deprecated=True, description=note)
    for content in operation.get("requestBody", {}).get("content", {}).values():
        schema = content["schema"]
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        prop = schema.get("properties", {}).get(item.field)
        if prop is not None:
            prop.update(deprecated=True, description=note)
