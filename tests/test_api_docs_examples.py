"""docs/API.md: its examples replayed against the service, and every endpoint, code and key in it.

The format of the examples and how they are compared: docs/API.md, "How the examples are checked".
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from faceapp.config import DEFAULTS
from faceapp.errors import STATUS_BY_CODE
from faceapp.openapi import OPERATIONS

API_MD = Path(__file__).resolve().parent.parent / "docs" / "API.md"
BLOCK = re.compile(r"^```http (request|response)\n(.*?)^```$", re.M | re.S)
ANY = "…"


def examples(text: str) -> list[tuple[str, str]]:
    """(request, response) block texts, in order; every request is followed by its answer."""
    blocks = BLOCK.findall(text)
    kinds = [kind for kind, _ in blocks]
    assert kinds == ["request", "response"] * (len(blocks) // 2), "unpaired example blocks"
    return [(blocks[i][1], blocks[i + 1][1]) for i in range(0, len(blocks), 2)]


def split_message(block: str) -> tuple[str, dict[str, str], str]:
    head, _, body = block.partition("\n\n")
    first, *header_lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in header_lines)
    return first, headers, body.strip()


def parse_body(body: str, mimetype: str) -> Any:
    if mimetype == "application/yaml":
        return YAML(typ="safe", pure=True).load(body)
    return json.loads(body)


def mismatches(expected: Any, actual: Any, where: str = "body") -> list[str]:
    """How `actual` differs from the example (its rules: docs/API.md)."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        problems = [f"{where}: keys {sorted(set(expected) ^ set(actual))} differ"]
        if set(expected) == set(actual):
            problems = []
        for key in set(expected) & set(actual):
            problems += mismatches(expected[key], actual[key], f"{where}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {actual!r}"]
        if expected and expected[-1] == ANY:
            expected, actual = expected[:-1], actual[: len(expected) - 1]
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, the example has {len(expected)}"]
        problems = []
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            problems += mismatches(want, got, f"{where}[{index}]")
        return problems
    if isinstance(expected, float):
        ok = isinstance(actual, int | float) and not isinstance(actual, bool)
        return [] if ok else [f"{where}: expected a number, got {actual!r}"]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return []


@pytest.fixture
def substitutions(astronaut_jpeg, coffee_jpeg) -> dict[str, str]:
    return {
        "astronaut_base64": base64.b64encode(astronaut_jpeg).decode(),
        "astronaut_id": hashlib.sha256(astronaut_jpeg).hexdigest(),
        "coffee_base64": base64.b64encode(coffee_jpeg).decode(),
        "coffee_id": hashlib.sha256(coffee_jpeg).hexdigest(),
        "admin_key": "admin-key",  # conftest's ADMIN_KEYS
    }


def test_the_examples_are_what_the_service_answers(client, substitutions):
    from faceapp.face_models import models

    # As a served worker (LOAD_MODEL_ON_START): its model is loaded before the first analyze,
    # whose timings would otherwise also show the wait for it (model_load).
    assert models.load(client.application) is not None
    text = API_MD.read_text(encoding="utf-8")
    for name, value in substitutions.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, "an unknown placeholder in docs/API.md"
    pairs = examples(text)
    assert len(pairs) >= 20
    for request_block, response_block in pairs:
        request_line, headers, body = split_message(request_block)
        method, target = request_line.split(" ", 1)
        answer = client.open(target, method=method, headers=headers, data=body or None)
        status_line, want_headers, want_body = split_message(response_block)
        label = request_line[:80]
        assert answer.status_code == int(status_line.split()[1]), (label, answer.data[:300])
        for name, value in want_headers.items():
            got = answer.headers.get(name)
            if name == "Content-Type":
                got = answer.mimetype
            assert got is not None and value in (ANY, got), (label, name, got)
        if want_body:
            problems = mismatches(
                parse_body(want_body, answer.mimetype),
                parse_body(answer.get_data(as_text=True), answer.mimetype),
            )
            assert problems == [], (label, problems)


def test_mismatch_rules():
    assert mismatches({"a": 1.5, "b": ANY, "c": [1, ANY]}, {"a": 3, "b": {}, "c": [1, 2, 3]}) == []
    assert mismatches({"a": 1}, {"a": 1, "extra": 2})  # a new key must be documented
    assert mismatches({"a": 1}, {"a": 2})
    assert mismatches({"a": 1.5}, {"a": "x"})
    assert mismatches({"a": 1}, {"a": True})
    assert mismatches([1, 2], [1])
    assert mismatches([1, ANY], [])


def test_every_endpoint_error_code_and_setting_is_documented():
    text = API_MD.read_text(encoding="utf-8")
    headings = "\n".join(re.findall(r"^## .*$", text, re.M))
    for path, method in OPERATIONS:
        assert f"{method.upper()} {path}" in headings, f"no section for {method.upper()} {path}"
    codes = dict(re.findall(r"^\| `([a-z_.]+)` \| (\d{3}) \|", text, re.M))
    assert codes == {code: str(status) for code, status in STATUS_BY_CODE.items()}
    keys = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", text, re.M))
    assert set(DEFAULTS) - keys == set(), "settings missing from docs/API.md, Configuration"
