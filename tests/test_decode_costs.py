"""Memory and CPU bombs within the caps (issue 22, item 2), measured in a fresh process.

Each file of tests/hostile_files.py is posted to /api/validate in a subprocess that serves the
app, and its peak memory over what that process held before is asserted against the 400 MB a
single upload may add (MiB here, so a little stricter). Before the bounds, the WebP added
915 MB and the 16-bit PNG 689 MB; the PNG of empty chunks cost 2.0 s of CPU. Only memory is
asserted: CPU times are noisy on a shared machine, so they are reported (tests/costs.py), not
compared. The measurements go to the suite's report of the worst costs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from faceapp.errors import STATUS_BY_CODE
from tests.costs import Cost, can_measure_peak, report
from tests.servers import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not can_measure_peak(), reason="needs Linux's resettable VmHWM"),
]

ONE_UPLOAD_MIB = 400  # the most one upload within the caps may add to a worker's peak

# name -> the answers allowed: 200, or the refusal with its code
EXPECTED = {
    "webp_lossless_rgba_40mp": {(413, "image.too_many_pixels")},
    "png_16bit_trns_40mp": {(200, "")},
    "png_800k_empty_chunks": {(415, "image.unsupported_format")},
    "gif_one_byte_sub_blocks": {(415, "image.unsupported_format")},
    "png_rgba_gradient_40mp": {(200, "")},
    "jpeg_progressive_40mp": {(200, "")},
}


def probe(config: dict, names: list[str], together: int = 1) -> list[dict]:
    command = [sys.executable, "-m", "tests.cost_probe", json.dumps(config)]
    if together > 1:
        command += ["--together", str(together)]
    done = subprocess.run(
        command + names, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def probe_config(config) -> dict:
    return {key: value for key, value in config.items() if key != "TESTING"}


def test_no_hostile_file_raises_the_peak_by_more_than_400_mb(probe_config):
    results = probe(probe_config, list(EXPECTED))
    assert [result["name"] for result in results] == list(EXPECTED)
    for result in results:
        (status, code) = result["answers"][0]
        report(
            Cost(
                result["name"],
                result["peak_mib"],
                result["cpu_s"],
                f"{status} {code}".strip(),
                {"bytes": result["bytes"]},
            )
        )
    for result in results:
        (status, code) = result["answers"][0]
        assert (status, code) in EXPECTED[result["name"]], result
        assert status < 500 and (status == 200 or STATUS_BY_CODE[code] == status)
        assert result["peak_mib"] <= ONE_UPLOAD_MIB, result


def test_concurrent_large_decodes_share_the_worker_budget(probe_config):
    # Four 40 MP 16-bit PNGs at once (each estimated at about 125 MiB) under a 150 MiB budget:
    # they decode one at a time. Measured: 128 to 131 MiB; 483 MiB with a budget that holds all
    # four (and 180 to 410 MiB without return_large_buffers_to_the_os).
    budget = 150 * 1024**2
    probe_config.update(DECODE_MEMORY_BUDGET=budget, DECODE_WAIT_SECONDS=120)
    (result,) = probe(probe_config, ["png_16bit_trns_40mp"], together=4)
    report(
        Cost(
            "4 x png_16bit_trns_40mp at once",
            result["peak_mib"],
            result["cpu_s"],
            " ".join(str(status) for status, _code in result["answers"]),
        )
    )
    assert [status for status, _code in result["answers"]] == [200] * 4
    assert result["peak_mib"] <= 220, result  # before the bounds: 4 x 680 MB


def test_a_decode_that_waits_too_long_for_the_budget_is_503_image_busy(probe_config):
    probe_config.update(DECODE_MEMORY_BUDGET=130 * 1024**2, DECODE_WAIT_SECONDS=0.01)
    (result,) = probe(probe_config, ["png_16bit_trns_40mp"], together=3)
    statuses = sorted(tuple(answer) for answer in result["answers"])
    assert (200, "") in statuses and (503, "image.busy") in statuses, statuses
