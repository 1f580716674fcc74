"""scripts/mutants.py's verdicts and report: a mutant whose tests ran out of time is a timeout,
its own category, neither caught nor in the score."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def mutants():
    path = Path(__file__).resolve().parent.parent / "scripts" / "mutants.py"
    spec = importlib.util.spec_from_file_location("faceapp_mutants_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.parametrize(
    ("results", "argued", "verdict"),
    [
        ([1], False, "caught"),
        ([0, 1], False, "caught"),
        ([None, 1], False, "caught"),  # a later stage's failure decides
        ([None], False, "timeout"),
        ([0, None], False, "timeout"),
        ([None], True, "timeout"),  # argued equivalent and out of time: no verdict either
        ([0, 0], False, "missed"),
        ([], False, "missed"),  # no test reaches the line
        ([], True, "equivalent"),
    ],
)
def test_a_timeout_is_its_own_verdict(mutants, results, argued, verdict):
    assert mutants.verdict_of(results, argued) == verdict


def test_the_report_has_a_timeout_column_left_out_of_the_score(mutants):
    tally = {"mutants": 10, "caught": 6, "timeout": 2, "missed": 2, "equivalent": 0}
    assert mutants.HEADER.split() == [
        "module", "mutants", "caught", "timeout", "missed", "equiv", "score",
    ]  # fmt: skip
    row = mutants._row("validation", tally, 120.0).split()
    assert row == ["validation", "10", "6", "2", "2", "0", "75%", "2.0m"]
