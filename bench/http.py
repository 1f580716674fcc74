"""The service over HTTP: gunicorn as `make run` starts it, against the bare model in this process.

Each section is one interleaved comparison (see bench/timing.py): A is what a client of the
service sees, B the limit it should approach (the bare encoder forward, the bare decode, the
bare encoder at batch 8 on every core). The servers run with the rate limits off.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess  # noqa: S404 - runs gunicorn from this same virtual environment
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests
from PIL import Image

from bench.timing import Comparison

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_KEY = "bench-admin-key"
CLIENT_COUNTS = (1, 8, 32)


@dataclass
class Server:
    """A running gunicorn: its URL, its master's pid, and how long it took to become ready."""

    url: str
    process: subprocess.Popen
    ready_s: float
    worker_pids: set[int] = field(default_factory=set)
    log_path: str = ""


_SESSIONS: list[requests.Session | Client] = []


def _session() -> requests.Session:
    """A keep-alive HTTP session, closed when the run's servers stop (close_sessions)."""
    session = requests.Session()
    _SESSIONS.append(session)
    return session


def close_sessions() -> None:
    while _SESSIONS:
        _SESSIONS.pop().close()


class Client:
    """The timed requests' client: one keep-alive HTTP/1.1 connection (the standard library's
    http.client), posting JSON, as a lean load generator (wrk, hey) would.

    requests spends about 1.2 ms more of this machine's CPU per analyze (0.5 against 1.7 ms) and
    0.7 ms more per health round trip: on the A side of a comparison that would be counted as
    the service's time, and at 8 clients it takes CPU from the workers. A connection the server
    closed while idle (its keep-alive is 5 s) is opened again once, as requests would.
    """

    def __init__(self, server: Server, timeout: float = 120) -> None:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout
        self.connection: http.client.HTTPConnection | None = None
        self.reused = False  # the open connection has answered before (so may have gone stale)
        _SESSIONS.append(self)

    def post(self, path: str, body: dict) -> tuple[int, bytes]:
        """POST `body` as JSON to `path`: the status and the answer's bytes."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        while True:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, self.timeout)
                self.reused = False
            stale = self.reused
            try:
                self.connection.request("POST", path, body=data, headers=headers)
                answer = self.connection.getresponse()
                payload = answer.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if stale:
                    continue  # closed by the server while idle: once more on a new connection
                raise
            except (http.client.HTTPException, OSError):
                self.close()
                raise
            if answer.will_close:
                self.close()
            else:
                self.reused = True
            return answer.status, payload

    def post_json(self, path: str, body: dict) -> dict:
        """POST `body` and the JSON answer; any status but 200 raises."""
        status, payload = self.post(path, body)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {payload[:300]!r}")
        return json.loads(payload)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


YUNET_FIXTURE = os.path.join(PROJECT_ROOT, "..", "shared", "fixtures", "face_detection_yunet.onnx")


def detector_settings() -> dict[str, str]:
    """The service's own detector, YuNet, from $FACEAPP_BENCH_YUNET or the test fixture beside
    the project; Haar where neither is (the sanity of each section says which ran)."""
    path = os.environ.get("FACEAPP_BENCH_YUNET") or YUNET_FIXTURE
    if os.path.isfile(path):
        return {"DETECTOR": "yunet", "DETECTOR_MODEL": os.path.abspath(path)}
    return {"DETECTOR": "haar"}


@contextmanager
def gunicorn(
    folder: str,
    scratch: str,
    workers: int,
    name: str,
    dtype: str | None = None,
    settings: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`make run`'s gunicorn on a free port, serving the checkpoint in `folder`, rate limits off.

    The checkpoint's folder is the models folder too, so the label-embedding cache and the int8
    export persist from run to run; each server has its own store. Yields once every worker
    answers /api/ready. `dtype` None: the service's default (DTYPE=auto). `settings` are more
    FACEAPP_<KEY> values (the detector, say).
    """
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "MAX_REQUESTS": "1000000",  # no recycling in the middle of a measurement
        "LOG_LEVEL": "warning",
        "FACEAPP_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "FACEAPP_INSTANCE_PATH": os.path.join(scratch, f"instance-{name}"),
        "FACEAPP_MODEL_NAME": folder,
        "FACEAPP_MODELS_DIR": folder,
        "FACEAPP_STORE_URL": os.path.join(scratch, f"store-{name}"),
        "FACEAPP_MODEL_AUTO_PULL": "false",
        "FACEAPP_RATELIMIT_ENABLED": "false",  # benchmarks run with the limits off
        "FACEAPP_TESTER_ENABLED": "false",
        "FACEAPP_ADMIN_KEYS": ADMIN_KEY,
        "FACEAPP_SECRET_KEY": "bench-secret-key-" + "x" * 32,
        # The detector users get (YuNet) where the bench can find it; `settings` override it.
        **{
            f"FACEAPP_{key}": value
            for key, value in {**detector_settings(), **(settings or {})}.items()
        },
    }
    env.pop("FACEAPP_DTYPE", None)
    if dtype is not None:
        env["FACEAPP_DTYPE"] = dtype
    gunicorn_bin = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    # A file, not a pipe: a pipe nobody reads fills up and blocks the workers' logging.
    log = open(os.path.join(scratch, f"gunicorn-{name}.log"), "wb")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - fixed arguments
        [gunicorn_bin, "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        pids = _wait_ready(url, process, log.name, lambda ready: len(ready) >= workers)
        yield Server(url, process, time.perf_counter() - started, pids, log.name)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(
    url: str, process: subprocess.Popen, log_path: str, done: Callable[[set[int]], bool]
) -> set[int]:
    """Ask /api/ready until `done(pids of the workers that answered ready)`; returns those pids."""
    deadline = time.monotonic() + 300
    ready: set[int] = set()

    def log_tail() -> str:
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()[-2000:]

    with requests.Session() as session:
        while not done(ready):
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready after 300 s:\n{log_tail()}")
            try:
                # A new connection each time, so that every worker gets asked.
                answer = session.get(f"{url}/api/ready", timeout=5, headers={"Connection": "close"})
                if answer.status_code == 200:
                    ready.add(answer.json()["worker"]["pid"])
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.02)
    return ready


