"""What the sections share: the random CLIP checkpoint, a model loaded from it, and the faces.

Below bench/run.py and bench/http.py, which both use it, so neither imports the other.
"""

from __future__ import annotations

import os
import time

from PIL import Image

from bench.memory import cpu_model_config


def bench_dir() -> str:
    """Where checkpoints are kept between runs: $FACEAPP_BENCH_DIR or ~/.cache/faceapp-bench."""
    return os.environ.get("FACEAPP_BENCH_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "faceapp-bench"
    )


def ensure_checkpoint(size: str) -> tuple[str, float | None]:
    """The random checkpoint of `size`, written once (as `flask models random` does), then reused.

    Its tokenizer is CLIP's own BPE (the file `make install` fetched), so prompts cost what they
    cost with the real model. Returns its folder and the seconds spent writing it (None when it
    was reused).
    """
    from faceapp.clip_vocab import default_bpe_file
    from faceapp.model_files import read_manifest
    from faceapp.random_checkpoints import write_random_checkpoint

    bpe = default_bpe_file()
    if bpe is None:
        raise RuntimeError("CLIP's BPE file is missing: run `make install` (it fetches it)")
    folder = os.path.join(bench_dir(), f"random-clip-{size}")
    manifest = read_manifest(folder) if os.path.isdir(folder) else None
    if (
        manifest
        and manifest.get("id") == f"random-clip-{size}"
        and manifest.get("tokenizer") == "clip-bpe"
    ):
        return folder, None
    print(f"writing a random {size} checkpoint to {folder} (once) ...", flush=True)
    started = time.perf_counter()
    write_random_checkpoint(folder, size=size, bpe_file=bpe)
    return folder, time.perf_counter() - started


def load_model(folder: str, dtype: str, threads: int | None):
    """A LoadedModel as a worker would have it: loaded by `load_clip`, warmed up."""
    from faceapp.face_models import load_clip

    model = load_clip(cpu_model_config(folder, dtype, threads))
    model.warm_up()
    return model


def face_regions(image: Image.Image) -> list:
    """The faces faceapp's own detector finds in `image`, as analysis regions, largest first."""
    from faceapp import faces
    from faceapp.analysis import Region
    from faceapp.config import DEFAULTS

    # Haar needs no download; the benchmark measures the CLIP side.
    detector = faces.build_detector({**DEFAULTS, "DETECTOR": "haar"}).detector
    found = faces.detect_faces(detector, image, DEFAULTS["DETECT_MAX_SIDE"])
    return [Region(face.to_dict()["box"], face.confidence, True) for face in found]
