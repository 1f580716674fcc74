"""Turning answer documents into JSON or YAML responses, with plain numbers only."""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from flask import Response, request
from ruamel.yaml import YAML
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.representer import SafeRepresenter
from ruamel.yaml.resolver import VersionedResolver

YAML_MIMETYPE = "application/yaml"
FLOAT_PLACES = 4


def to_plain(value: Any) -> Any:
    """`value` as JSON/YAML-safe builtins: numpy/torch numbers become plain ones, rounded."""
    # The builtins an answer is made of, by exact type first: an analyze answer has about 130
    # values, and the isinstance chain below cost it about 1 ms of CPU, twice per request.
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is float:
        return round(value, FLOAT_PLACES) if math.isfinite(value) else None
    if kind is dict:
        return {k if type(k) is str else str(k): to_plain(v) for k, v in value.items()}
    if kind is list:
        return [to_plain(v) for v in value]
    if isinstance(value, bool) or isinstance(value, str):
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
    """Serialise a plain document as block-style YAML that YAML 1.1 and 1.2 loaders read back the
    same: a string either would take for something else is written in double quotes."""
    yaml = YAML(typ="safe", pure=True)
    yaml.Representer = QuotingRepresenter
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    yaml.width = 4096
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return buffer.getvalue()


# YAML 1.1 (PyYAML, most libyaml bindings) reads yes/no/on/off/y/n as booleans, 1:20 as 80 and
# 2026-12-05 as a date; YAML 1.2 reads 0o17 as a number. ruamel quotes only what 1.2 misreads.
_RESOLVERS = (VersionedResolver(version=(1, 1)), VersionedResolver(version=(1, 2)))
_STR_TAG = "tag:yaml.org,2002:str"
# What the resolvers' tables may not name: merge keys, 1.1's value key, and the spec's y/n.
_RISKY = re.compile(r"^(?:<<|=|[yYnN])$")


def needs_quotes(text: str) -> bool:
    """Whether a YAML 1.1 or 1.2 reader could take the plain scalar `text` for a non-string."""
    if _RISKY.match(text):
        return True
    return any(
        resolver.resolve(ScalarNode, text, (True, False)) != _STR_TAG for resolver in _RESOLVERS
    )


class QuotingRepresenter(SafeRepresenter):
    """The safe representer, writing strings :func:`needs_quotes` names in double quotes."""

    def represent_str(self, data: str) -> Any:
        style = '"' if needs_quotes(data) else None
        return self.represent_scalar(_STR_TAG, data, style=style)


QuotingRepresenter.add_representer(str, QuotingRepresenter.represent_str)


def dump_json(document: Any) -> str:
    """Serialise a plain document as compact JSON with keys in their given order."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def render(document: Any, status: int = 200) -> Response:
    """Answer `document` as JSON, or YAML when the request asked for it."""
    plain = to_plain(document)
    if wants_yaml():
        return Response(dump_yaml(plain), status=status, mimetype=YAML_MIMETYPE)
    return Response(dump_json(plain) + "\n", status=status, mimetype="application/json")