def upload(session: requests.Session, server: Server, data: bytes, wipe: bool = False) -> str:
    answer = session.post(
        f"{server.url}/api/validate",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        data={"wipe_cache": "true" if wipe else "false"},
        timeout=120,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"validate answered {answer.status_code}: {answer.text[:300]}")
    return answer.json()["image_id"]


def trace_timings(session: requests.Session, server: Server, image_id: str, event: str) -> dict:
    """Medians of each timing, batch size and queue wait over one image's `event` events."""
    events = session.get(f"{server.url}/api/images/{image_id}/trace", timeout=30).json()["events"]
    chosen = [e for e in events if e["event"] == event]
    keys = {key for e in chosen for key in e["timings_ms"]}
    found = {f"{k}_ms": statistics.median(e["timings_ms"].get(k, 0) for e in chosen) for k in keys}
    sizes = [e["batch_size"] for e in chosen if "batch_size" in e]
    if sizes:
        found["mean_batch_size"] = statistics.fmean(sizes)
    return found


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def ready_model(session: requests.Session, server: Server) -> dict:
    """The ``model`` object a worker of `server` answers /api/ready with (its dtype among it)."""
    return session.get(f"{server.url}/api/ready", timeout=30).json()["model"]


def bare_forward(model, crops: list[Image.Image]) -> Callable[[], object]:
    """The bare image-encoder forward on a ready batch: `get_image_features` on the processor's
    tensor of `crops`, made once, in the model's dtype and threads; nothing else is timed."""
    import numpy as np
    import torch

    if model.image_session is not None:
        batch = np.stack(model.prepare_images(crops))
        return lambda: model.image_session(batch)
    tensor = torch.from_numpy(np.stack(model.prepare_images(crops))).to(model.dtype)

    def forward() -> object:
        with torch.inference_mode():
            return model.model.get_image_features(pixel_values=tensor)

    return forward


