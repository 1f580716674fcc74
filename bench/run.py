"""``python -m bench.run [--size base|tiny] [--quick] [--json OUT]``: where faceapp's time goes.

Every figure is a comparison made within this one run: A and B interleaved (A/B/A/B...) after a
warm-up, medians of up to --repeats rounds (fewer once a comparison's --budget is spent), and the
ratio A/B; never an absolute threshold, since the machines are shared and noisy. The checkpoint
has random weights (written by the code behind ``flask models random``), so timings are those of
the real architecture while labels and scores mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from bench import batch, http, jobs, photos, portraits
from bench.fairness import bench_fair_queue
from bench.memory import measure_in_subprocesses
from bench.models import ensure_checkpoint, face_regions, load_model
from bench.timing import Comparison, interleaved

# The sections of a run, in order; the JSON's "sections" holds exactly these keys.
SECTIONS = (
    "zero_shot",
    "encoder_dtype_batch1",
    "encoder_dtype_batch4",
    "encoder_int8_batch1",
    "encoder_int8_batch8",
    "decode_draft",
    "end_to_end_cache",
    "face_batching",
    "fair_queue",
    "memory",
    "http_analyze",
    "http_validate",
    "http_analyze_int8",
    "http_clients_1",
    "http_clients_8",
    "http_clients_32",
    "http_memory",
    "http_start",
    "http_worker_start",
    "http_validate_portraits",
    "jobs_throughput",
    "jobs_post_10000",
    "jobs_results_stream",
    "jobs_interactive_p95",
    "batch_http_loop",
    "batch_inprocess_loop",
    "batch_server",
    "batch_memory",
)


@dataclass(frozen=True)
class Plan:
    """How much to measure: the checkpoint size, the rounds per comparison, the torch threads."""

    size: str
    repeats: int  # timed A/B rounds per comparison, at most
    budget_s: float | None  # no new round after this long (at least MIN_ROUNDS run)
    warmup: int
    threads: int | None  # torch threads; None: what a single worker would use
    window_s: float = 8.0  # seconds per load window (clients, bare batch-8 throughput)
    rounds: int = 3  # interleaved rounds of every client count
    start_rounds: int = 2  # gunicorn starts timed
    http_only: bool = False  # skip the in-process sections
    batch_only: bool = False  # only the batch_* sections
    jobs_only: bool = False  # only the jobs_* sections
    batch_photos: int = 200  # photos per batch pass, and passes (rounds) of each kind
    batch_rounds: int = 2
    batch_memory: tuple[int, int] = (100, 2000)  # RSS after this many images, and this many
    quick: bool = False  # --quick: the smoke run's windows and rounds

    def compare(self, a: Callable[[], object], b: Callable[[], object], settle_s: float = 0.0):
        """Time `a` against `b`, interleaved, as this plan says (`settle_s`: bench.timing's)."""
        return interleaved(a, b, self.repeats, self.warmup, self.budget_s, settle_s)

    def argv(self) -> list[str]:
        """The options that give another ``python -m bench.run`` this plan."""
        small, large = self.batch_memory
        options = [
            *(["--quick"] if self.quick else []),
            *("--size", self.size, "--repeats", str(self.repeats)),
            *("--batch-photos", str(self.batch_photos), "--batch-rounds", str(self.batch_rounds)),
            *("--batch-memory", f"{small},{large}" if small or large else "0"),
        ]
        if self.budget_s is not None:
            options += ["--budget", f"{self.budget_s:g}"]
        if self.threads is not None:
            options += ["--threads", str(self.threads)]
        return options


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size",
        choices=("base", "tiny"),
        default=None,
        help="checkpoint architecture (default base; tiny with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny model and few repeats: a smoke run of every section",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed A/B rounds per comparison, at most (default 15; quick 3)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per comparison after which no new round starts "
        "(default 20; none with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: as faceapp gives one worker, all cores)",
    )
    parser.add_argument(
        "--http-only",
        action="store_true",
        help="only the sections that measure the service over HTTP (http_*)",
    )
    parser.add_argument(
        "--batch-only",
        action="store_true",
        help="only the sections that measure flask batch (batch_*)",
    )
    parser.add_argument(
        "--jobs-only",
        action="store_true",
        help="only the sections that measure jobs on Celery workers (jobs_*)",
    )
    parser.add_argument(
        "--batch-photos",
        type=int,
        default=None,
        help="photos per batch pass (default 200; quick 24; 0 skips the speed sections)",
    )
    parser.add_argument(
        "--batch-rounds", type=int, default=None, help="passes of each kind (default 2; quick 1)"
    )
    parser.add_argument(
        "--batch-memory",
        default=None,
        help="SMALL,LARGE: batch RSS after this many images vs this many (default 100,2000; "
        "quick 10,40; 0 skips it)",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="also write the numbers here")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    size = args.size or ("tiny" if args.quick else "base")
    repeats = args.repeats or (3 if args.quick else 15)
    budget = args.budget if args.budget is not None else (None if args.quick else 20.0)
    quick = args.quick
    return Plan(
        size=size,
        repeats=max(1, repeats),
        budget_s=budget,
        warmup=1,
        threads=args.threads,
        window_s=0.5 if quick else 8.0,
        rounds=1 if quick else 3,
        start_rounds=1 if quick else 2,
        http_only=args.http_only,
        batch_only=args.batch_only,
        jobs_only=args.jobs_only,
        batch_photos=_default(args.batch_photos, 24 if quick else 200),
        batch_rounds=max(1, _default(args.batch_rounds, 1 if quick else 2)),
        batch_memory=_pair(args.batch_memory) or ((10, 40) if quick else (100, 2000)),
        quick=quick,
    )


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _pair(text: str | None) -> tuple[int, int] | None:
    """``SMALL,LARGE`` as two numbers; ``0`` as (0, 0), which skips the section."""
    if text is None:
        return None
    if text.strip() == "0":
        return (0, 0)
    small, large = (int(part) for part in text.split(","))
    return small, large


