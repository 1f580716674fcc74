"""The API contract kept in the repository: docs/openapi.json and docs/MIGRATION.md.

The snapshot is the OpenAPI document of a canonical configuration. Comparing it with the live
document lists every name a client may rely on that went away: an endpoint, a field (request,
query or answer), an enum value or an error code (with its status). Each such removal (a rename
is one too) needs an entry in docs/MIGRATION.md headed ``### removed `<change>` `` with
``- since: <version>`` and ``- instead: <what to do>``; additions only need a new snapshot.

``python -m faceapp.contract snapshot`` (``make api-snapshot``) writes the snapshot, and refuses
while a removal has no entry; ``python -m faceapp.contract check`` lists the differences.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from faceapp import PROJECT_ROOT
from faceapp.version import __version__

SNAPSHOT_PATH = os.path.join(PROJECT_ROOT, "docs", "openapi.json")
MIGRATION_PATH = os.path.join(PROJECT_ROOT, "docs", "MIGRATION.md")
ERROR_CODES_KEY = "x-faceapp-error-codes"

_ENTRY = re.compile(r"^### (removed|deprecated) `([^`]+)`\s*$")
_FACT = re.compile(r"^- (since|instead|sunset): *(.+?)\s*$")


def live_document() -> dict[str, Any]:
    """The OpenAPI document of a canonical app: no API_KEYS, admin keys set, defaults otherwise."""
    from faceapp import create_app, openapi

    with tempfile.TemporaryDirectory(prefix="faceapp-contract-") as scratch:
        app = create_app(
            {
                "TESTING": True,
                "STORE_URL": os.path.join(scratch, "store"),
                "MODELS_DIR": os.path.join(scratch, "models"),
                "LOAD_MODEL_ON_START": False,
                "MODEL_AUTO_PULL": False,
                "TESTER_ENABLED": False,
                "SECRET_KEY": "contract",
                "API_KEYS": "",
                "ADMIN_KEYS": "admin",
                "RATELIMIT_STORAGE_URI": "memory://",
            }
        )
        with app.app_context():
            return json.loads(json.dumps(openapi.document()))  # a plain, independent copy


def surface(document: dict[str, Any]) -> set[str]:
    """Every name of `document` a client may rely on, one change id each.

    ``endpoint POST /api/analyze``; ``field POST /api/analyze request.labels``,
    ``field GET /api/images/{image_id} query.format``, ``field POST /api/analyze
    200.faces[].attributes{}.label``; ``enum POST /api/analyze request.attributes[] =
    expression``; ``error image.corrupt 400``; error answers share ``field error.code`` etc.
    """
    found: set[str] = set()
    walker = _Walker(document, found)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            endpoint = f"{method.upper()} {path}"
            found.add(f"endpoint {endpoint}")
            for parameter in operation.get("parameters", []):
                walker.walk(parameter.get("schema", {}), f"{endpoint} {parameter['in']}.")
                found.add(f"field {endpoint} {parameter['in']}.{parameter['name']}")
            for content in operation.get("requestBody", {}).get("content", {}).values():
                walker.walk(content.get("schema", {}), f"{endpoint} request")
            for status, answer in operation.get("responses", {}).items():
                answer = walker.resolve(answer)
                for content in answer.get("content", {}).values():
                    if status.isdigit() and int(status) >= 400:
                        walker.walk(content.get("schema", {}), "", enums=False)
                    else:
                        walker.walk(content.get("schema", {}), f"{endpoint} {status}")
    for code, status in document.get(ERROR_CODES_KEY, {}).items():
        found.add(f"error {code} {status}")
    return found


class _Walker:
    def __init__(self, document: dict, found: set[str]) -> None:
        self.document, self.found = document, found

    def resolve(self, node: dict) -> dict:
        while isinstance(node, dict) and "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def walk(self, node: dict, prefix: str, enums: bool = True, seen: tuple = ()) -> None:
        ref = node.get("$ref") if isinstance(node, dict) else None
        if ref in seen:
            return  # a recursive schema: its names were listed on the way in
        seen = (*seen, ref) if ref else seen
        node = self.resolve(node)
        if enums:
            for value in node.get("enum", []):
                self.found.add(f"enum {prefix} = {value}")
        for name, child in node.get("properties", {}).items():
            inner = f"{prefix}.{name}" if prefix else name
            self.found.add(f"field {inner}")
            self.walk(child, inner, enums, seen)
        if isinstance(node.get("items"), dict):
            self.walk(node["items"], prefix + "[]", enums, seen)
        if isinstance(node.get("additionalProperties"), dict):
            self.walk(node["additionalProperties"], prefix + "{}", enums, seen)
        for key in ("allOf", "oneOf", "anyOf"):
            for child in node.get(key, []):
                self.walk(child, prefix, enums, seen)


@dataclass(frozen=True)
class Entry:
    """One entry of docs/MIGRATION.md."""

    kind: str  # removed, deprecated
    change: str
    facts: dict[str, str]
    line: int


def read_entries(text: str) -> list[Entry]:
    """The entries of a MIGRATION.md text, with the facts listed under each heading."""
    entries: list[Entry] = []
    current: tuple[str, str, int] | None = None
    facts: dict[str, str] = {}
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced  # examples of the format are not entries
        elif fenced:
            continue
        elif line.startswith("#"):
            if current:
                entries.append(Entry(current[0], current[1], facts, current[2]))
            match = _ENTRY.match(line)
            current, facts = ((match[1], match[2], number) if match else None), {}
        elif current and (fact := _FACT.match(line)):
            facts[fact[1]] = fact[2]
    if current:
        entries.append(Entry(current[0], current[1], facts, current[2]))
    return entries


def entry_problems(entries: list[Entry]) -> list[str]:
    """What is wrong with the entries themselves (a missing fact, a version not yet released)."""
    problems = []
    for entry in entries:
        needed = (
            ("since", "instead", "sunset") if entry.kind == "deprecated" else ("since", "instead")
        )
        for fact in needed:
            if fact not in entry.facts:
                problems.append(f"MIGRATION.md line {entry.line}: `- {fact}:` is missing")
        since = entry.facts.get("since", "")
        if since and not re.fullmatch(r"\d+\.\d+\.\d+", since):
            problems.append(f"MIGRATION.md line {entry.line}: since {since!r} is no version")
        elif since and _version(since) > _version(__version__):
            problems.append(
                f"MIGRATION.md line {entry.line}: since {since} is after this version "
                f"({__version__}); raise __version__ in faceapp/version.py with the change"
            )
    return problems


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def unexplained_removals(old: dict, new: dict, entries: list[Entry]) -> list[str]:
    """Names in `old` but not in `new` that docs/MIGRATION.md has no ``removed`` entry for."""
    noted = {entry.change for entry in entries if entry.kind == "removed"}
    return sorted(surface(old) - surface(new) - noted)


def deprecation_id(item: Any) -> str:
    """The change id of a :class:`faceapp.versioning.Deprecation` (a query or a body field)."""
    where = "query" if item.field in _query_parameters(item) else "request"
    return f"field {item.method} {item.path} {where}.{item.field}"


def _query_parameters(item: Any) -> set[str]:
    from faceapp.openapi import FORMAT, OPERATIONS

    operation = OPERATIONS.get((item.path, item.method.lower()), {})
    parameters = [*operation.get("parameters", []), *([FORMAT] if operation.get("yaml", 1) else [])]
    return {p["name"] for p in parameters if p["in"] == "query"}


def undocumented_deprecations(entries: list[Entry]) -> list[str]:
    """Deprecated fields (faceapp.versioning.DEPRECATIONS) with no ``deprecated`` entry."""
    from faceapp import versioning

    noted = {entry.change for entry in entries if entry.kind == "deprecated"}
    return sorted(
        change
        for change in (deprecation_id(item) for item in versioning.DEPRECATIONS)
        if change not in noted
    )


def read_snapshot() -> dict:
    with open(SNAPSHOT_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def read_migration_notes() -> list[Entry]:
    with open(MIGRATION_PATH, encoding="utf-8") as fh:
        return read_entries(fh.read())


def dump(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """``snapshot``: write docs/openapi.json (unless a removal is unexplained); ``check``."""
    command = argv[0] if argv else "check"
    if command not in ("snapshot", "check"):
        print("usage: python -m faceapp.contract snapshot|check", file=sys.stderr)
        return 2
    new = live_document()
    old = read_snapshot() if os.path.exists(SNAPSHOT_PATH) else {}
    entries = read_migration_notes()
    problems = (
        entry_problems(entries)
        + [
            f"deprecated without a docs/MIGRATION.md entry: {change}"
            for change in undocumented_deprecations(entries)
        ]
        + [
            f"removed without a docs/MIGRATION.md entry: {change}"
            for change in unexplained_removals(old, new, entries)
        ]
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    added = sorted(surface(new) - surface(old))
    for change in added:
        print(f"added: {change}")
    if problems:
        return 1
    if command == "snapshot":
        with open(SNAPSHOT_PATH, "w", encoding="utf-8") as fh:
            fh.write(dump(new))
        print(f"wrote {os.path.relpath(SNAPSHOT_PATH, PROJECT_ROOT)} ({len(added)} addition(s))")
    elif new != old:
        print("the snapshot is out of date: run `make api-snapshot`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