def bench_analyze(plan, server: Server, model, image_id: str, crop: Image.Image) -> Comparison:
    """POST /api/analyze by image_id (computed, 1 face) vs the bare forward on a ready tensor."""
    session, client = _session(), Client(server)
    body = {"image_id": image_id, "wipe_cache": True}
    calls = 0

    def analyze() -> None:
        nonlocal calls
        calls += 1
        if client.post_json("/api/analyze", body)["cached"]:
            raise RuntimeError("analyze with wipe_cache was a cache hit")

    bare = bare_forward(model, [crop])
    faults = minor_faults(server.worker_pids)
    a_ms, b_ms = plan.compare(analyze, bare, settle_s=SETTLE_S)
    faults = (minor_faults(server.worker_pids) - faults) / max(1, calls)
    # The same pairs back to back, for comparison: each side then starts while the other
    # process's OpenMP thread may still spin (on 2026-12-06 this read no higher than the
    # settled ratio: README, Performance).
    close_a, close_b = plan.compare(analyze, bare)
    return Comparison(
        "http_analyze",
        "analyze by id, 1 face",
        f"HTTP, 1 worker {model.dtype_name}",
        f"bare fwd {model.dtype_name}",
        a_ms,
        b_ms,
        "analyze over HTTP (1 gunicorn worker, computed, not cached) costs this many times "
        "get_image_features alone on a ready 1x3x224x224 tensor, in the worker's dtype and "
        f"threads, each call {SETTLE_S * 1000:.0f} ms after the last (goal <= 1.15)",
        sanity={
            "dtype": model.dtype_name,
            "back_to_back_ratio": round(statistics.median(close_a) / statistics.median(close_b), 3),
            "worker_page_faults_per_analyze": round(faults, 1),
            **trace_timings(session, server, image_id, "analyzed"),
        },
    )


#: Seconds between the end of one timed call of analyze's A/B and the start of the next: the
#: bare forward runs in the bench's process, the analyze in the worker, and libgomp's threads spin
#: about 9 ms after each forward pass, on the cores the other side's next call needs.
SETTLE_S = 0.03


