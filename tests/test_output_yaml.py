"""YAML answers read back the same by YAML 1.1 (PyYAML) and 1.2 (ruamel) loaders: every string a
reader could take for a boolean, null, number or date is quoted, and keys keep their order."""

from __future__ import annotations

import html
import io
import re
import string

import pytest
import yaml as pyyaml
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from faceapp.output import dump_yaml, needs_quotes

# Words YAML 1.1 reads as booleans or null, numbers of either version, sexagesimals, dates, and
# 1.1's merge and value keys; no two the same case aside, as labels must be.
TRICKY = [
    "yes", "No", "on", "OFF", "y", "N", "true", "False", "null", "~", "1", "-1", "+1", "1.5",
    ".5", "1e3", "0x1F", "0o17", "017", "0b101", "1_000", "1:20", "12:30:45", ".inf", "-.Inf",
    ".NaN", "2026-12-05", "2026-12-05T10:00:00Z", "<<", "=",
]  # fmt: skip


def both_loaders(text: str) -> tuple:
    return pyyaml.safe_load(text), YAML(typ="safe", pure=True).load(io.StringIO(text))


def test_tricky_strings_survive_as_keys_and_values_in_their_order():
    document = {"labels": {word: 0.5 for word in TRICKY}, "words": TRICKY, "plain": "a hat"}
    text = dump_yaml(document)
    for loaded in both_loaders(text):
        assert loaded == document
        assert list(loaded["labels"]) == TRICKY
    assert "plain: a hat\n" in text  # ordinary strings stay unquoted


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(
        st.text(alphabet=string.ascii_letters + string.digits + " .:+-_~<=", max_size=12),
        st.from_regex(r"\A[-+]?[0-9][0-9_.:eE]{0,8}\Z"),
        st.from_regex(r"\A[0-9a-f]{1,16}\Z"),  # like image ids: "12e45" is a 1.2 float
        st.sampled_from(TRICKY).map(str.upper),
    )
)
def test_any_short_string_reads_back_as_itself(word):
    document = {word: [word]}
    for loaded in both_loaders(dump_yaml(document)):
        assert loaded == document


def test_only_strings_a_reader_could_misread_are_quoted():
    assert all(needs_quotes(word) for word in TRICKY)
    plain = ["a hat", "happy", "yesterday", "no hat", "370adb9cb9dd03ca", "3 people"]
    assert not any(needs_quotes(word) for word in plain)
    assert needs_quotes("12e45") and needs_quotes("1234")


@pytest.fixture
def stored(client, astronaut_jpeg) -> str:
    files = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    return client.post("/api/validate", data=files).get_json()["image_id"]


def test_yaml_answers_keep_every_label(client, stored):
    body = {"image_id": stored, "attributes": ["expression"], "labels": TRICKY}
    as_json = client.post("/api/analyze", json=body).get_json()
    answer = client.post("/api/analyze?format=yaml", json=body)
    assert answer.status_code == 200 and answer.mimetype == "application/yaml"
    for loaded in both_loaders(answer.get_data(as_text=True)):
        assert list(loaded["faces"][0]["labels"]) == TRICKY
        loaded["cached"], loaded["timings_ms"] = as_json["cached"], as_json["timings_ms"]
        assert loaded == as_json


def test_the_testers_yaml_tab_keeps_every_label(client, stored):
    form = {"labels": "\n".join(TRICKY)}
    page = client.post(f"/app/images/{stored}", data=form, follow_redirects=True)
    assert page.status_code == 200
    found = re.search(
        r'<pre class="code" id="analysis-yaml">(.*?)</pre>', page.get_data(as_text=True), re.S
    )
    assert found, "no YAML tab"
    for loaded in both_loaders(html.unescape(found.group(1))):
        assert list(loaded["faces"][0]["labels"]) == TRICKY
