"""The attribute set: which face attributes are scored, with which labels and prompts.

Loaded from YAML (``faceapp/attributes.yaml`` or ATTRIBUTES_FILE) with ruamel.yaml and checked
with a marshmallow schema; a broken file stops the start with a message naming the file and line.
Besides prompts, an attribute may set ``abstain_below`` (a margin), and the file may carry a
``calibration`` section of per-attribute temperatures that ``flask eval --fit`` writes
(:func:`write_calibration`, a round trip that keeps the file's comments). Both are part of the
digest, hence of ``attributes_version``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from faceapp.atomic import atomic_path

DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attributes.yaml")
NAME = validate.Regexp(r"^[a-z][a-z0-9_]{0,63}$", error="names are lower-case words joined by _")
PROMPT = validate.Length(min=1, max=200)
TEMPERATURE = validate.Range(min=0.01, max=100, error="a temperature is between 0.01 and 100")


class AttributeFileError(ValueError):
    """The attribute file is missing, not YAML, or not of the expected shape."""


class _PromptList(fields.Field):
    """One prompt, or a list of 1 to 16 prompts."""

    def _deserialize(self, value, attr, data, **kwargs):
        prompts = [value] if isinstance(value, str) else value
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= 16:
            raise ValidationError("a label needs a prompt or a list of 1 to 16 prompts")
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 200:
                raise ValidationError("each prompt is a non-empty string of at most 200 characters")
        return tuple(p.strip() for p in prompts)


class _AttributeSchema(Schema):
    class Meta:
        unknown = RAISE

    description = fields.String(load_default="")
    templates = fields.List(fields.String(validate=PROMPT), validate=validate.Length(min=1))
    labels = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=_PromptList(),
        required=True,
        validate=validate.Length(min=2, max=64, error="an attribute needs 2 to 64 labels"),
    )
    abstain_below = fields.Float(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, max=1, error="abstain_below is a margin between 0 and 1"),
    )


class _CalibrationSchema(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(load_default=None, allow_none=True)
    fitted_on = fields.String(load_default=None, allow_none=True)
    images = fields.Integer(load_default=None, allow_none=True)
    temperatures = fields.Dict(
        keys=fields.String(),
        values=fields.Float(validate=TEMPERATURE),
        required=True,
    )


class _FileSchema(Schema):
    class Meta:
        unknown = RAISE

    version = fields.Raw(load_default=1)
    templates = fields.List(
        fields.String(validate=PROMPT), load_default=["{}"], validate=validate.Length(min=1, max=16)
    )
    attributes = fields.Dict(
        keys=fields.String(validate=NAME),
        values=fields.Nested(_AttributeSchema),
        required=True,
        validate=validate.Length(min=1, max=64),
    )
    calibration = fields.Nested(_CalibrationSchema, load_default=None, allow_none=True)

    @validates_schema
    def _calibrated_attributes_exist(self, data, **kwargs):
        known = data.get("attributes", {})
        for name in (data.get("calibration") or {}).get("temperatures") or {}:
            if name not in known:
                raise ValidationError(
                    f"a temperature for {name!r}, which is not an attribute of this file",
                    "calibration",
                )

    @validates_schema
    def _templates_have_a_slot(self, data, **kwargs):
        templates = list(data.get("templates", []))
        for attribute in data.get("attributes", {}).values():
            templates += attribute.get("templates", [])
        for template in templates:
            if template.count("{}") != 1:
                raise ValidationError(
                    f"template {template!r} must contain {{}} exactly once", "templates"
                )


@dataclass(frozen=True)
class Attribute:
    """One attribute: its labels, in order, and each label's full prompts (templates applied)."""

    name: str
    description: str
    labels: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    temperature: float = 1.0  # softmax temperature (calibration); 1 is the model's own scale
    abstain_below: float | None = None  # margin below which the answer is "uncertain"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "labels": list(self.labels),
            "prompts": {label: list(p) for label, p in zip(self.labels, self.prompts, strict=True)},
            "temperature": self.temperature,
            "abstain_below": self.abstain_below,
        }


@dataclass(frozen=True)
class AttributeSet:
    """All attributes, in file order, and a digest that changes whenever any prompt does."""

    attributes: dict[str, Attribute]
    digest: str
    source: str
    prompt_version: Any
    calibration_model: str | None = None  # the weights version the temperatures were fitted on

    def names(self) -> list[str]:
        return list(self.attributes)

    def prompts_digest(self) -> str:
        """A digest of the labels and their prompts only: what the label embeddings depend on.

        A new temperature or abstain threshold changes `digest` (and so cached answers) but not
        this, so the embeddings computed for the prompts are kept. Without either setting it is
        `digest` itself.
        """
        return _digest(_prompts_of(self.attributes))

    def to_dict(self) -> dict:
        return {
            "prompt_version": self.prompt_version,
            "digest": self.digest,
            "attributes": [a.to_dict() for a in self.attributes.values()],
        }


