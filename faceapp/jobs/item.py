"""One job item through the service's pipeline, as one result line.

TO BE REPLACED: `flask batch` (issue 17, package faceapp/batch/) owns the per-item pipeline and
its line; once that branch is merged, :func:`process_item` goes and the runner calls batch's
function instead. Until then this stand-in gives the same line through faceapp/services.py:
``{"source", "image_id", "valid", "errors", "warnings", "faces", "model"}``, or
``{"source", "error": {"code", "message"}}`` with the API's codes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

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
            line.update(faces=analyzed["faces"], model=analyzed["model"])
        else:
            line.update(faces=[], model=services.describe_model(analysis.analyzer()))
        return line
    except FaceappError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}


def entry_source(name: str, data: bytes) -> ImageSource:
    """An archive entry as an uploaded file (the path the API's own uploads take)."""
    return ImageSource("file", FileStorage(io.BytesIO(data), filename=name))
