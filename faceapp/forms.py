"""The tester pages' forms, read with the API's schemas and limits (faceapp/schemas.py).

A form says what the API's JSON says, as HTML forms say it: a flag is a checkbox, a blank field
means its default, and the labels are one per line of a text box, so a problem names its line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from werkzeug.datastructures import MultiDict

from faceapp.errors import FaceappError
from faceapp.schemas import MAX_LABEL_CHARS, MAX_LABELS, AnalyzeRequest, JobRequest, parse

#: The Analyze form's options besides the labels: the API's own fields (limits included).
ANALYZE_FIELDS = ("include_embedding", "wipe_cache", "force", "max_faces")
ANALYZE_FLAGS = ("include_embedding", "wipe_cache", "force")  # checkboxes: sent when ticked


def labels_text(data: MultiDict) -> str:
    """The labels box as typed (the field may also come repeated, one label each)."""
    return "\n".join(data.getlist("labels"))


def parse_labels(text: str) -> list[str]:
    """One label per non-blank line; a problem is 400 input.invalid naming its line."""
    labels: list[str] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        label = line.strip()
        if not label:
            continue
        if len(label) > MAX_LABEL_CHARS:
            raise _label_error(
                number, f"is {len(label)} characters long; a label has at most {MAX_LABEL_CHARS}"
            )
        key = label.casefold()  # CLIP lowercases: "Hat" and "hat" would score the same
        if key in first_seen:
            raise _label_error(number, f"repeats line {first_seen[key]}; give each label once")
        first_seen[key] = number
        labels.append(label)
        if len(labels) > MAX_LABELS:
            raise _label_error(number, f"is label {len(labels)}; at most {MAX_LABELS} are allowed")
    return labels


def _label_error(line: int, problem: str) -> FaceappError:
    error = FaceappError("input.invalid", f"Labels, line {line} {problem}.", field="labels")
    error.line = line
    return error


def analysis_options(data: MultiDict) -> dict[str, Any]:
    """The Analyze options of a submitted form, checked as POST /api/analyze checks them."""
    options = _parse_fields(AnalyzeRequest, ANALYZE_FIELDS, data)
    return {**options, "labels": parse_labels(labels_text(data))}


def submitted_options(data: MultiDict) -> dict[str, Any]:
    """An Analyze form's flags as sent, to refill the form with (the labels box is refilled as
    typed)."""
    flags = {name: name in data for name in ANALYZE_FLAGS}
    return {"labels": [], **flags, "max_faces": data.get("max_faces", "").strip()}


def upload_options(data: MultiDict) -> dict[str, Any]:
    """The upload form's options (the CSRF token and the image itself are not among them)."""
    return _parse_fields(AnalyzeRequest, ("wipe_cache",), data)


def job_options(data: MultiDict) -> dict[str, Any]:
    """The Jobs form's options, checked as POST /api/jobs checks them (the labels box: one
    label per line)."""
    return {
        **_parse_fields(JobRequest, ("force",), data),
        "labels": parse_labels(data.get("labels", "")),
    }


def _parse_fields(schema: type, names: tuple[str, ...], data: Mapping[str, Any]) -> dict:
    """`names` of `data` loaded with those fields of the API's `schema`; a field left blank
    means its default, as an absent one does."""
    given = {name: data[name] for name in names if data.get(name, "") != ""}
    return parse(schema(only=names), given)