# --------------------------------------------------------------------------------------------
# Setup: the checkpoint and the models
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The comparisons
# --------------------------------------------------------------------------------------------


def score(analyzer, image: Image.Image, regions: list, names: list[str]) -> list[dict]:
    """What a request gets: the regions' crops scored on the analyzer's inference thread."""
    from faceapp.face_geometry import aligned_crop

    crops = [aligned_crop(image, region.box, None) for region in regions]
    return analyzer.analyze(crops, regions, names, None, False)[0]


def bench_zero_shot(plan: Plan, analyzer, photo: Image.Image, region) -> Comparison:
    """Per request: re-encode every attribute prompt (naive) vs precomputed label embeddings."""
    from faceapp.analysis import Analyzer

    model, attribute_set = analyzer.model, analyzer.attributes
    names = attribute_set.names()
    flat = [p for a in attribute_set.attributes.values() for ps in a.prompts for p in ps]
    prompts = len(flat)
    tokens = model.processor(text=flat, return_tensors="pt", padding=True)["input_ids"].shape[1]

    def naive() -> list[dict]:
        # A fresh Analyzer encodes every prompt again, as transformers' zero-shot pipeline
        # encodes its candidate labels on every call.
        return score(Analyzer(model, attribute_set, None, analyzer.engine), photo, [region], names)

    def precomputed() -> list[dict]:
        return score(analyzer, photo, [region], names)

    a_ms, b_ms = plan.compare(naive, precomputed)
    same = naive()[0]["attributes"] == precomputed()[0]["attributes"]
    return Comparison(
        "zero_shot",
        "zero-shot, 1 face",
        f"encode {prompts} prompts",
        "precomputed",
        a_ms,
        b_ms,
        f"per request, encoding the {prompts} attribute prompts (as a zero-shot pipeline does) "
        "costs this many times faceapp's image encoder + matmul",
        sanity={
            "prompts": prompts,
            "attributes": len(names),
            "padded_tokens": tokens,
            "same_scores": same,
        },
    )


