"""``flask --app wsgi models ...``: pull, list and make model folders (``flask eval`` is in
faceapp/eval/cli.py)."""

from __future__ import annotations

import json
import os

import click
from flask import current_app
from flask.cli import AppGroup

from faceapp import model_files, random_checkpoints
from faceapp.clip_vocab import default_bpe_file

models_cli = AppGroup("models", help="Manage the models folder (MODELS_DIR).")


@models_cli.command("pull")
@click.argument("name", required=False)
@click.option("--revision", default=None, help="A branch, tag or commit of the hub repository.")
def pull(name: str | None, revision: str | None) -> None:
    """Download the models into the models folder: CLIP (NAME, default MODEL_NAME) from the
    Hugging Face hub and the YuNet face detector; `pull yunet` fetches the detector alone."""
    models_dir = current_app.config["MODELS_DIR"]
    if name != "yunet":
        pull_clip(name or current_app.config["MODEL_NAME"], models_dir, revision)
    if name in (None, "yunet"):
        pull_detector(models_dir)


def pull_clip(name: str, models_dir: str, revision: str | None) -> None:
    click.echo(f"Pulling {name} into {models_dir} ...")
    try:
        folder = model_files.pull_model(name, models_dir, revision=revision, progress=True)
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many; report, don't trace
        raise click.ClickException(
            f"could not pull {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    manifest = model_files.read_manifest(folder)
    click.echo(
        f"Stored in {folder}: revision {manifest['revision']}, "
        f"version {model_files.weights_version(manifest)}, {len(manifest['files'])} files."
    )


def pull_detector(models_dir: str) -> None:
    source = model_files.detector_source(current_app.config)
    click.echo(f"Pulling the YuNet face detector from {source['url']} into {models_dir} ...")
    try:
        path = model_files.pull_file(
            source["url"],
            source["sha256"],
            models_dir,
            size=source["size"],
            deadline=float(current_app.config["DETECTOR_PULL_DEADLINE"]),
        )
    except model_files.DownloadError as exc:
        raise click.ClickException(f"could not pull the face detector: {exc}") from exc
    manifest = model_files.read_manifest(os.path.dirname(path))
    click.echo(
        f"Stored {path}: revision {manifest['revision']}, "
        f"version {model_files.weights_version(manifest)}, "
        f"SHA-256 {manifest['files'][0]['sha256']}."
    )


@models_cli.command("random")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "--size",
    type=click.Choice(sorted(random_checkpoints.RANDOM_SIZES)),
    default="tiny",
    show_default=True,
    help="tiny: a few MB for tests; base: ViT-B/32 for benchmarks.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--bpe",
    "bpe_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="CLIP's BPE file (bpe_simple_vocab_16e6.txt.gz) for a tokenizer like the real model's; "
    "default: the one `make install` fetched, if any, else one token per byte.",
)
def random_model(folder: str, size: str, seed: int, bpe_file: str | None) -> None:
    """Write a CLIP checkpoint with random weights to FOLDER (use it as FACEAPP_MODEL_NAME)."""
    bpe_file = bpe_file or default_bpe_file()
    random_checkpoints.write_random_checkpoint(folder, size=size, seed=seed, bpe_file=bpe_file)
    manifest = model_files.read_manifest(folder)
    tokenizer = "CLIP's BPE" if bpe_file else "byte-level"
    click.echo(
        f"Wrote a random-weights {size} CLIP ({tokenizer} tokenizer) to {folder} "
        f"(version {model_files.weights_version(manifest)}). Serve it with "
        f"FACEAPP_MODEL_NAME={folder}"
    )


@models_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON.")
def list_models(as_json: bool) -> None:
    """List the models in the models folder with their versions."""
    found = model_files.list_models(current_app.config["MODELS_DIR"])
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(
            f"No models in {current_app.config['MODELS_DIR']}; "
            "`flask --app wsgi models pull` downloads one."
        )
    for item in found:
        size = sum(f["size"] for f in item["files"])
        flag = "  (random weights)" if item.get("random_weights") else ""
        click.echo(
            f"{item['id']:40} {item['version']}  {size / 1e6:8.1f} MB  {item['folder']}{flag}"
        )
