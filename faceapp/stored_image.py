"""What validate keeps of an image besides its bytes, so that analyze never decodes the original.

At validate time the image is already decoded and its faces located. Around each face a square
CONTEXT region (``CONTEXT_FACTOR`` times the face's longer side, centred on its box, padded with
black beyond the image's edges) is cut out, shrunk to at most ``CONTEXT_MAX_SIDE`` pixels and
kept as a JPEG, with the offset and scale that map the image's coordinates into it. The context
is generous on purpose: the face crop CLIP sees (a margin around the box, or an eye-aligned,
rotated square) fits inside it. A bounded preview (``PREVIEW_MAX_SIDE``) serves the tester's
pages and whole-image analysis (``force=true`` on an image without a face).

Reading an item back is the reverse: :func:`region_crops` maps each face's box (and landmarks,
if the detector gave some) into its context and cuts the crop there.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image

from faceapp.face_geometry import FILL, aligned_crop
from faceapp.store.base import STORE_FORMAT
from faceapp.validation import bounded_copy

CONTEXT_FACTOR = 2.2
CONTEXT_MAX_SIDE = 512
PREVIEW_MAX_SIDE = 1024
PREVIEW_PART = "preview.jpg"
JPEG_QUALITY = 90


def make_preview(image: Image.Image) -> Image.Image:
    """The bounded preview: a whole-factor box reduction (cheap, no resampling filter, free of
    aliasing) to at most PREVIEW_MAX_SIDE a side. Validate detects faces and measures
    brightness on it too."""
    return bounded_copy(image, PREVIEW_MAX_SIDE)


def build_parts(
    image: Image.Image,
    faces: Sequence[Mapping[str, Any]],
    preview: Image.Image | None = None,
    *,
    with_preview: bool = True,
) -> tuple[dict, dict]:
    """The parts to store beside the bytes (name -> JPEG) and meta's ``stored`` description
    (`preview`: :func:`make_preview`'s, when the caller has made it already). Without
    `with_preview`, the face contexts alone (``flask batch`` needs no preview)."""
    parts: dict[str, bytes] = {}
    contexts = []
    for index, face in enumerate(faces):
        context, placement = cut_context(image, face["box"])
        name = f"face-{index}.jpg"
        parts[name] = _jpeg(context)
        contexts.append({"part": name, **placement})
    stored: dict[str, Any] = {"format": STORE_FORMAT, "faces": contexts}
    if with_preview:
        preview = preview or make_preview(image)
        parts[PREVIEW_PART] = _jpeg(preview)
        stored["preview"] = {"part": PREVIEW_PART, "width": preview.width, "height": preview.height}
    return parts, stored


def cut_context(image: Image.Image, box: Mapping[str, float]) -> tuple[Image.Image, dict]:
    """The square context around `box` and its placement: image point p -> (p - left) * scale."""
    side = max(1, round(max(box["width"], box["height"]) * CONTEXT_FACTOR))
    left = round(box["x"] + box["width"] / 2 - side / 2)
    top = round(box["y"] + box["height"] / 2 - side / 2)
    scale = min(1.0, CONTEXT_MAX_SIDE / side)
    out = max(1, round(side * scale))
    # Beyond the image's edges the context is the aligned crop's own fill, so a face at the
    # border is cropped from a context exactly as it would be from the whole image. Only the
    # image's own part of the square is resampled (never a padded full-size canvas), into the
    # whole context pixels it covers.
    context = Image.new("RGB", (out, out), FILL)
    x0, y0 = math.ceil(max(0, -left) * scale), math.ceil(max(0, -top) * scale)
    x1 = min(out, math.floor((image.width - left) * scale))
    y1 = min(out, math.floor((image.height - top) * scale))
    if x0 < x1 and y0 < y1:
        source = (
            left + x0 / scale,
            top + y0 / scale,
            min(image.width, left + x1 / scale),
            min(image.height, top + y1 / scale),
        )
        # Area averaging (Pillow's box filter): a 948 px context of a 2000 px image shrinks to
        # 512 px in 3.3 ms of CPU against 7.8 ms bicubic, 0.7 grey levels apart on average, and
        # the face crop is resampled again from it. At scale 1 the part is a plain copy.
        part = image.resize((x1 - x0, y1 - y0), Image.Resampling.BOX, source)
        context.paste(part, (x0, y0))
    return context, {"left": left, "top": top, "scale": scale}


def to_context(placement: Mapping[str, float], box: Mapping[str, float]) -> dict:
    """A box in the image's coordinates, in its context's coordinates."""
    scale = placement["scale"]
    return {
        "x": (box["x"] - placement["left"]) * scale,
        "y": (box["y"] - placement["top"]) * scale,
        "width": box["width"] * scale,
        "height": box["height"] * scale,
    }


def points_to_context(placement: Mapping[str, float], points: Sequence[Sequence[float]] | None):
    """Landmark points in the image's coordinates, in its context's coordinates."""
    if not points:
        return None
    scale = placement["scale"]
    return [
        [(x - placement["left"]) * scale, (y - placement["top"]) * scale] for x, y, *_ in points
    ]


def region_crops(
    meta: Mapping[str, Any],
    regions: Sequence[Any],
    read_part: Callable[[str], bytes | None],
    size: int | None = None,
) -> list[Image.Image] | None:
    """One crop per region, cut from the stored parts (None when a part has gone missing).

    A detected region ``i`` is face ``i`` of the metadata and is cut from its context; the
    whole-image region (``force`` without a face) is the preview. Each is :func:`aligned_crop`,
    cut in the part's own coordinates, `size` pixels a side (the model's crop_side) if given.
    """
    stored = meta["stored"]
    crops = []
    for index, region in enumerate(regions):
        if region.detected:
            placement = stored["faces"][index]
            face = meta["faces"][index]
            image = _open(read_part(placement["part"]))
            if image is None:
                return None
            box = to_context(placement, face["box"])
            landmarks = points_to_context(placement, face.get("landmarks"))
            crops.append(aligned_crop(image, box, landmarks, size=size))
        else:
            preview = _open(read_part(stored["preview"]["part"]))
            if preview is None:
                return None
            placement = {"left": 0, "top": 0, "scale": preview.width / meta["width"]}
            whole = to_context(placement, region.box)
            crops.append(aligned_crop(preview, whole, None, margin=0.0, size=size))
    return crops


def _open(data: bytes | None) -> Image.Image | None:
    if data is None:
        return None
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