def bench_encoder_dtype(plan: Plan, fp32, bf16, crops: list[Image.Image], key: str) -> Comparison:
    """The bare image encoder (a ready tensor) with float32 vs bfloat16 weights, same crops."""
    a_ms, b_ms = plan.compare(http.bare_forward(fp32, crops), http.bare_forward(bf16, crops))
    difference = (fp32.encode_images(crops) - bf16.encode_images(crops)).abs().max().item()
    return Comparison(
        key,
        f"image encoder, batch {len(crops)}",
        "float32",
        "bfloat16",
        a_ms,
        b_ms,
        f"bfloat16 weights encode {len(crops)} face crop(s) this many times faster than float32",
        sanity={"max_abs_diff_normalised_embedding": difference},
    )


def bench_int8(plan: Plan, fp32, int8, crops: list[Image.Image], key: str) -> Comparison:
    """The bare image encoder (ready pixels) in torch float32 vs ONNX Runtime int8, with their
    embeddings' cosine."""
    a_ms, b_ms = plan.compare(http.bare_forward(fp32, crops), http.bare_forward(int8, crops))
    cosine = (fp32.encode_images(crops) * int8.encode_images(crops)).sum(dim=-1)
    return Comparison(
        key,
        f"image encoder, batch {len(crops)}",
        "torch float32",
        "ONNX int8",
        a_ms,
        b_ms,
        f"DTYPE=int8 encodes {len(crops)} face crop(s) this many times faster than float32",
        sanity={"cosine_min": cosine.min().item(), "cosine_mean": cosine.mean().item()},
    )


def label_agreement(
    fp32_analyzer, bf16_analyzer, image: Image.Image, regions: list, names: list[str]
) -> dict:
    """How many (face, attribute) argmax labels bfloat16 shares with float32."""
    ours = score(fp32_analyzer, image, regions, names)
    theirs = score(bf16_analyzer, image, regions, names)
    pairs = [
        (a["attributes"][n]["label"], b["attributes"][n]["label"])
        for a, b in zip(ours, theirs, strict=True)
        for n in names
    ]
    return {"argmax_labels_agree": sum(x == y for x, y in pairs), "argmax_labels_total": len(pairs)}


def bench_face_batching(
    plan: Plan, analyzer, image: Image.Image, regions: list, names: list[str]
) -> Comparison:
    """All faces of an image in one forward pass vs one forward pass per face."""

    def per_face() -> list[dict]:
        return [face for region in regions for face in score(analyzer, image, [region], names)]

    def batched() -> list[dict]:
        return score(analyzer, image, regions, names)

    a_ms, b_ms = plan.compare(per_face, batched)
    return Comparison(
        "face_batching",
        f"{len(regions)} faces, analysis",
        "pass per face",
        "one batch",
        a_ms,
        b_ms,
        f"scoring {len(regions)} faces in one batch is this many times faster than one by one",
        sanity={"faces": len(regions)},
    )


def bench_decode(plan: Plan, large: bytes, max_side: int, key: str) -> Comparison:
    """A 4000x3000 JPEG to `max_side`: full-size decode then resize vs `decode_image`'s draft."""
    import io

    import numpy as np

    from faceapp.decoding import decode_image

    limits = {"max_bytes": len(large) + 1, "max_pixels": 40_000_000}

    def full() -> Image.Image:
        # Same resize as decode_image's own; the only difference is the JPEG draft.
        image = decode_image(large, **limits).image
        width, height = image.size
        scale = max_side / max(width, height)
        return image.resize(
            (round(width * scale), round(height * scale)),
            Image.Resampling.LANCZOS,
            reducing_gap=3.0,
        )

    def draft() -> Image.Image:
        return decode_image(large, max_side=max_side, **limits).image

    a_ms, b_ms = plan.compare(full, draft)
    reduced = draft()
    diff = float(np.abs(np.asarray(full(), dtype=np.float64) - np.asarray(reduced)).mean())
    with Image.open(io.BytesIO(large)) as probe:
        # JPEG decodes at 1/1, 1/2, 1/4 or 1/8 scale, never below the requested size.
        probe.draft("RGB", reduced.size)
        decoded_at = list(probe.size)
    return Comparison(
        key,
        f"JPEG 4000x3000 -> {max_side}",
        "full + resize",
        "decode_image draft",
        a_ms,
        b_ms,
        f"decode_image(max_side={max_side}) is this many times faster than decoding every "
        "pixel and resizing",
        sanity={
            "jpeg_bytes": len(large),
            "jpeg_decoded_at": decoded_at,
            "output_size": list(reduced.size),
            "mean_abs_pixel_diff_levels": diff,
            "mean_abs_pixel_diff_fraction": diff / 255,
        },
    )


