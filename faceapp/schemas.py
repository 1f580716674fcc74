"""Marshmallow schemas: what each endpoint accepts, and the documents it answers with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Request
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from faceapp.errors import FaceappError


class Flag(fields.Boolean):
    """A boolean that also accepts the usual form spellings (1/0, yes/no, on/off).

    (1 and 0 are in the sets as True and False: equal values, one set entry.)
    """

    truthy = {True, "1", "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"}
    falsy = {False, "0", "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", ""}


class SourceSchema(Schema):
    """The image sources (the multipart `file` travels beside these, in request.files)."""

    class Meta:
        unknown = RAISE

    image_url = fields.String(validate=validate.Length(max=4096))
    image_base64 = fields.String()
    wipe_cache = Flag(load_default=False)


class ValidateRequest(SourceSchema):
    """POST /api/validate."""


class AnalyzeRequest(SourceSchema):
    """POST /api/analyze: an image_id or an image source, and what to compute."""

    image_id = fields.String(validate=validate.Length(max=128))
    attributes = fields.List(fields.String(validate=validate.Length(min=1, max=64)),
                             validate=validate.Length(max=64))
    labels = fields.List(fields.String(validate=validate.Length(min=1, max=200)),
                         validate=validate.Length(max=32))
    include_embedding = Flag(load_default=False)
    force = Flag(load_default=False)


class ErrorBody(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    field = fields.String()


class ErrorResponse(Schema):
    error = fields.Nested(ErrorBody, required=True)


class Issue(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)


class ValidateResponse(Schema):
    image_id = fields.String(required=True)
    valid = fields.Boolean(required=True)
    errors = fields.List(fields.Nested(Issue), required=True)
    warnings = fields.List(fields.Nested(Issue), required=True)
    details = fields.Dict()


LIST_FIELDS = ("attributes", "labels")


def request_fields(request: Request) -> dict[str, Any]:
    """The request's fields, from a JSON object body or from the form."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise FaceappError("input.invalid", "The JSON body must be an object.")
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


def parse(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Load `data` with `schema`; a problem is 400 input.invalid naming the first field at fault."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        field, problems = next(iter(exc.normalized_messages().items()))
        detail = problems if isinstance(problems, str) else _first_message(problems)
        raise FaceappError("input.invalid", f"{field}: {detail}", field=str(field)) from None


def _first_message(problems: Any) -> str:
    while isinstance(problems, dict | list) and problems:
        problems = next(iter(problems.values())) if isinstance(problems, dict) else problems[0]
    return str(problems)
