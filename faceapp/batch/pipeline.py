"""One input of ``flask batch`` (and of a jobs-API job): its bytes, validate's checks and
analyze's scores, as one line of output.

Each input goes the service's own way, through the service's own functions: the bytes are read
as an upload or fetched as an ``image_url`` is (faceapp/inputs.py, faceapp/url_fetch.py, the same
limits and remote-fetch rules), examined as validate examines them (``services.examine``: decode
limits, detector, quality checks, the face contexts analyze crops from), and scored as analyze
scores them (``analysis.regions_for``, ``stored_image.region_crops``, ``Analyzer.analyze`` on the
worker's inference engine, so calls from several threads share forward passes). Nothing is
written to the store: a batch of a million photos must not fill it.

The line (docs/BATCH.md)::

    {"source", "image_id", "valid", "errors", "warnings", "faces": [...], "face_count": {...},
     "model": {...}}

with the fields of the validate and analyze answers. An invalid photo's faces are not scored
(``faces: []``, and ``face_count.not_analysed`` is every face found) unless ``force``. An
input that cannot be read or decoded is
``{"source", "image_id", "error": {"code", "message"[, "field"]}}`` with the API's error codes
(``image_id`` is null when no bytes were read). :meth:`Pipeline.process` never raises for an
input; only building a :class:`Pipeline` can fail (a bad option: ``input.invalid``; no model:
``model.not_ready``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from flask import Flask
from werkzeug.datastructures import FileStorage

from faceapp import analysis, services, stored_image
from faceapp.errors import FaceappError
from faceapp.inputs import ImageSource, source_bytes
from faceapp.output import to_plain
from faceapp.schemas import AnalyzeRequest, parse
from faceapp.store import image_id_for

log = logging.getLogger(__name__)


def use_the_cores(config: Any) -> None:
    """``flask batch``'s inference on the CPU: unless INFERENCE_THREADS is set, as many inference
    threads as the cores hold at TORCH_THREADS each (default one: one thread per core;
    faceapp/engine.py says why that gives more images/s). On a GPU, one thread feeds it. Call it
    before the app's model is loaded and its engine made."""
    from faceapp.face_models import available_cores, choose_device

    if config.get("INFERENCE_THREADS") is None:
        per_thread = max(1, int(config.get("TORCH_THREADS") or 1))
        on_cpu = choose_device(config.get("DEVICE") or "auto") == "cpu"
        config["INFERENCE_THREADS"] = max(1, available_cores() // per_thread) if on_cpu else 1


def default_workers(config: Any) -> int:
    """``flask batch``'s threads when ``--workers`` is not given: a batch's worth of inputs
    (``INFERENCE_MAX_BATCH`` crops) for each inference thread, and as many more read, decoded and
    detected meanwhile, so the next batch is ready when an encoder is, plus one per core. With
    one batch's worth in all, the threads whose crops were in the batch all start on their next
    input when it ends, and the encoder runs the few that are ready: a mean batch of 5.0 where
    7.1 is had, and 9% more time per photo (200 real photos, 2-core AMD EPYC)."""
    from faceapp.engine import inference_threads
    from faceapp.face_models import available_cores

    batches = inference_threads(config) + 1
    return batches * int(config["INFERENCE_MAX_BATCH"]) + available_cores()


#: A source with a URL scheme is fetched (an unsupported scheme is the fetcher's url.invalid).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: The keys of an answered line, in order (an error line has source, image_id and error).
LINE_KEYS = ("source", "image_id", "valid", "errors", "warnings", "faces", "face_count", "model")


@dataclass(frozen=True)
class Options:
    """What to compute for every input: POST /api/analyze's options, checked as it checks them."""

    attributes: tuple[str, ...] = ()  # empty: the whole attribute set
    labels: tuple[str, ...] = ()  # free-text labels scored beside the attributes
    include_embedding: bool = False
    max_faces: int | None = None  # None: MAX_FACES
    force: bool = False  # score an invalid photo's faces (or the whole image) anyway

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (a job stores them; ``Options(**d)`` reads them)."""
        return {**asdict(self), "attributes": list(self.attributes), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Options:
        """Options from :meth:`to_dict`'s document (lists become tuples)."""
        fields = dict(document)
        for name in ("attributes", "labels"):
            fields[name] = tuple(fields.get(name) or ())
        return cls(**fields)


def source_kind(source: str) -> str:
    """``image_url`` for a source with a URL scheme (http://, https://...), else ``file``."""
    return "image_url" if _URL.match(source) else "file"


class Pipeline:
    """The per-input work of one run: one app, one attribute set, one set of options.

    Build it in the process that runs the work (it loads the app's model if it is not loaded
    yet). :meth:`process` may be called from many threads at once; each call pushes its own app
    context. Building raises FaceappError: ``input.invalid`` for an option the API would refuse
    (an unknown attribute, a label given twice...), ``model.not_ready`` when the model does not
    load.
    """

    def __init__(self, app: Flask, options: Options, attributes_file: str | None = None) -> None:
        from faceapp.attributes import load_attribute_set
        from faceapp.engine import engine
        from faceapp.face_models import models

        self.app = app
        self.config = app.config
        self.options = options
        with app.app_context():
            self._check(options)
            model = models.get()
            if attributes_file:  # scored like the app's set, on the same inference thread
                cache_dir = os.path.join(app.config["MODELS_DIR"], ".label-embeddings")
                attributes = load_attribute_set(attributes_file)
                self.analyzer = analysis.Analyzer(model, attributes, cache_dir, engine.get(app))
            else:
                self.analyzer = analysis.analyzer()
            self.attribute_names = analysis.check_attribute_names(
                options.attributes, self.analyzer.attributes
            )
            self.model_info = to_plain(services.describe_model(self.analyzer))
        self.max_faces = options.max_faces or int(self.config["MAX_FACES"])

    @staticmethod
    def _check(options: Options) -> None:
        """The API's own checks of the options (400 input.invalid naming the option)."""
        document: dict[str, Any] = {}
        if options.attributes:
            document["attributes"] = list(options.attributes)
        if options.labels:
            document["labels"] = list(options.labels)
        if options.max_faces is not None:
            document["max_faces"] = options.max_faces
        parse(AnalyzeRequest(), document)

    def process(self, source: str, *, data: bytes | None = None, kind: str | None = None) -> dict:
        """The output line of one input; never raises for the input's own faults.

        `source` is what the line names: a file path (read under MAX_UPLOAD_BYTES) or a URL
        (fetched under the remote-fetch rules). With `data`, those bytes are the input and
        `source` only names them (a job's upload). `kind` (``file`` or ``image_url``) overrides
        what the source looks like.
        """
        kind = kind or source_kind(source)
        line: dict[str, Any] = {"source": source, "image_id": None}
        try:
            with self.app.app_context():
                if data is None:
                    data = read_source(source, kind, self.config)
                line["image_id"] = image_id_for(data)
                line.update(self._answer(data, line["image_id"], kind))
        except FaceappError as exc:
            return {"source": source, "image_id": line["image_id"], **exc.to_dict()}
        except Exception:  # noqa: BLE001 - one input's bug must not stop the run: log, go on
            log.exception("batch: unexpected error on %s", source)
            error = FaceappError("internal", "faceapp hit an unexpected error; it has been logged.")
            return {"source": source, "image_id": line["image_id"], **error.to_dict()}
        return line

    def _answer(self, data: bytes, image_id: str, kind: str) -> dict:
        options = self.options
        # Contexts for the faces that will be scored; the preview only for a forced whole image.
        examined = services.examine(
            data, image_id, kind, self.config, contexts=self.max_faces, preview=options.force
        )
        meta = examined.meta
        answer = services.validation_answer(meta)
        faces: list[dict] = []
        analysed = answer["valid"] or options.force
        if analysed:
            regions = analysis.regions_for(meta, options.force, self.max_faces)
            crops = stored_image.region_crops(
                meta, regions, examined.parts.get, size=self.analyzer.model.crop_side
            )
            found, _ = self.analyzer.analyze(
                crops,
                regions,
                self.attribute_names,
                list(options.labels) or None,
                options.include_embedding,
            )
            faces = to_plain(found)
        counts = analysis.face_count(meta, self.max_faces, analysed=analysed)
        return {**answer, "faces": faces, "face_count": counts, "model": self.model_info}


def read_source(source: str, kind: str, config: Any) -> bytes:
    """The bytes of a file path or a URL, under the service's limits (``inputs.source_bytes``)."""
    if kind == "image_url":
        return source_bytes(ImageSource("image_url", source), config)
    try:
        with open(source, "rb") as fh:
            return source_bytes(ImageSource("file", FileStorage(fh, filename=source)), config)
    except FileNotFoundError:
        raise FaceappError("input.missing", "The file is not there (moved or deleted?).") from None
    except IsADirectoryError:
        raise FaceappError("input.invalid", "The source is a folder, not a file.") from None
    except OSError as exc:
        raise FaceappError(
            "input.invalid", f"The file cannot be read: {exc.strerror or exc}."
        ) from None


def error_line(source: str, error: FaceappError, image_id: str | None = None) -> dict:
    """The line of an input that was not answered (a source that could not be listed, say)."""
    return {"source": source, "image_id": image_id, **error.to_dict()}


def is_error(line: dict) -> bool:
    """Whether a line is an error line (the input could not be read or decoded)."""
    return "error" in line


def codes(line: dict) -> Sequence[str]:
    """The line's error codes: its error's, or its validation errors' (valid: none)."""
    if "error" in line:
        return [line["error"]["code"]]
    return [issue["code"] for issue in line.get("errors", [])]
