"""Smoke test of the benchmark: quick mode runs every section and writes its JSON.

No timing or ratio is asserted: this machine is shared, and the benchmark reports ratios only.
"""

from __future__ import annotations

import json

from bench import run


def test_quick_benchmark_writes_every_section(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEAPP_BENCH_DIR", str(tmp_path / "checkpoints"))
    out = tmp_path / "bench.json"

    assert run.main(["--quick", "--json", str(out)]) == 0

    document = json.loads(out.read_text())
    assert list(document["sections"]) == list(run.SECTIONS)
    for key, section in document["sections"].items():
        assert section["a"] > 0 and section["b"] > 0, key
        assert section["ratio"] > 0, key
        assert all(value > 0 for value in section["a_samples"] + section["b_samples"]), key
    assert document["settings"]["size"] == "tiny"
    assert document["machine"]["torch_threads"] >= 1
    assert document["sections"]["zero_shot"]["sanity"]["same_scores"] is True
    assert "zero-shot, 1 face" in capsys.readouterr().out
