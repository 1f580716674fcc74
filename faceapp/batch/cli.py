"""``flask --app wsgi batch SOURCE... --out PATH``: many photos at once (docs/BATCH.md).

Thin: it checks the options and the SOURCEs (a usage error exits 2 with the output untouched),
builds the per-input work (the local pipeline, or the ``--server`` client), opens the output
(resuming it), and hands them to the runner with the signal handlers in place.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import click
from flask import current_app
from flask.cli import with_appcontext

from faceapp.batch import output, runner, sources
from faceapp.batch.pipeline import Options, default_workers, use_the_cores
from faceapp.batch.progress import Progress, Tally
from faceapp.errors import FaceappError

EXIT_BY_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def _split(values: Sequence[str]) -> tuple[str, ...]:
    """Repeated or comma-separated values, as the API's form fields take lists."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


#: --server's default requests in flight: two batches' worth (INFERENCE_MAX_BATCH, 8) for a
#: 2-worker deployment, so each worker's forward pass can fill up. Against 2 workers on 2 cores,
#: 16 took 27 ms per photo where 8 took 31.6 (32: 27.0).
SERVER_CONCURRENCY = 16


@click.command("batch")
@click.argument("inputs", metavar="SOURCE...", nargs=-1, required=True)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The output file (resumed)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="jsonl: a line per input; csv: a row per face. Default: from --out's extension.",
)
@click.option("--overwrite", is_flag=True, help="Start the output over instead of resuming it.")
@click.option("--attributes", multiple=True, help="Attributes to score (default all).")
@click.option("--labels", multiple=True, help="Free-text labels to score beside them.")
@click.option("--include-embedding", is_flag=True, help="Add each face's CLIP embedding.")
@click.option("--max-faces", type=int, help="Analyse at most this many faces (MAX_FACES).")
@click.option("--force", is_flag=True, help="Score the faces of invalid photos too.")
@click.option(
    "--attributes-file",
    type=click.Path(exists=True, dir_okay=False),
    help="An attribute file to score instead of the app's (local runs only).",
)
@click.option("--workers", type=click.IntRange(1, 256), help="Threads reading and decoding.")
@click.option("--server", metavar="URL", help="Drive a running faceapp deployment over HTTP.")
@click.option("--api-key", envvar="FACEAPP_API_KEY", help="The deployment's API key.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=SERVER_CONCURRENCY,
    show_default=True,
    help="Requests in flight with --server.",
)
@click.option("--progress/--no-progress", default=None, help="Default: a bar on a terminal.")
@with_appcontext
def batch_command(
    inputs: tuple[str, ...],
    out: str,
    fmt: str | None,
    overwrite: bool,
    attributes: tuple[str, ...],
    labels: tuple[str, ...],
    include_embedding: bool,
    max_faces: int | None,
    force: bool,
    attributes_file: str | None,
    workers: int | None,
    server: str | None,
    api_key: str | None,
    concurrency: int,
    progress: bool | None,
) -> None:
    """Validate and analyse every photo of the SOURCEs into --out, one line per input.

    A SOURCE is a folder (walked recursively, images taken by content), an image file or URL,
    a text file of paths or URLs (one a line), or a CSV with a path or url column. Run the same
    command again to resume; Ctrl-C finishes the inputs in flight and stops cleanly.
    """
    app = current_app._get_current_object()
    options = Options(_split(attributes), _split(labels), include_embedding, max_faces, force)
    fmt = fmt or ("csv" if out.lower().endswith(".csv") else "jsonl")
    if server and attributes_file:
        raise click.UsageError("--attributes-file is for local runs; a deployment scores its own.")
    try:
        sources.check_sources(inputs)
    except sources.SourceError as exc:
        raise click.UsageError(str(exc)) from None

    if server:
        from faceapp.batch.client import Client, ServerError

        client = Client(server, options, api_key=api_key, config=app.config)
        try:
            client.connect()
        except ServerError as exc:
            raise click.ClickException(str(exc)) from None
        process, names, threads = client.process, client.attribute_names, concurrency
    else:
        use_the_cores(app.config)
        pipeline = _pipeline(app, options, attributes_file)
        process, names = pipeline.process, pipeline.attribute_names
        threads = workers or default_workers(app.config)

    try:
        writer = output.open_writer(
            out, fmt, attributes=names, labels=options.labels, overwrite=overwrite
        )
    except output.OutputError as exc:
        raise click.UsageError(str(exc)) from None

    tally = Tally()
    report = Progress(tally, bar=progress)
    flags = runner.Flags()
    counting = _count_in_background(inputs, report, writer.resumed, flags)
    previous = _install_signal_handlers(flags)
    try:
        reason = runner.run(
            sources.iter_sources(inputs, on_skip=lambda _path: _count_skip(tally)),
            process,
            writer,
            tally,
            report,
            workers=threads,
            flags=flags,
        )
    finally:
        flags.stop.set()  # the counting walk stops too
        _restore_signal_handlers(previous)
        writer.close()
        report.close()
        counting.join(timeout=1)
    tally.finished = time.perf_counter()
    click.echo(tally.summary(interrupted=reason))
    click.echo(f"Wrote {writer.written} lines to {out} ({writer.resumed + writer.written} in all)")
    if server:
        click.echo(f"{client.retries} requests sent again (429 Retry-After, 503 or no answer)")
    if reason:
        click.echo("Run the same command again to go on where this run stopped.")
        code = EXIT_BY_SIGNAL.get(reason, 1)
        if flags.abort.is_set():
            sys.stdout.flush()
            os._exit(code)  # the dropped inputs' threads are not waited for
        sys.exit(code)


def _pipeline(app, options: Options, attributes_file: str | None):
    from faceapp.attributes import AttributeFileError
    from faceapp.batch.pipeline import Pipeline

    try:
        return Pipeline(app, options, attributes_file)
    except AttributeFileError as exc:
        raise click.UsageError(str(exc)) from None
    except FaceappError as exc:
        if exc.code == "input.invalid":
            field = exc.field or ""
            message = exc.message.removeprefix(f"{field}: ")
            option = f"--{field.replace('_', '-')}: " if field else ""
            raise click.UsageError(option + message) from None
        raise click.ClickException(f"{exc.code}: {exc.message}") from None


def _count_skip(tally: Tally) -> None:
    tally.not_images += 1


def _count_in_background(
    inputs: Sequence[str], report: Progress, resumed: int, flags: runner.Flags
) -> threading.Thread:
    """Walk the SOURCEs once more, only counting, so the progress can show an ETA."""

    def count() -> None:
        total = 0
        walk: Iterator[str] = sources.iter_sources(inputs)
        try:
            for _ in walk:
                if flags.stop.is_set():
                    return
                total += 1
        except OSError:
            return
        report.set_total(max(0, total - resumed))

    thread = threading.Thread(target=count, name="faceapp-batch-count", daemon=True)
    thread.start()
    return thread


def _install_signal_handlers(flags: runner.Flags) -> dict:
    """SIGINT and SIGTERM: the first stops the run cleanly, the second drops what is in flight."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if flags.stop.is_set() and flags.reason:
            note = f"\n{name} again: dropping the inputs in flight.\n"
        else:
            note = f"\n{name}: finishing the inputs in flight ({name} again drops them).\n"
        os.write(2, note.encode())  # not print: a handler may interrupt a print in progress
        flags.request_stop(name)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handle)
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