def bench_end_to_end(plan: Plan, folder: str, jpeg: bytes) -> Comparison:
    """Through Flask's test client: validate + analyze (cache miss) vs analyze again (cache hit)."""
    import io

    from faceapp import create_app
    from faceapp.face_models import models

    with tempfile.TemporaryDirectory(prefix="faceapp-bench-") as scratch:
        app = create_app(
            {
                "TESTING": True,
                "TESTER_ENABLED": False,  # no secret key file in the project's instance folder
                "MODEL_NAME": folder,
                "MODELS_DIR": os.path.join(scratch, "models"),
                "STORE_URL": os.path.join(scratch, "store"),
                "LOAD_MODEL_ON_START": False,
                "MODEL_AUTO_PULL": False,
                "LOG_LEVEL": "WARNING",
                "TORCH_THREADS": plan.threads or 0,  # 0: as one worker would
            }
        )
        with app.app_context():
            if models.load(app) is None:
                raise RuntimeError(f"the benchmark app's model is not ready: {models.reason()}")
        client = app.test_client()
        state: dict[str, Any] = {}

        def post(path: str, **kwargs) -> dict:
            answer = client.post(path, **kwargs)
            if answer.status_code != 200:
                raise RuntimeError(f"{path} answered {answer.status_code}: {answer.get_data()!r}")
            return answer.get_json()

        def miss() -> None:
            files = {"file": (io.BytesIO(jpeg), "astronaut.jpg"), "wipe_cache": "true"}
            state["image_id"] = post("/api/validate", data=files)["image_id"]
            if post("/api/analyze", json={"image_id": state["image_id"]})["cached"]:
                raise RuntimeError("analyze after wipe_cache was a cache hit")

        def hit() -> None:
            if not post("/api/analyze", json={"image_id": state["image_id"]})["cached"]:
                raise RuntimeError("a repeated analyze was not a cache hit")

        a_ms, b_ms = plan.compare(miss, hit)
    return Comparison(
        "end_to_end_cache",
        "Flask: astronaut",
        "validate+analyze",
        "cached analyze",
        a_ms,
        b_ms,
        "a repeated analyze answered from the store is this many times faster than validating "
        "and analysing the upload",
        sanity={"jpeg_bytes": len(jpeg)},
    )


def bench_memory(folder: str, threads: int | None) -> Comparison:
    """RSS of a fresh process after loading and warming the model, float32 vs bfloat16."""
    probes = measure_in_subprocesses(folder, ["float32", "bfloat16"], threads)
    fp32, bf16 = probes["float32"], probes["bfloat16"]
    sanity = {
        probe["dtype"]: {
            "private_MB": probe["warm"]["anon"],  # this worker's own pages
            "file_backed_MB": probe["warm"]["file"],  # mapped files: shared between workers
            "peak_MB": probe["warm"]["peak"],
            "load_s": probe["load_ms"] / 1000,
        }
        for probe in (fp32, bf16)
    }
    sanity["stages"] = {
        probe["dtype"]: {stage: probe[stage] for stage in ("imported", "loaded", "warm")}
        for probe in (fp32, bf16)
    }
    return Comparison(
        "memory",
        "RSS, loaded + warm",
        "float32",
        "bfloat16",
        [fp32["warm"]["rss"]],
        [bf16["warm"]["rss"]],
        "a worker holding bfloat16 weights is this many times smaller in resident memory "
        "(one fresh process per dtype)",
        unit="MB",
        sanity=sanity,
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


#: The CPU flags the header shows: the vector and matrix instructions the encoder's speed in each
#: dtype depends on.
SHOWN_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "asimd",
    "bf16",
    "i8mm",
    "sve",
)


