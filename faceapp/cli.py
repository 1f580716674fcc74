"""``flask --app wsgi models ...`` (pull, list and make model folders) and ``flask eval``."""

from __future__ import annotations

import json
import os

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from faceapp import face_models, model_files, random_checkpoints
from faceapp.clip_vocab import default_bpe_file

FIT_FEW_IMAGES = 50  # below this many images per attribute, --fit says the fit is unreliable
EVAL_TIMEOUT_S = 24 * 3600  # one `flask eval` on the inference thread (not a request's 60 s)

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


@click.command("eval")
@click.argument("data", type=click.Path(exists=True))
@click.option(
    "--attributes",
    "attributes_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The attribute file to score (default: the app's, ATTRIBUTES_FILE or the bundled one).",
)
@click.option(
    "--against",
    type=click.Path(exists=True, dir_okay=False),
    help="A second attribute file scored on the same crops; the report shows the difference.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write the report.")
@click.option(
    "--fit",
    is_flag=True,
    help="Fit a temperature per attribute on DATA and write it into the attribute file.",
)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--progress/--no-progress", default=None, help="Default: a bar on a terminal.")
@with_appcontext
def eval_command(
    data: str,
    attributes_file: str | None,
    against: str | None,
    json_path: str | None,
    html_path: str | None,
    fit: bool,
    batch_size: int,
    progress: bool | None,
) -> None:
    """Score DATA (DATA/<attribute>/<label>/*.jpg, or a path,attribute,label CSV) per attribute."""
    from faceapp import eval_report, evaluation, faces
    from faceapp.analysis import Analyzer
    from faceapp.attributes import DEFAULT_FILE, AttributeFileError, load_attribute_set
    from faceapp.engine import engine

    config = current_app.config
    attributes_file = attributes_file or config.get("ATTRIBUTES_FILE") or DEFAULT_FILE
    if fit and against:
        raise click.UsageError("--fit writes one attribute file: use it without --against.")
    if fit and os.path.abspath(attributes_file) == os.path.abspath(DEFAULT_FILE):
        raise click.UsageError(
            "--fit does not write into the bundled attribute set: copy faceapp/attributes.yaml, "
            "pass the copy with --attributes, and serve it with FACEAPP_ATTRIBUTES_FILE."
        )
    try:
        attribute_set = load_attribute_set(attributes_file)
        other_set = load_attribute_set(against) if against else None
        model = face_models.load_clip(config)
    except (AttributeFileError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    cache_dir = os.path.join(config["MODELS_DIR"], ".label-embeddings")
    inference = engine.get()  # label prompts are encoded as a worker encodes them
    embeddings = Analyzer(model, attribute_set, cache_dir, inference).label_embeddings
    other = None
    if other_set is not None:
        other = (other_set, Analyzer(model, other_set, cache_dir, inference).label_embeddings)
    if attribute_set.calibration_model not in (None, model.version):
        click.echo(
            f"warning: the temperatures in {attributes_file} were fitted for weights "
            f"{attribute_set.calibration_model}, not {model.version}",
            err=True,
        )
    detector = faces.detector()  # needs the app context, which the inference thread has not
    try:
        # The image batches run on the inference thread too, as in a worker: a second OS thread
        # calling torch gets its own OpenMP team and runs the same forward pass slower.
        report = inference.run(
            lambda: evaluation.evaluate(
                data,
                model=model,
                attribute_set=attribute_set,
                label_embeddings=embeddings,
                detector=detector,
                config=config,
                against=other,
                batch_size=batch_size,
                progress=progress,
            ),
            timeout=EVAL_TIMEOUT_S,
        )
    except evaluation.DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    if fit:
        report = _fit(report, attributes_file, model.version)
    click.echo(eval_report.format_table(report))
    if json_path:
        _write(json_path, json.dumps(eval_report.to_json(report), indent=2) + "\n")
    if html_path:
        _write(html_path, eval_report.to_html(report))


def _fit(report, attributes_file: str, weights_version: str):
    """Fit, write the temperatures, and re-score with them (the crops are not encoded again)."""
    from datetime import UTC, datetime

    from faceapp import evaluation
    from faceapp.attributes import load_attribute_set, write_calibration

    if not report.scores:
        raise click.ClickException("nothing to fit: no attribute had a scored image")
    temperatures = evaluation.fit_temperatures(report.scores, report.logit_scale)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    write_calibration(
        attributes_file,
        temperatures,
        model=weights_version,
        fitted_on=f"{stamp}, {report.data}",
        images=sum(len(group.truth) for group in report.scores.values()),
    )
    fitted = load_attribute_set(attributes_file)
    before = {name: result.ece for name, result in report.result.attributes.items()}
    report.result = evaluation.SetResult(
        fitted.source,
        fitted.digest,
        evaluation.score_set(report.scores, fitted, report.logit_scale),
    )
    report.model = {**report.model, "attributes_version": fitted.digest}
    click.echo(f"Wrote temperatures into {attributes_file} (attributes version {fitted.digest}):")
    low, high = evaluation.TEMPERATURE_RANGE
    for name, temperature in temperatures.items():
        result = report.result.attributes[name]
        notes = []
        if result.n < FIT_FEW_IMAGES:
            notes.append(f"only {result.n} images: not a reliable fit")
        if not low * 1.01 < temperature < high * 0.99:
            notes.append("at the edge of the range the file accepts")
        click.echo(
            f"  {name:<16} T={temperature:.3f}  ECE {before[name]:.3f} -> {result.ece:.3f}"
            + (f"  ({'; '.join(notes)})" if notes else "")
        )
    return report


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"Wrote {path}")
