"""faceapp/forms.py: the tester's forms refuse exactly what the API's schemas refuse."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from faceapp import forms
from faceapp.errors import FaceappError
from faceapp.schemas import MAX_LABEL_CHARS, MAX_LABELS, AnalyzeRequest, JobRequest

LABEL_LISTS = [
    [f"label {i}" for i in range(MAX_LABELS)],
    [f"label {i}" for i in range(MAX_LABELS + 1)],
    ["x" * MAX_LABEL_CHARS],
    ["x" * (MAX_LABEL_CHARS + 1)],
    ["a Hat", "a hat"],
    ["a hat", "a cap"],
]


def _accepted(parse, *args) -> bool:
    try:
        parse(*args)
    except FaceappError as error:
        assert error.code == "input.invalid" and error.status == 400
        return False
    return True


@pytest.mark.parametrize("labels", LABEL_LISTS, ids=lambda labels: f"{len(labels)} labels")
def test_the_labels_box_refuses_what_the_api_refuses(labels):
    by_api = not AnalyzeRequest().validate({"labels": labels})
    assert _accepted(forms.parse_labels, "\n".join(labels)) == by_api
    form = MultiDict({"labels": "\n".join(labels)})
    assert _accepted(forms.analysis_options, form) == by_api
    assert _accepted(forms.job_options, form) == (
        not JobRequest(partial=True).validate({"labels": labels})
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_faces", "0"),
        ("max_faces", "1"),
        ("max_faces", "100"),
        ("max_faces", "101"),
        ("max_faces", "two"),
        ("force", "maybe"),
        ("force", "on"),
        ("include_embedding", "yes"),
        ("wipe_cache", "2"),
    ],
)
def test_the_analyze_form_checks_its_options_with_the_api_fields(field, value):
    by_api = not AnalyzeRequest().validate({field: value})
    assert _accepted(forms.analysis_options, MultiDict({field: value})) == by_api


def test_a_blank_field_is_its_default_and_a_checkbox_is_a_flag():
    form = MultiDict({"max_faces": "", "force": "1"})
    options = forms.analysis_options(
        MultiDict([("max_faces", ""), ("force", "1"), ("labels", "a hat"), ("labels", "a cap")])
    )
    assert options == {
        "include_embedding": False,
        "wipe_cache": False,
        "force": True,
        "labels": ["a hat", "a cap"],
    }
    assert forms.upload_options(MultiDict({"wipe_cache": "1", "csrf_token": "t"})) == {
        "wipe_cache": True
    }
    assert forms.submitted_options(form) == {
        "labels": [],
        "include_embedding": False,
        "wipe_cache": False,
        "force": True,
        "max_faces": "",
    }
