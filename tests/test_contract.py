"""The API contract: docs/openapi.json, docs/MIGRATION.md, one version, deprecated fields."""

from __future__ import annotations

import base64
import calendar
import copy
import logging
from datetime import date

import pytest

from faceapp import __version__, contract, create_app, versioning
from faceapp.versioning import Deprecation


@pytest.fixture(scope="module")
def live() -> dict:
    return contract.live_document()


def test_no_removal_without_a_migration_entry(live):
    entries = contract.read_migration_notes()
    assert contract.entry_problems(entries) == []
    missing = contract.unexplained_removals(contract.read_snapshot(), live, entries)
    assert missing == [], "removed without a docs/MIGRATION.md entry (see its format):\n" + (
        "\n".join(missing)
    )


def test_the_snapshot_is_up_to_date(live):
    added = sorted(contract.surface(live) - contract.surface(contract.read_snapshot()))
    assert contract.read_snapshot() == live, (
        "docs/openapi.json is out of date: run `make api-snapshot`. New: " + ", ".join(added)
    )


def _without(document: dict, change) -> dict:
    changed = copy.deepcopy(document)
    change(changed)
    return changed


def _drop_validate(doc):
    del doc["paths"]["/api/validate"]["post"]


def _drop_labels(doc):
    for schema in doc["components"]["schemas"].values():
        schema.get("properties", {}).pop("labels", None)


def _drop_health_enum(doc):
    schema = doc["paths"]["/api/health"]["get"]["responses"]["200"]["content"]["application/json"]
    contract._Walker(doc, set()).resolve(schema["schema"])["properties"]["status"]["enum"] = []


def _drop_code(doc):
    del doc[contract.ERROR_CODES_KEY]["url.timeout"]


def _restatus_code(doc):
    doc[contract.ERROR_CODES_KEY]["url.timeout"] = 408


def _drop_query(doc):
    params = doc["paths"]["/api/validate"]["post"]["parameters"]
    doc["paths"]["/api/validate"]["post"]["parameters"] = [
        p for p in params if p["name"] != "details"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_drop_validate, "endpoint POST /api/validate"),
        (_drop_labels, "field POST /api/analyze request.labels"),
        (_drop_labels, "field POST /api/analyze 200.faces[].labels"),
        (_drop_health_enum, "enum GET /api/health 200.status = ok"),
        (_drop_code, "error url.timeout 504"),
        (_restatus_code, "error url.timeout 504"),
        (_drop_query, "field POST /api/validate query.details"),
    ],
)
def test_removals_need_an_entry_for_that_exact_change(live, change, expected):
    changed = _without(live, change)
    assert expected in contract.unexplained_removals(live, changed, [])
    other = contract.read_entries(f"### removed `{expected}x`\n- since: 0.1.0\n- instead: y\n")
    assert expected in contract.unexplained_removals(live, changed, other)
    noted = contract.read_entries(
        f"# Notes\n\n### removed `{expected}`\n- since: 0.1.0\n- instead: use the other one.\n"
    )
    assert expected not in contract.unexplained_removals(live, changed, noted)


def test_additions_need_no_entry(live):
    grown = copy.deepcopy(live)
    grown["paths"]["/api/new"] = {"get": {"responses": {"200": {"description": "x"}}}}
    grown[contract.ERROR_CODES_KEY]["new.code"] = 400
    assert contract.unexplained_removals(live, grown, []) == []
    assert {"endpoint GET /api/new", "error new.code 400"} <= contract.surface(grown)


def test_entries_format_and_their_problems():
    text = """# Migration notes
```markdown
### removed `endpoint GET /api/example`
```
### removed `endpoint GET /api/a`
- since: 0.1.0
### deprecated `field GET /api/b query.c`
- since: 99.0.0
- instead: nothing
### removed `endpoint GET /api/d`
- since: soon
- instead: x
"""
    entries = contract.read_entries(text)
    assert [(e.kind, e.change) for e in entries] == [
        ("removed", "endpoint GET /api/a"),
        ("deprecated", "field GET /api/b query.c"),
        ("removed", "endpoint GET /api/d"),
    ]
    problems = "\n".join(contract.entry_problems(entries))
    assert "line 5: `- instead:` is missing" in problems
    assert "line 7: `- sunset:` is missing" in problems
    assert "since 99.0.0 is after this version" in problems
    assert "since 'soon' is no version" in problems


def test_the_snapshot_command_refuses_an_unexplained_removal(monkeypatch, tmp_path, live, capsys):
    snapshot = tmp_path / "openapi.json"
    grown = copy.deepcopy(live)
    grown["paths"]["/api/gone"] = {"get": {"responses": {"200": {"description": "x"}}}}
    snapshot.write_text(contract.dump(grown))
    monkeypatch.setattr(contract, "SNAPSHOT_PATH", str(snapshot))
    assert contract.main(["snapshot"]) == 1
    assert "removed without a docs/MIGRATION.md entry: endpoint GET /api/gone" in (
        capsys.readouterr().err
    )
    assert contract.read_snapshot() == grown  # not written
    snapshot.write_text(contract.dump(live))
    assert contract.main(["check"]) == 0
    del live["paths"]["/api/health"]["get"]["summary"]
    snapshot.write_text(contract.dump(live))
    assert contract.main(["check"]) == 1  # a changed description is still a stale snapshot
    assert contract.main(["snapshot"]) == 0 and contract.read_snapshot() == contract.live_document()