def machine_facts() -> dict:
    """What the numbers were measured on."""
    import torch
    import transformers

    from faceapp.auto_dtype import cpu_facts
    from faceapp.face_models import available_cores

    cpu = cpu_facts()
    return {
        "cpu": cpu["model"],
        "cpu_flags": [flag for flag in cpu["flags"] if flag in SHOWN_FLAGS],
        "cores_available": available_cores(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def format_table(results: Sequence[Comparison]) -> str:
    """The readable table: one row per comparison, then what each ratio means."""
    header = (
        f"{'comparison':24} {'A':18} {'B':20} {'n':>2} {'A p50 / p95':>16} "
        f"{'B p50 / p95':>16} {'A/B':>8} {'best/best':>9}  pair ratios p25-p75"
    )
    lines = [header, "-" * len(header)]
    for item in results:
        low, high = item.pair_ratio_quartiles()
        spread = f"{low:.2f}-{high:.2f}x" if len(item.a_samples) > 1 else "(one sample each)"
        a = f"{item.a:.1f} / {item.a_p95:.1f} {item.unit}"
        b = f"{item.b:.1f} / {item.b_p95:.1f} {item.unit}"
        lines.append(
            f"{item.title:24} {item.a_label:18} {item.b_label:20} {len(item.a_samples):>2} "
            f"{a:>16} {b:>16} {item.ratio:>7.2f}x {item.best_ratio:>8.2f}x  {spread}"
        )
    lines.append("")
    lines.append(
        "p50 / p95 over the rounds; A/B is the ratio of the medians, best/best that of the "
        "fastest rounds (less sensitive to other processes); A/B > 1: B is faster or smaller."
    )
    for item in results:
        lines.append(f"  {item.key}: {item.meaning}.")
        shown = {k: v for k, v in item.sanity.items() if k != "stages"}  # stages: JSON only
        if shown:
            lines.append(f"      {_sanity_text(shown)}")
    return "\n".join(lines)


def _loads(loads: Sequence[float] | None) -> str:
    return ", ".join(f"{x:.2f}" for x in loads) if loads else "n/a"


def _sanity_text(sanity: dict) -> str:
    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
        return str(value)

    return "; ".join(f"{key} = {show(value)}" for key, value in sanity.items())


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run(plan: Plan) -> tuple[dict, list[Comparison]]:
    """Run every section in order; returns the settings and the comparisons."""
    from faceapp.analysis import Analyzer
    from faceapp.attributes import load_attribute_set
    from faceapp.engine import InferenceEngine
    from faceapp.face_geometry import aligned_crop

    started = time.perf_counter()
    folder, written_s = ensure_checkpoint(plan.size)
    photo = photos.astronaut()
    mosaic = photos.four_faces(photo)
    single, four = face_regions(photo), face_regions(mosaic)
    if len(single) != 1 or len(four) != 4:
        raise RuntimeError(
            f"the detector found {len(single)} face(s) in the astronaut and "
            f"{len(four)} in the mosaic; expected 1 and 4"
        )
    attribute_set = load_attribute_set(None)
    names = attribute_set.names()
    if plan.batch_only:
        results = batch.run_batch(plan, folder)
        return _settings(plan, folder, written_s, started, batch_only=True), results
    if plan.jobs_only:
        results = jobs.run_jobs(plan, folder, photo)
        return _settings(plan, folder, written_s, started, jobs_only=True), results
    if plan.http_only:
        large = photos.large_jpeg(photo)
        results = http.run_http(plan, folder, photo, large, photos.jpeg_bytes(photo))
        results.extend(_guarded("portraits", lambda: portraits.run_portraits(plan, folder)))
        results.extend(_guarded("jobs", lambda: jobs.run_jobs(plan, folder, photo)))
        return _settings(plan, folder, written_s, started, http_only=True), results

    fp32 = load_model(folder, "float32", plan.threads)
    bf16 = load_model(folder, "bfloat16", plan.threads)
    inference = InferenceEngine(max_batch=64)  # one thread runs every model call, as in a worker
    fp32_analyzer = Analyzer(fp32, attribute_set, None, inference)  # built once, when ready
    crops = [aligned_crop(mosaic, region.box, None) for region in four]
    results = [bench_zero_shot(plan, fp32_analyzer, photo, single[0])]
    results.append(bench_encoder_dtype(plan, fp32, bf16, crops[:1], "encoder_dtype_batch1"))
    results.append(bench_encoder_dtype(plan, fp32, bf16, crops, "encoder_dtype_batch4"))
    results[-1].sanity.update(
        label_agreement(
            fp32_analyzer, Analyzer(bf16, attribute_set, None, inference), mosaic, four, names
        )
    )
    face_batching = bench_face_batching(plan, fp32_analyzer, mosaic, four, names)
    fair_queue = bench_fair_queue(fp32, crops, rounds=min(plan.repeats, 5))
    del bf16
    int8 = load_model(folder, "int8", plan.threads)
    eight = (crops * 2)[:8]
    results.append(bench_int8(plan, fp32, int8, crops[:1], "encoder_int8_batch1"))
    results.append(bench_int8(plan, fp32, int8, eight, "encoder_int8_batch8"))
    # Top-label agreement over the test photos: the astronaut and the four faces of the mosaic.
    int8_analyzer = Analyzer(int8, attribute_set, None, inference)
    for image, regions in ((photo, single), (mosaic, four)):
        found = label_agreement(fp32_analyzer, int8_analyzer, image, regions, names)
        for name, count in found.items():
            results[-1].sanity[name] = results[-1].sanity.get(name, 0) + count
    inference.stop()
    del fp32, int8, fp32_analyzer, int8_analyzer

    from faceapp.config import DEFAULTS

    large = photos.large_jpeg(photo)
    results.append(bench_decode(plan, large, DEFAULTS["STORED_MAX_SIDE"], "decode_draft"))
    results.append(bench_end_to_end(plan, folder, photos.jpeg_bytes(photo)))
    results.append(face_batching)
    results.append(fair_queue)
    results.append(bench_memory(folder, plan.threads))
    # The service's sections (HTTP, portraits, jobs) and flask batch's run in fresh processes.
    # After the sections above, this process's own bare forward ran up to 1.2x slower (its
    # thread pools and heaps as those left them: 29.9 against 25.9 ms per image at batch 8),
    # which flattered every ratio measured against it: 8 clients came out at 0.97x its speed.
    results.extend(in_a_fresh_process("http", "--http-only", plan))
    results.extend(in_a_fresh_process("batch", "--batch-only", plan))
    return _settings(plan, folder, written_s, started), results


def in_a_fresh_process(name: str, only: str, plan: Plan) -> list[Comparison]:
    """`python -m bench.run <only>` with this run's plan, in a new process: its comparisons.

    Its log goes to this one's stderr; what it could not measure is reported here too.
    """
    import subprocess  # noqa: S404 - this interpreter, this module

    with tempfile.TemporaryDirectory(prefix="faceapp-bench-part-") as scratch:
        out = os.path.join(scratch, "part.json")
        command = [sys.executable, "-m", "bench.run", only, "--json", out, *plan.argv()]
        done = subprocess.run(  # noqa: S603 - fixed arguments
            command,
            cwd=http.PROJECT_ROOT,
            stdout=subprocess.PIPE,  # its own table: this run prints the whole one
            text=True,
            check=False,
        )
        if done.returncode != 0:
            lines = [line for line in done.stdout.splitlines() if line.strip()]
            FAILED.append(f"{name}: exit {done.returncode}, {lines[-1] if lines else 'no output'}")
        if not os.path.isfile(out):
            return []
        with open(out, encoding="utf-8") as fh:
            sections = json.load(fh)["sections"]
    return [Comparison.from_dict(key, section) for key, section in sections.items()]


FAILED: list[str] = []  # the section groups that raised, reported under the table


def _guarded(name: str, sections: Callable[[], list[Comparison]]) -> list[Comparison]:
    """One group of sections; if it raises, the figures measured before it are still printed."""
    try:
        return sections()
    except Exception as error:  # noqa: BLE001 - a bench reports a broken section and goes on
        import traceback

        traceback.print_exc()
        FAILED.append(f"{name}: {type(error).__name__}: {error}")
        return []


def dtype_choices(folder: str) -> dict:
    """What DTYPE=auto chose for this checkpoint, per thread count (its cache files)."""
    from faceapp.auto_dtype import FOLDER

    found = {}
    cache = os.path.join(folder, FOLDER)
    for name in sorted(os.listdir(cache)) if os.path.isdir(cache) else []:
        if name.endswith(".json"):
            with open(os.path.join(cache, name), encoding="utf-8") as fh:
                choice = json.load(fh)
            where = f"{choice['machine']['threads']} torch thread(s)"
            found[where] = {key: choice.get(key) for key in ("dtype", "reason", "measured_at")}
    return found


def _settings(plan: Plan, folder: str, written_s: float | None, started: float, **extra) -> dict:
    return {
        "dtype": dtype_choices(folder),
        "size": plan.size,
        "repeats": plan.repeats,
        "budget_s": plan.budget_s,
        "warmup": plan.warmup,
        "threads": plan.threads,
        "checkpoint": folder,
        "checkpoint_written_s": written_s,
        "total_s": time.perf_counter() - started,
        **extra,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, and write the JSON when asked."""
    args = parse_args(argv)
    plan = make_plan(args)
    FAILED.clear()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random checkpoints only: never the hub
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    settings, results = run(plan)
    facts = {**machine_facts(), "load_average_before": load_before}
    print()
    budget = f", {plan.budget_s:g} s each" if plan.budget_s is not None else ""
    print(
        f"faceapp benchmark: random-weights CLIP '{plan.size}', medians of up to "
        f"{plan.repeats} interleaved A/B rounds{budget} (n: how many ran) after {plan.warmup} "
        f"warm-up, {settings['total_s']:.0f} s in all"
    )
    print(
        f"machine: {facts['cpu']} (flags: {' '.join(facts['cpu_flags']) or 'none of note'}); "
        f"{facts['cores_available']} cores available, torch {facts['torch']} with "
        f"{facts['torch_threads']} threads, transformers {facts['transformers']}, "
        f"Python {facts['python']}"
    )
    for where, choice in settings["dtype"].items():
        print(f"DTYPE=auto, {where}: {choice['dtype']} ({choice['reason']})")
    if not settings["dtype"]:
        print("DTYPE=auto: float32 (the CPU reports no native bfloat16; nothing was measured)")
    print(
        f"load average (1, 5, 15 min) before: {_loads(facts['load_average_before'])}, after: "
        f"{_loads(facts['load_average_after'])}"
    )
    one_minute = [loads[0] for loads in (load_before, facts["load_average_after"]) if loads]
    if one_minute and max(one_minute) > facts["cores_available"]:
        print(
            f"BUSY MACHINE: a load average above {facts['cores_available']} means other "
            "processes shared the cores; absolute times are inflated, and model timings with "
            "several torch threads worst (threads wait on each other); --threads 1 is steadier"
        )
    print()
    print(format_table(results))
    if args.json_out:
        document = {
            "machine": facts,
            "settings": settings,
            "sections": {item.key: item.to_dict() for item in results},
        }
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=2)
            fh.write("\n")
        print(f"\nwrote {args.json_out}")
    for failure in FAILED:
        print(f"SECTIONS NOT MEASURED ({failure})", file=sys.stderr)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
