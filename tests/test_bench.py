"""Smoke test of the benchmark: quick mode runs every section and writes its JSON.

No timing or ratio is asserted: this machine is shared, and the benchmark reports ratios only.
"""

from __future__ import annotations

import dataclasses
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
    analyze = document["sections"]["http_analyze"]["sanity"]
    assert analyze["worker_page_faults_per_analyze"] >= 0 and analyze["forward_ms"] > 0


def test_minor_faults_counts_memory_mapped_afresh():
    import mmap
    import os

    from bench.http import minor_faults

    before = minor_faults({os.getpid()})
    fresh = mmap.mmap(-1, 4 * 1024 * 1024)  # anonymous: each page faults on its first touch
    for offset in range(0, len(fresh), mmap.PAGESIZE):
        fresh[offset] = 1
    assert minor_faults({os.getpid()}) - before >= len(fresh) // mmap.PAGESIZE // 2
    fresh.close()
    assert minor_faults({2**22 + 12345}) == 0  # no such process: nothing counted


def test_the_load_generators_connection_survives_the_servers_idle_close():
    """bench.http.Client keeps one connection alive, and opens a new one (once) when the server
    closed the idle one, as gunicorn does after its keep-alive: the 8-client windows must not
    count that as an error."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bench.http import Client, Server

    seen: list[tuple[int, bytes]] = []

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.client_address[1], body))
            answer = json.dumps({"echo": json.loads(body)}).encode()
            self.send_response(200 if b"fine" in body else 418)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            if b"then close" in body:
                self.close_connection = True  # as an idle keep-alive running out would

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = Client(Server(f"http://127.0.0.1:{httpd.server_port}", None, 0.0))
        assert client.post_json("/x", {"fine": 1}) == {"echo": {"fine": 1}}
        assert client.post_json("/x", {"fine": "then close"}) == {"echo": {"fine": "then close"}}
        # The server closed it without saying so in a header: the next post finds it gone.
        assert client.post_json("/x", {"fine": 3}) == {"echo": {"fine": 3}}
        status, payload = client.post("/x", {"not": "ok"})
        assert status == 418 and json.loads(payload) == {"echo": {"not": "ok"}}
        try:
            client.post_json("/x", {"not": "ok"})
        except RuntimeError as exc:
            assert "418" in str(exc)
        else:
            raise AssertionError("a status other than 200 must raise")
        ports = [port for port, _ in seen]
        assert ports[0] == ports[1] != ports[2] == ports[3] == ports[4]  # kept alive, then anew
        client.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_part_run_in_a_fresh_process_gets_the_same_plan():
    """The full run measures the service's and flask batch's sections in fresh processes
    (bench.run.in_a_fresh_process): each must get the plan the user asked for."""
    for argv in (
        [],
        ["--quick"],
        ["--quick", "--repeats", "5", "--threads", "1", "--batch-memory", "0"],
        ["--size", "tiny", "--budget", "7.5", "--batch-photos", "30", "--batch-rounds", "3"],
        ["--batch-memory", "20,80"],
    ):
        plan = run.make_plan(run.parse_args(argv))
        again = run.make_plan(run.parse_args(["--http-only", *plan.argv()]))
        assert again.http_only and not plan.http_only
        assert dataclasses.replace(again, http_only=False) == plan, argv


def test_interleaved_calls_settle_apart_and_the_pause_is_not_timed():
    import time

    from bench.timing import interleaved

    starts: list[float] = []

    def call() -> None:
        starts.append(time.perf_counter())

    # Six rounds under a budget the pauses alone would use up within three: they do not count.
    a_ms, b_ms = interleaved(call, call, 6, warmup=0, budget_s=0.25, settle_s=0.05)
    assert len(a_ms) == len(b_ms) == 6
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 0.05
    assert max(a_ms + b_ms) < 25  # an empty call: the 50 ms pause before it is not in its time
