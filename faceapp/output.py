"""Turning answer documents into JSON or YAML responses, with plain numbers only."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

from flask import Response, request
from ruamel.yaml import YAML

YAML_MIMETYPE = "application/yaml"
FLOAT_PLACES = 4


def to_plain(value: Any) -> Any:
    """`value` as JSON/YAML-safe builtins: numpy/torch numbers become plain ones, rounded."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return round(value, FLOAT_PLACES) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_plain(value.tolist())
    if hasattr(value, "item"):
        return to_plain(value.item())
    raise TypeError(f"cannot serialise {type(value).__name__}")


def wants_yaml() -> bool:
    """True when this request asked for YAML (``?format=yaml`` or an ``Accept`` preferring it)."""
    fmt = request.args.get("format", "").lower()
    if fmt:
        return fmt == "yaml"
    best = request.accept_mimetypes.best_match(["application/json", YAML_MIMETYPE, "text/yaml"])
    return best in (YAML_MIMETYPE, "text/yaml") and request.accept_mimetypes[best] > 0


def dump_yaml(document: Any) -> str:
    """Serialise a plain document as block-style YAML 1.2 that any safe loader reads back."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    yaml.width = 4096
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return buffer.getvalue()


def dump_json(document: Any) -> str:
    """Serialise a plain document as compact JSON with keys in their given order."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def render(document: Any, status: int = 200) -> Response:
    """Answer `document` as JSON, or YAML when the request asked for it."""
    plain = to_plain(document)
    if wants_yaml():
        return Response(dump_yaml(plain), status=status, mimetype=YAML_MIMETYPE)
    return Response(dump_json(plain) + "\n", status=status, mimetype="application/json")