# -- one version --------------------------------------------------------------------------------


def test_every_answer_carries_the_version(client):
    for answer in (
        client.get("/api/health"),
        client.post("/api/validate", json={}),
        client.get("/nowhere"),
        client.get("/api/openapi.json"),
    ):
        assert answer.headers["X-Faceapp-Version"] == __version__
    doc = client.get("/api/openapi.json").json
    assert doc["info"]["version"] == __version__
    header = doc["paths"]["/api/health"]["get"]["responses"]["200"]["headers"]
    assert header["X-Faceapp-Version"]["schema"]["type"] == "string"
    assert "X-Faceapp-Version" in doc["components"]["responses"]["Error400"]["headers"]


# -- deprecations -------------------------------------------------------------------------------

WIPE = Deprecation(
    method="POST",
    path="/api/validate",
    field="wipe_cache",
    since="0.1.0",
    deprecated_on=date(2026, 11, 1),
    sunset=date(2027, 2, 1),
    instead="a test-only deprecation",
)
FORMAT = Deprecation(
    method="GET",
    path="/api/images/{image_id}",
    field="format",
    since="0.1.0",
    deprecated_on=date(2026, 11, 1),
    sunset=date(2027, 1, 1),
    instead="send Accept: application/yaml",
)


@pytest.fixture
def deprecating(monkeypatch, config):
    monkeypatch.setattr(versioning, "DEPRECATIONS", (WIPE, FORMAT))
    return create_app(config)


def test_deprecated_fields_are_marked_in_the_document(deprecating):
    doc = deprecating.test_client().get("/api/openapi.json").json
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/api/validate"]["post"]["requestBody"]["content"]
    for content in body.values():
        prop = schemas[content["schema"]["$ref"].rsplit("/", 1)[-1]]["properties"]["wipe_cache"]
        assert prop["deprecated"] is True and "2027-02-01" in prop["description"]
    assert not schemas["AnalyzeRequest"]["properties"]["wipe_cache"].get("deprecated")
    params = {p["name"]: p for p in doc["paths"]["/api/images/{image_id}"]["get"]["parameters"]}
    assert params["format"]["deprecated"] is True
    other = doc["paths"]["/api/images/{image_id}/trace"]["get"]["parameters"]
    assert not any(p.get("deprecated") for p in other)


def test_requests_using_a_deprecated_field_get_the_headers_and_work(
    deprecating, astronaut_jpeg, caplog
):
    client = deprecating.test_client()
    image = base64.b64encode(astronaut_jpeg).decode()
    plain = client.post("/api/validate", json={"image_base64": image})
    assert plain.status_code == 200
    assert "Deprecation" not in plain.headers and "Sunset" not in plain.headers
    with caplog.at_level(logging.WARNING, logger="faceapp.versioning"):
        answer = client.post("/api/validate", json={"image_base64": image, "wipe_cache": True})
        form = client.post("/api/validate", data={"image_base64": image, "wipe_cache": "true"})
    for response in (answer, form):
        assert response.status_code == 200 and response.json["valid"] is True
        assert response.headers["Deprecation"] == f"@{calendar.timegm((2026, 11, 1, 0, 0, 0))}"
        assert response.headers["Sunset"] == "Mon, 01 Feb 2027 00:00:00 GMT"
    lines = [r.getMessage() for r in caplog.records if "deprecated field" in r.getMessage()]
    assert len(lines) == 2 and "wipe_cache" in lines[0] and "2027-02-01" in lines[0]
    # The field still does its job: the trace shows the wipe.
    image_id = answer.json["image_id"]
    events = client.get(f"/api/images/{image_id}/trace").json["events"]
    assert [e["event"] for e in events].count("wiped") == 2

    query = client.get(f"/api/images/{image_id}?format=yaml")
    assert query.status_code == 200 and query.mimetype == "application/yaml"
    assert query.headers["Sunset"] == "Fri, 01 Jan 2027 00:00:00 GMT"
    assert "Sunset" not in client.get(f"/api/images/{image_id}").headers
    assert "Sunset" not in client.get(f"/api/images/{image_id}/trace?format=yaml").headers


def test_every_deprecation_has_a_migration_entry(monkeypatch):
    entries = contract.read_migration_notes()
    assert contract.undocumented_deprecations(entries) == []
    monkeypatch.setattr(versioning, "DEPRECATIONS", (WIPE,))
    assert contract.undocumented_deprecations(entries) == [
        "field POST /api/validate request.wipe_cache"
    ]
    noted = contract.read_entries(
        "### deprecated `field POST /api/validate request.wipe_cache`\n"
        "- since: 0.1.0\n- sunset: 2027-02-01\n- instead: x\n"
    )
    assert contract.undocumented_deprecations(noted) == []