def minor_faults(pids: set[int]) -> int:
    """The minor page faults the processes `pids` have taken so far (Linux /proc; 0 elsewhere):
    each a page of memory the kernel had to map afresh while they ran."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                total += int(fh.read().rsplit(")", 1)[1].split()[7])
        except (OSError, IndexError, ValueError):
            continue
    return total


def bench_analyze_int8(plan, fp32: Server, int8: Server, jpeg: bytes, dtype: str) -> Comparison:
    """POST /api/analyze by image_id (computed) on a default worker (DTYPE=auto: `dtype`) vs an
    int8 worker."""
    session = _session()
    ids = {server.url: upload(session, server, jpeg) for server in (fp32, int8)}

    def analyze(server: Server) -> Callable[[], None]:
        client, body = Client(server), {"image_id": ids[server.url], "wipe_cache": True}
        return lambda: client.post_json("/api/analyze", body)

    a_ms, b_ms = plan.compare(analyze(fp32), analyze(int8))
    return Comparison(
        "http_analyze_int8",
        "analyze by id, DTYPE",
        f"HTTP {dtype} (auto)",
        "HTTP int8",
        a_ms,
        b_ms,
        f"an int8 worker (ONNX Runtime) answers analyze by id this many times faster than a "
        f"default worker, which DTYPE=auto put in {dtype} (goal vs float32: >= 2.5)",
    )


def bench_validate(plan, server: Server, large: bytes) -> Comparison:
    """POST /api/validate of a 4000x3000 JPEG (validated afresh) vs decoding it alone."""
    from faceapp.config import DEFAULTS
    from faceapp.decoding import decode_image

    session = _session()
    state = {}

    def http() -> None:
        state["id"] = upload(session, server, large, wipe=True)

    def decode() -> None:
        decode_image(
            large,
            max_bytes=len(large) + 1,
            max_pixels=DEFAULTS["MAX_IMAGE_PIXELS"],
            max_side=DEFAULTS["STORED_MAX_SIDE"],
        )

    a_ms, b_ms = plan.compare(http, decode)
    return Comparison(
        "http_validate",
        "validate 4000x3000 JPEG",
        "HTTP validate",
        "decode alone",
        a_ms,
        b_ms,
        f"validating a {len(large) // 1024} KB 4000x3000 JPEG over HTTP costs this many times "
        "decoding it (goal: validate <= 80 ms)",
        sanity={
            "jpeg_bytes": len(large),
            **trace_timings(session, server, state["id"], "validated"),
        },
    )


def run_clients(server: Server, image_ids: list[str], clients: int, seconds: float) -> dict:
    """`clients` threads posting analyze (computed: wipe_cache) for `seconds`; what they saw.

    The rate and the latencies are those of the answers that arrived in the window's steady
    part: from a settling time after the start (the first batches, while the batching window
    learns the demand) to its end, every client sending all along. The answers after the end,
    as the clients finish their last requests fewer at a time, are left out: they would charge
    the service with a ramp-down that the bare loop it is compared with does not have.
    """
    answers: list[tuple[float, float]] = []  # (when it arrived, its latency in ms)
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        connection = Client(server)
        body = {"image_id": image_ids[index % len(image_ids)], "wipe_cache": True}
        start.wait()
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            try:
                status, _ = connection.post("/api/analyze", body)
                ok = status == 200
                problem = f"{status}" if not ok else ""
            except (http.client.HTTPException, OSError) as exc:
                ok, problem = False, type(exc).__name__
            ended = time.perf_counter()
            with lock:
                if ok:
                    answers.append((ended, (ended - began) * 1000))
                else:
                    errors.append(problem)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    settled, deadline[0] = began + min(1.0, seconds / 4), began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    counted = sorted(ms for ended, ms in answers if settled <= ended <= deadline[0])
    ordered = counted or [0.0]
    return {
        "images_per_s": len(counted) / (deadline[0] - settled),
        "p50_ms": ordered[len(ordered) // 2],
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "requests": len(answers),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }


def bare_throughput(forward: Callable[[], object], batch: int, seconds: float) -> float:
    """Images per second of a bare forward (:func:`bare_forward`) of `batch` images, for
    `seconds`."""
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds or done == 0:
        forward()
        done += batch
    return done / (time.perf_counter() - began)


def bench_clients(
    plan, server: Server, model, image_ids: list[str], crops8: list[Image.Image]
) -> list[Comparison]:
    """1, 8 and 32 clients on 2 workers vs the bare forward at batch 8 on every core (a ready
    tensor, in the workers' dtype).

    Rounds interleave a window of each client count with a window of the bare encoder; the
    comparison is in milliseconds per image (A/B > 1: the service is slower than the bare model).
    """
    window = plan.window_s
    forward = bare_forward(model, crops8)
    seen: dict[int, list[dict]] = {n: [] for n in CLIENT_COUNTS}
    bare: dict[int, list[float]] = {n: [] for n in CLIENT_COUNTS}
    run_clients(server, image_ids, 2, min(window, 2))  # warm both workers
    for _ in range(plan.rounds):
        for clients in CLIENT_COUNTS:
            bare[clients].append(bare_throughput(forward, len(crops8), window))
            seen[clients].append(run_clients(server, image_ids, clients, window))
    session = _session()
    batching = trace_timings(session, server, image_ids[0], "analyzed")
    results = []
    for clients in CLIENT_COUNTS:
        runs = seen[clients]
        results.append(
            Comparison(
                f"http_clients_{clients}",
                f"{clients} client(s), 2 workers",
                "HTTP ms/image",
                f"bare b8 {model.dtype_name} ms/img",
                [1000 / max(r["images_per_s"], 1e-9) for r in runs],
                [1000 / x for x in bare[clients]],
                f"{clients} concurrent client(s) analysing over HTTP get one image per this many "
                "times the bare batch-8 forward's time on every core, in the workers' dtype "
                "(goal for 8: <= 1.18, i.e. >= 0.85x the bare images/s)",
                sanity={
                    "http_images_per_s": statistics.median(r["images_per_s"] for r in runs),
                    "bare_images_per_s": statistics.median(bare[clients]),
                    "http_to_bare": statistics.median(r["images_per_s"] for r in runs)
                    / statistics.median(bare[clients]),
                    "request_p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "request_p95_ms": statistics.median(r["p95_ms"] for r in runs),
                    "requests": sum(r["requests"] for r in runs),
                    "errors": sum(r["errors"] for r in runs),
                    "error_kinds": sorted({k for r in runs for k in r["error_kinds"]}),
                    **({"trace": batching} if clients == CLIENT_COUNTS[-1] else {}),
                },
            )
        )
    return results


def pss_mb(pid: int) -> float:
    """Proportional set size of one process (shared pages split among their sharers)."""
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for {pid}")


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
            found.extend(int(x) for x in fh.read().split())
    return found


def bench_memory(server: Server, folder: str) -> Comparison:
    """PSS of the master and its 2 warm workers vs the size of the weights they share."""
    master = server.process.pid
    workers = children(master)
    per_process = {pid: pss_mb(pid) for pid in [master, *workers]}
    total = sum(per_process.values())
    weights = sum(
        os.path.getsize(os.path.join(folder, name))
        for name in os.listdir(folder)
        if name.endswith(".safetensors")
    ) / (1024 * 1024)
    return Comparison(
        "http_memory",
        "PSS, 2 warm workers",
        "master + workers",
        "weights file",
        [total],
        [weights],
        "2 warm workers and the master hold this many times the weights file in proportional "
        "memory (goal: <= 1.2 GB in total for the real model)",
        unit="MB",
        sanity={
            "total_MB": total,
            "master_MB": per_process[master],
            "workers_MB": [per_process[pid] for pid in workers],
        },
    )


def bench_start(
    folder: str, scratch: str, rounds: int, load_s: Callable[[], float]
) -> list[Comparison]:
    """Start to /api/ready (label cache warm) vs a bare load + warm-up, two ways: gunicorn from
    nothing (1 worker), and one more worker forked by the running master (SIGTTIN), as after a
    crash or when max_requests recycles one."""
    cold: list[float] = []
    forked: list[float] = []
    bare: list[float] = []
    for index in range(rounds):
        bare.append(load_s() * 1000)
        with gunicorn(folder, scratch, 1, f"start-{index}") as server:
            cold.append(server.ready_s * 1000)
            began = time.perf_counter()
            os.kill(server.process.pid, signal.SIGTTIN)
            _wait_ready(
                server.url,
                server.process,
                server.log_path,
                lambda ready, known=server.worker_pids: bool(ready - known),
            )
            forked.append((time.perf_counter() - began) * 1000)
    return [
        Comparison(
            "http_start",
            "gunicorn start to ready",
            "gunicorn start",
            "bare load+warm",
            cold,
            bare,
            "gunicorn with 1 worker (label cache warm) answers ready this many times later than "
            "a bare load_clip + warm-up in a warm process (the master imports torch once first)",
        ),
        Comparison(
            "http_worker_start",
            "worker start to ready",
            "new worker",
            "bare load+warm",
            forked,
            bare,
            "a worker forked by a running master (SIGTTIN; a crash or max_requests does the "
            "same) is ready this many times later than a bare load_clip + warm-up "
            "(goal: worker start to ready <= 4 s)",
        ),
    ]


def run_http(plan, folder: str, photo: Image.Image, large: bytes, jpeg: bytes) -> list:
    """Every HTTP section, on servers started and stopped here."""
    from bench.models import face_regions, load_model
    from faceapp.face_geometry import aligned_crop
    from faceapp.face_models import available_cores

    regions = face_regions(photo)
    crop = aligned_crop(photo, regions[0].box, None)
    results = []
    scratch = tempfile.mkdtemp(prefix="faceapp-bench-http-")
    try:
        variants = [_variant(photo, quality) for quality in range(85, 93)]
        with gunicorn(folder, scratch, 1, "one") as server:
            session = _session()
            dtype = ready_model(session, server)["dtype"]
            # One worker gets every core: the bare model in this process gets as many threads,
            # and the dtype DTYPE=auto gave the worker.
            model = load_model(folder, dtype, plan.threads or available_cores())
            image_id = upload(session, server, jpeg)
            results.append(bench_analyze(plan, server, model, image_id, crop))
            results.append(bench_validate(plan, server, large))
            with gunicorn(folder, scratch, 1, "int8", dtype="int8") as int8:
                results.append(bench_analyze_int8(plan, server, int8, jpeg, dtype))
        with gunicorn(folder, scratch, 2, "two") as server:
            session = _session()
            two_dtype = ready_model(session, server)["dtype"]
            if two_dtype != model.dtype_name:  # 1 thread each: DTYPE=auto may choose otherwise
                model = load_model(folder, two_dtype, plan.threads or available_cores())
            ids = [upload(session, server, data) for data in variants]
            results.extend(bench_clients(plan, server, model, ids, [crop] * 8))
            results.append(bench_memory(server, folder))
        del model

        def load_s() -> float:
            began = time.perf_counter()
            load_model(folder, dtype, plan.threads or available_cores())
            return time.perf_counter() - began

        results.extend(bench_start(folder, scratch, plan.start_rounds, load_s))
    finally:
        close_sessions()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _variant(photo: Image.Image, quality: int) -> bytes:
    from bench.photos import jpeg_bytes

    return jpeg_bytes(photo, quality=quality)