def load_attribute_set(path: str | None = None) -> AttributeSet:
    """Read and check an attribute file (default: the bundled one)."""
    path = path or DEFAULT_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            document = YAML(typ="rt").load(fh)
    except OSError as exc:
        raise AttributeFileError(
            f"attribute file {path}: cannot be read ({exc.strerror})"
        ) from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise AttributeFileError(
            f"attribute file {path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})"
        ) from None
    if not isinstance(document, dict):
        raise AttributeFileError(f"attribute file {path}: the top level must be a mapping")
    try:
        data = _FileSchema().load(_plain(document))
    except ValidationError as exc:
        field_path, message = _first_error(exc.normalized_messages())
        line = _line_of(document, field_path)
        where = f" line {line}" if line else ""
        raise AttributeFileError(
            f"attribute file {path}{where}: {'.'.join(map(str, field_path))}: {message}"
        ) from None

    temperatures = (data["calibration"] or {}).get("temperatures") or {}
    attributes = {}
    for name, spec in data["attributes"].items():
        templates = spec.get("templates") or data["templates"]
        labels = tuple(spec["labels"])
        prompts = tuple(
            tuple(
                template.replace("{}", prompt)
                for prompt in spec["labels"][label]
                for template in templates
            )
            for label in labels
        )
        attributes[name] = Attribute(
            name,
            spec["description"],
            labels,
            prompts,
            float(temperatures.get(name, 1.0)),
            spec["abstain_below"],
        )
    canonical = _prompts_of(attributes)
    scoring = {
        n: [a.temperature, a.abstain_below]
        for n, a in attributes.items()
        if a.temperature != 1.0 or a.abstain_below is not None
    }
    if scoring:  # a set without either keeps the digest it had before they existed
        canonical["scoring"] = scoring
    return AttributeSet(
        attributes,
        _digest(canonical),
        os.path.abspath(path),
        data["version"],
        (data["calibration"] or {}).get("model"),
    )


def _prompts_of(attributes: dict[str, Attribute]) -> dict[str, Any]:
    return {name: [a.labels, a.prompts] for name, a in attributes.items()}


def _digest(canonical: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:12]


def write_calibration(
    path: str, temperatures: dict[str, float], *, model: str, fitted_on: str, images: int
) -> None:
    """Write (or replace) the file's ``calibration`` section, keeping its comments and layout."""
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the bundled files' layout
    yaml.width = 100
    with open(path, encoding="utf-8") as fh:
        document = yaml.load(fh)
    section = CommentedMap()
    section["model"] = model
    section["fitted_on"] = fitted_on
    section["images"] = images
    section["temperatures"] = CommentedMap(
        (name, round(float(value), 4)) for name, value in temperatures.items()
    )
    if "calibration" in document:
        document["calibration"] = section
    else:  # before `attributes`: comments trailing the last attribute stay where they are
        document.insert(list(document).index("attributes"), "calibration", section)
        document.yaml_set_comment_before_after_key(
            "calibration",
            before="Written by `flask --app wsgi eval --fit`: a softmax temperature per\n"
            "attribute, fitted (lowest NLL) on a labelled folder for the model named here.",
        )
    # A reader sees the old file or the new one, never half of one.
    with atomic_path(os.path.abspath(path)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        yaml.dump(document, fh)
    load_attribute_set(path)  # what was written must load


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _first_error(messages: Any, path: tuple = ()) -> tuple[tuple, str]:
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        if key == "value" and path:  # marshmallow's Dict reports ("name", "value") pairs
            return _first_error(value, path)
        if key == "key" and path:
            return _first_error(value, path)
        return _first_error(value, (*path, key))
    if isinstance(messages, list):
        return path, "; ".join(str(m) for m in messages)
    return path, str(messages)


def _line_of(document: Any, path: tuple) -> int | None:
    """The 1-based line of the deepest part of `path` found in the ruamel document."""
    node, line = document, None
    for key in path:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and key in node:
                line = lc.key(key)[0] + 1 if lc else line
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                line = lc.item(key)[0] + 1 if lc else line
                node = node[key]
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
    return line
