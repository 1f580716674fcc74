"""One job item through the service's pipeline, as one result line.

The line is ``flask batch``'s (faceapp/batch/pipeline.py, docs/BATCH.md):
``{"source", "image_id", "valid", "errors", "warnings", "faces", "face_count", "model"}``, or
``{"source", "error": {"code", "message"}}`` with the API's codes, built by the same
``services.validation_answer`` and analyze answer. Unlike a batch, which keeps a million photos
out of the store, a job goes through validate's and analyze's *stored* path
(``services.ingest``, ``services.analyze``): each item then has its image page and trace on the
tester's Jobs page, and a redelivered chunk (late acknowledgement) finds the stored image and
the cached result, which makes the redo cheap.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from flask import current_app
from werkzeug.datastructures import FileStorage

from faceapp import analysis, services
from faceapp.errors import FaceappError
from faceapp.inputs import ImageSource
from faceapp.store import store


def process_item(source: ImageSource | str, options: Mapping[str, Any]) -> dict:
    """Validate, then analyze one image (a source, or a stored image_id); never raises a
    FaceappError (it becomes the line's ``error``), while other exceptions are the caller's."""
    try:
        if isinstance(source, str):
            meta = store.meta_or_404(source)
            if services.stale_reason(meta, current_app.config) is not None:
                meta = services.revalidate_stored(source, meta)  # judged by today's rules
        else:
            meta = services.ingest(source)
        line: dict[str, Any] = services.validation_answer(meta)
        if line["valid"] or options.get("force"):
            analyzed = services.analyze(
                None,
                meta["image_id"],
                attributes=options.get("attributes"),
                labels=options.get("labels"),
                include_embedding=bool(options.get("include_embedding")),
                force=bool(options.get("force")),
                max_faces=options.get("max_faces"),
            )
            line.update(
                faces=analyzed["faces"], face_count=analyzed["face_count"], model=analyzed["model"]
            )
        else:
            max_faces = analysis.check_max_faces(options.get("max_faces"), current_app.config)
            line.update(
                faces=[],
                face_count=analysis.face_count(meta, max_faces, analysed=False),
                model=services.describe_model(analysis.analyzer()),
            )
        return line
    except FaceappError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}


def entry_source(name: str, data: bytes) -> ImageSource:
    """An archive entry as an uploaded file (the path the API's own uploads take)."""
    return ImageSource("file", FileStorage(io.BytesIO(data), filename=name))
