"""The three ways an image arrives (upload, base64, image_url) and turning each into bytes."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from werkzeug.datastructures import FileStorage

from faceapp.errors import FaceappError, human_bytes

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_URLSAFE = str.maketrans("-_", "+/")


@dataclass(frozen=True)
class ImageSource:
    """One image input: which form it came in, and what was sent."""

    kind: str  # "file", "image_url" or "image_base64"
    value: Any  # a FileStorage, a URL string or a base64 string


def pick_source(
    fields: Mapping[str, Any], files: Mapping[str, FileStorage], *, image_id: str | None = None
) -> ImageSource | None:
    """The single image source of a request; None when `image_id` names a stored image instead.

    Exactly one of file / image_url / image_base64 (and image_id, where it is allowed) must be
    given: none is 400 input.missing, several are 400 input.ambiguous.
    """
    given = []
    upload = files.get("file")
    # A browser sends an empty file input as a part with no file name: that is no upload.
    if upload is not None and upload.filename:
        given.append(ImageSource("file", upload))
    for name in ("image_url", "image_base64"):
        value = fields.get(name)
        if value not in (None, ""):
            given.append(ImageSource(name, value))
    names = [source.kind for source in given] + (["image_id"] if image_id else [])
    if len(names) > 1:
        raise FaceappError(
            "input.ambiguous",
            f"Send exactly one image source; this request has {', '.join(names)}.",
        )
    if not names:
        expected = "file, image_url or image_base64" + (
            " (or image_id)" if image_id is not None else ""
        )
        raise FaceappError("input.missing", f"No image was sent: give one of {expected}.")
    return given[0] if given else None


def source_name(source: ImageSource) -> str | None:
    """What to call a source in a trace: the file name, or the URL's host, port and path (no
    query)."""
    if source.kind == "file":
        name = getattr(source.value, "filename", None) or ""
    elif source.kind == "image_url" and isinstance(source.value, str):
        try:
            parts = urlsplit(source.value.strip())
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host  # an IPv6 address, as URLs write it
            port = f":{parts.port}" if parts.port is not None else ""
            name = f"{host}{port}{parts.path}"  # no user, password or query: secrets
        except ValueError:
            return None
    else:
        return None
    return name[:200] or None


def read_upload(upload: FileStorage, max_bytes: int) -> bytes:
    """The bytes of an uploaded file, refusing more than `max_bytes` without reading it all."""
    data = upload.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data


def decode_base64(text: Any, max_bytes: int) -> bytes:
    """Decode base64 text, with or without a ``data:image/...;base64,`` prefix."""
    if not isinstance(text, str):
        raise FaceappError("input.invalid", "image_base64 must be a string.", field="image_base64")
    match = _DATA_URL.match(text)
    if match:
        if match.group("mime") and not match.group("mime").lower().startswith("image/"):
            raise FaceappError(
                "input.invalid",
                "image_base64 is a data URL of a non-image type.",
                field="image_base64",
            )
        text = text[match.end() :]
    # Refuse oversized payloads from their length, before spending memory on decoding them.
    if len(text) > (max_bytes + 2) // 3 * 4 + 1024:
        raise too_large(max_bytes)
    compact = _WHITESPACE.sub("", text)
    compact += "=" * (-len(compact) % 4)
    try:  # the standard and the URL-safe alphabets are both accepted; nothing else is
        data = base64.b64decode(compact.translate(_URLSAFE), validate=True)
    except (binascii.Error, ValueError):
        raise FaceappError(
            "input.invalid", "image_base64 is not valid base64.", field="image_base64"
        ) from None
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data


def too_large(max_bytes: int) -> FaceappError:
    """413 image.too_large naming the limit."""
    return FaceappError(
        "image.too_large",
        f"The image is larger than the {human_bytes(max_bytes)} limit (MAX_UPLOAD_BYTES).",
    )


def source_bytes(source: ImageSource, config: Mapping[str, Any]) -> bytes:
    """Fetch or decode the bytes of an image source under the configured limits."""
    max_bytes = int(config["MAX_UPLOAD_BYTES"])
    if source.kind == "file":
        return read_upload(source.value, max_bytes)
    if source.kind == "image_base64":
        return decode_base64(source.value, max_bytes)
    from faceapp.url_fetch import FetchPolicy, fetch_url

    if not isinstance(source.value, str):
        raise FaceappError("url.invalid", "image_url must be a string.", field="image_url")
    return fetch_url(source.value, FetchPolicy.from_config(config))
