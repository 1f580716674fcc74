"""``flask --app wsgi eval DATA``: score a labelled dataset per attribute (and ``--fit`` it)."""

from __future__ import annotations

import json
import os

import click
from flask import current_app
from flask.cli import with_appcontext

FIT_FEW_IMAGES = 50  # below this many images per attribute, --fit says the fit is unreliable
EVAL_TIMEOUT_S = 24 * 3600  # one `flask eval` on the inference thread (not a request's 60 s)


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
    from faceapp import face_models, faces
    from faceapp.analysis import Analyzer
    from faceapp.attributes import DEFAULT_FILE, AttributeFileError, load_attribute_set
    from faceapp.engine import engine
    from faceapp.eval import evaluation
    from faceapp.eval import report as report_formats

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
    click.echo(report_formats.format_table(report))
    if json_path:
        _write(json_path, json.dumps(report_formats.to_json(report), indent=2) + "\n")
    if html_path:
        _write(html_path, report_formats.to_html(report))


def _fit(report, attributes_file: str, weights_version: str):
    """Fit, write the temperatures, and re-score with them (the crops are not encoded again)."""
    from datetime import UTC, datetime

    from faceapp.attributes import load_attribute_set, write_calibration
    from faceapp.eval import evaluation

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
