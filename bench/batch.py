"""``flask batch`` against the loops people write without it (issue 17's goals), in one run.

Every figure is milliseconds per image over the same folder of real photos (scikit-image's, the
astronaut's face placed on other photographs, a quarter without a face), rounds interleaved:

- batch_http_loop: a one-client loop of validate + analyze against `make run`'s gunicorn
  (2 workers) vs ``flask batch`` in this process (goal: ratio >= 2.5);
- batch_inprocess_loop: one image at a time through the same pipeline (decode, detect, encode
  at batch 1, one inference thread with every core's torch threads), in a process of its own, vs
  ``flask batch`` (goal: ratio >= 1.3);
- batch_server: ``flask batch`` vs ``flask batch --server`` with its default requests in
  flight against the 2 workers (goal: ratio >= 0.8, the server's speed over the local batch's);
- batch_memory: the command's RSS after 2,000 images vs after 100 (goal: at most 50 MB more).

The store is wiped before each HTTP pass, so every photo is validated and analysed afresh.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess  # noqa: S404 - runs `flask batch` from this same virtual environment
import sys
import tempfile
import time

import requests
from PIL import Image, ImageEnhance, ImageOps

from bench import http
from bench.timing import Comparison

BACKGROUNDS = ("coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "astronaut")
NO_FACE_EVERY = 4  # one photo in four has no face (it is answered invalid, never encoded)


def make_photos(folder: str, count: int) -> list[str]:
    """`count` distinct real-photo JPEGs under `folder` (in subfolders of 100); their paths."""
    from skimage import data

    backgrounds = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in BACKGROUNDS]
    face = Image.fromarray(data.astronaut()).convert("RGB").crop((120, 10, 330, 220))
    paths = []
    for index in range(count):
        background = backgrounds[index % len(backgrounds)].resize((640, 480))
        if index % NO_FACE_EVERY:
            side = 150 + (index * 7) % 120
            patch = face.resize((side, side))
            if index % 2:
                patch = ImageOps.mirror(patch)
            background.paste(patch, ((index * 37) % (640 - side), (index * 53) % (480 - side)))
        image = ImageEnhance.Brightness(background).enhance(0.85 + (index % 7) * 0.05)
        path = os.path.join(folder, f"set-{index // 100:03d}", f"photo-{index:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=88 + index % 5)
        with open(path, "wb") as fh:
            fh.write(buffer.getvalue())
        paths.append(path)
    return paths


def batch_app(folder: str, scratch: str, threads: int | None, **settings: object):
    """The Flask app ``flask batch`` runs in, on this checkpoint and a scratch store, with the
    command's inference threads (one per core unless `settings` say otherwise)."""
    from faceapp import create_app
    from faceapp.batch.pipeline import use_the_cores

    app = create_app(
        {
            "TESTING": True,
            "TESTER_ENABLED": False,
            "MODEL_NAME": folder,
            "MODELS_DIR": folder,
            "STORE_URL": os.path.join(scratch, "store-local"),
            "LOAD_MODEL_ON_START": False,
            "MODEL_AUTO_PULL": False,
            **http.detector_settings(),
            "LOG_LEVEL": "WARNING",
            "TORCH_THREADS": threads or 0,
            **settings,
        }
    )
    use_the_cores(app.config)
    return app


def batch_pass(paths: list[str], process, out: str, workers: int) -> float:
    """One ``flask batch`` pass (the command's own runner and writer); ms per image."""
    from faceapp.batch import output, runner
    from faceapp.batch.progress import Progress, Tally

    tally = Tally()
    with open(os.devnull, "w") as quiet, output.open_writer(out, "jsonl", overwrite=True) as w:
        started = time.perf_counter()
        runner.run(
            paths, process, w, tally, Progress(tally, bar=False, stream=quiet), workers=workers
        )
        elapsed = time.perf_counter() - started
    if w.written != len(paths):
        raise RuntimeError(f"the batch wrote {w.written} lines for {len(paths)} photos")
    return elapsed * 1000 / len(paths)


def _loop(paths: list[str], process) -> float:
    started = time.perf_counter()
    for path in paths:
        process(path)
    return (time.perf_counter() - started) * 1000 / len(paths)


