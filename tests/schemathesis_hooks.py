"""A check that tests/test_openapi.py has schemathesis load (SCHEMATHESIS_HOOKS=this module).

Its built-in positive_data_acceptance has to allow 400 here: a schema-valid image_base64 or
image_url is still refused when what it carries is not an image. What the schema can say, it
must: a body the document calls valid is never refused for its shape (no image, two images).
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs  # schemathesis's own validator
import schemathesis
from schemathesis.core.failures import Failure

SHAPE_CODES = ("input.missing", "input.ambiguous")


@schemathesis.check
def schema_states_the_input_rules(ctx, response, case) -> bool | None:
    """A body valid by the document's own request schema answered input.missing or
    input.ambiguous: the schema says less than the service enforces."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    sent_as = response.request.headers.get("Content-Type", "")
    sent_as = sent_as[0] if isinstance(sent_as, list) else sent_as
    if not positive or response.status_code != 400 or not isinstance(case.body, dict):
        return None
    if not sent_as.startswith(case.media_type or "-"):
        return None  # a body sent under a media type the document does not give for it
    code = next((c for c in SHAPE_CODES if c in response.text), None)
    if code is None or not documented_as_valid(case):
        return None  # a generator's "positive" case may break oneOf; the document decides
    raise Failure(
        operation=case.operation.label,
        title="Schema-valid request refused for its inputs",
        message=f"The body is valid by the document, and the service answered {code}.",
    )


def documented_as_valid(case) -> bool:
    document = case.operation.schema.raw_schema
    body_schema = case.operation.definition.raw["requestBody"]["content"][case.media_type]
    schema = {**body_schema["schema"], "components": document["components"]}
    body = {key: _as_text(value) for key, value in case.body.items()}
    return jsonschema_rs.Draft7Validator(schema).is_valid(body)


def _as_text(value: Any) -> Any:
    """An uploaded file's bytes as the string the document types it as (format: binary)."""
    if isinstance(value, bytes | bytearray) or (isinstance(value, str) and type(value) is not str):
        return "<file>"  # schemathesis hands files over as bytes or its own str subclass
    return value