def loop_in_a_process(folder: str, scratch: str, paths: list[str], threads: int | None) -> float:
    """The one-at-a-time loop at its best, ms per image: in a process of its own (as a user's
    script would be: in this one, after a ``flask batch`` pass, the same loop ran 1.2-1.3x
    slower), with one inference thread and every core's torch threads, warmed up first."""
    spec = json.dumps({"folder": folder, "scratch": scratch, "paths": paths, "threads": threads})
    done = subprocess.run(  # noqa: S603 - this interpreter, this module
        [sys.executable, "-m", "bench.batch", spec],
        cwd=http.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the one-at-a-time loop failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _loop_main(spec: dict) -> None:
    from faceapp.batch.pipeline import Options, Pipeline

    app = batch_app(
        spec["folder"],
        spec["scratch"],
        spec["threads"],
        INFERENCE_THREADS=1,
        STORE_URL=os.path.join(spec["scratch"], f"store-loop-{os.getpid()}"),
    )
    pipeline = Pipeline(app, Options())  # loads and warms the model
    for path in spec["paths"][:3]:
        pipeline.process(path)
    print(_loop(spec["paths"], pipeline.process), flush=True)


def _wipe(server: http.Server) -> None:
    answer = requests.post(
        server.url + "/api/cache/wipe",
        headers={"Authorization": f"Bearer {http.ADMIN_KEY}"},
        timeout=60,
    )
    answer.raise_for_status()


def bench_throughput(plan, folder: str, count: int, rounds: int) -> list[Comparison]:
    """The three speed comparisons, their passes interleaved round by round."""
    from faceapp.batch.cli import SERVER_CONCURRENCY
    from faceapp.batch.client import Client
    from faceapp.batch.pipeline import Options, Pipeline, default_workers

    scratch = tempfile.mkdtemp(prefix="faceapp-bench-batch-")
    samples: dict[str, list[float]] = {"http": [], "batch": [], "loop": [], "server": []}
    try:
        paths = make_photos(os.path.join(scratch, "photos"), count)
        out = os.path.join(scratch, "out.jsonl")
        app = batch_app(folder, scratch, plan.threads)
        pipeline = Pipeline(app, Options())  # loads and warms the model
        workers = default_workers(app.config)

        with http.gunicorn(folder, scratch, 2, "batch") as server:  # YuNet, as batch_app has
            client = Client(server.url, Options(), api_key=None, config=app.config)
            client.connect()
            for _ in range(rounds):
                _wipe(server)
                samples["http"].append(_loop(paths, client.process))
                samples["batch"].append(batch_pass(paths, pipeline.process, out, workers))
                samples["loop"].append(loop_in_a_process(folder, scratch, paths, plan.threads))
                _wipe(server)
                samples["server"].append(batch_pass(paths, client.process, out, SERVER_CONCURRENCY))
    finally:
        http.close_sessions()
        shutil.rmtree(scratch, ignore_errors=True)
    sanity = {
        "photos": count,
        "rounds": rounds,
        "without_face": -(-count // NO_FACE_EVERY),
        "detector": http.detector_settings()["DETECTOR"],
        "batch_inference_threads": app.config["INFERENCE_THREADS"],
        "batch_workers": workers,
    }
    return [
        Comparison(
            "batch_http_loop",
            f"{count} photos, per image",
            "HTTP loop, 1 client",
            "flask batch",
            samples["http"],
            samples["batch"],
            "flask batch answers this many times more images per second than a one-client loop "
            "of validate + analyze against gunicorn's 2 workers (goal >= 2.5)",
            sanity=sanity,
        ),
        Comparison(
            "batch_inprocess_loop",
            f"{count} photos, per image",
            "one at a time",
            "flask batch",
            samples["loop"],
            samples["batch"],
            "flask batch answers this many times more images per second than the same pipeline "
            "run one image at a time in-process (goal >= 1.3)",
            sanity=sanity,
        ),
        Comparison(
            "batch_server",
            f"{count} photos, per image",
            "flask batch",
            f"--server, {SERVER_CONCURRENCY} in flight",
            samples["batch"],
            samples["server"],
            f"flask batch --server with {SERVER_CONCURRENCY} requests in flight (its default) "
            "against 2 workers runs at this fraction of the in-process batch's speed "
            "(goal >= 0.8)",
            sanity=sanity,
        ),
    ]


def bench_memory(folder: str, small: int, large: int, threads: int | None) -> Comparison:
    """RSS of a real ``flask batch`` process after `small` lines and after `large` lines."""
    scratch = tempfile.mkdtemp(prefix="faceapp-bench-batch-memory-")
    try:
        photos = os.path.join(scratch, "photos")
        make_photos(photos, large)
        out = os.path.join(scratch, "out.jsonl")
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "FACEAPP_INSTANCE_PATH": os.path.join(scratch, "instance"),
            "FACEAPP_MODEL_NAME": folder,
            "FACEAPP_MODELS_DIR": folder,
            "FACEAPP_MODEL_AUTO_PULL": "false",
            "FACEAPP_LOG_LEVEL": "WARNING",
            **{f"FACEAPP_{key}": value for key, value in http.detector_settings().items()},
        }
        if threads:
            env["FACEAPP_TORCH_THREADS"] = str(threads)
        command = [sys.executable, "-m", "flask", "--app", "wsgi", "batch", photos]
        process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [*command, "--out", out, "--no-progress"],
            cwd=http.PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        at_small = last = None
        lines = 0
        while process.poll() is None:
            rss = _rss_mb(process.pid)
            lines = _count_lines(out)
            if rss is not None:
                if at_small is None and lines >= small:
                    at_small = rss
                if lines >= small:
                    last = (rss, lines)
            time.sleep(0.2)
        if process.returncode != 0 or at_small is None or last is None:
            raise RuntimeError(f"flask batch exited {process.returncode} after {lines} lines")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Comparison(
        "batch_memory",
        f"flask batch RSS, {last[1]} vs {small} images",
        f"after {last[1]}",
        f"after {small}",
        [last[0]],
        [at_small],
        f"RSS after {last[1]} images over RSS after {small} (goal: at most 50 MB more)",
        unit="MB",
        sanity={"growth_MB": last[0] - at_small, "images": last[1]},
    )


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


def run_batch(plan, folder: str) -> list[Comparison]:
    """Every batch section, with the plan's numbers of photos (quick: a few dozen)."""
    results = []
    if plan.batch_photos:
        results += bench_throughput(plan, folder, plan.batch_photos, plan.batch_rounds)
    small, large = plan.batch_memory
    if large:
        results.append(bench_memory(folder, small, large, plan.threads))
    return results


if __name__ == "__main__":  # the one-at-a-time loop's own process (loop_in_a_process)
    _loop_main(json.loads(sys.argv[1]))
