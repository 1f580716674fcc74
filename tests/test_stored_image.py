"""What validate stores beside an image (stored_image): face contexts that hold the image's own
pixels around each face, a preview that keeps the aspect, and crops read back from them.

The sizes are read from the module (they are tuning, and may change); the contracts are that a
context shows exactly the image (or the fill beyond its edges) around its face, and that a crop
read back from the stored parts is the crop the whole image would give."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from faceapp import stored_image
from faceapp.face_geometry import FILL, aligned_crop
from faceapp.store.base import is_current


def _noise(width: int, height: int, cell: int = 1, seed: int = 0) -> Image.Image:
    """An image whose every pixel (or `cell`-sized block) differs from its neighbours."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-height // cell), -(-width // cell), 3), dtype=np.uint8)
    pixels = np.kron(small, np.ones((cell, cell, 1), np.uint8))[:height, :width]
    return Image.fromarray(np.ascontiguousarray(pixels))


def _expected_context(image: Image.Image, left: int, top: int, side: int) -> np.ndarray:
    """The image's pixels at [top, top+side) x [left, left+side), FILL where there are none."""
    pixels = np.asarray(image)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = FILL
    ys, xs = np.arange(top, top + side), np.arange(left, left + side)
    keep_y, keep_x = (ys >= 0) & (ys < image.height), (xs >= 0) & (xs < image.width)
    out[np.ix_(keep_y, keep_x)] = pixels[np.ix_(ys[keep_y], xs[keep_x])]
    return out


def _difference(a, b) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# A 300x200 image and small faces (contexts kept at full size) inside it, cut by each edge and
# corner, and wholly outside it.
SMALL_FACES = [
    {"x": 120, "y": 70, "width": 40, "height": 50},  # inside
    {"x": -10, "y": 80, "width": 30, "height": 30},  # cut by the left edge only
    {"x": 140, "y": -12, "width": 30, "height": 36},  # cut by the top edge only
    {"x": 285, "y": 60, "width": 30, "height": 30},  # cut by the right edge only
    {"x": 100, "y": 190, "width": 30, "height": 30},  # cut by the bottom edge only
    {"x": -5, "y": 185, "width": 28, "height": 22},  # bottom-left corner
    {"x": 400, "y": 80, "width": 20, "height": 20},  # right of the image: nothing of it inside
    {"x": 120, "y": 400, "width": 20, "height": 20},  # below the image
    {"x": 312, "y": 80, "width": 20, "height": 20},  # its context starts at the right edge
    {"x": 120, "y": 212, "width": 20, "height": 20},  # its context starts at the bottom edge
    {"x": 120.4, "y": 70.6, "width": 39.5, "height": 50.2},  # a detector's fractional box
]


@pytest.mark.parametrize("box", SMALL_FACES, ids=str)
def test_a_context_is_the_image_around_its_face_and_fill_beyond_it(box):
    image = _noise(300, 200)
    context, placement = stored_image.cut_context(image, box)
    side = context.width
    assert context.size == (side, side) and placement["scale"] == 1.0
    assert side <= stored_image.CONTEXT_MAX_SIDE
    # Centred on the face, to the pixel, and larger than it.
    assert side > max(box["width"], box["height"])
    assert abs(placement["left"] + side / 2 - (box["x"] + box["width"] / 2)) <= 0.5
    assert abs(placement["top"] + side / 2 - (box["y"] + box["height"] / 2)) <= 0.5
    expected = _expected_context(image, placement["left"], placement["top"], side)
    assert np.array_equal(np.asarray(context), expected)


def test_a_context_larger_than_its_limit_is_shrunk_and_still_shows_the_image():
    image = _noise(1600, 1200, cell=8)
    box = {"x": 500, "y": 400, "width": 420, "height": 380}  # context far above the limit
    context, placement = stored_image.cut_context(image, box)
    limit = stored_image.CONTEXT_MAX_SIDE
    assert context.size == (limit, limit)
    side = limit / placement["scale"]
    assert side > 420 and abs(placement["left"] + side / 2 - 710) <= 0.5
    full = _expected_context(image, placement["left"], placement["top"], round(side))
    shrunk = Image.fromarray(full).resize((limit, limit), Image.Resampling.BOX)
    assert _difference(context, shrunk) < 12
    # The face's box maps onto the same pixels of the context as of the image.
    mapped = stored_image.to_context(placement, box)
    inner = context.crop(
        (
            round(mapped["x"]),
            round(mapped["y"]),
            round(mapped["x"] + mapped["width"]),
            round(mapped["y"] + mapped["height"]),
        )
    )
    direct = image.crop((500, 400, 920, 780)).resize(inner.size, Image.Resampling.BOX)
    assert _difference(inner, direct) < 12


def _parts_and_meta(image: Image.Image, faces: list[dict]) -> tuple[dict, dict]:
    parts, stored = stored_image.build_parts(image, faces)
    meta = {"width": image.width, "height": image.height, "faces": faces, "stored": stored}
    return parts, meta


def test_build_parts_stores_one_context_per_face_in_order_and_a_preview():
    image = _noise(900, 600, cell=24)
    faces = [
        {"box": {"x": 100, "y": 100, "width": 90, "height": 110}},
        {"box": {"x": 600, "y": 300, "width": 60, "height": 60}},
    ]
    parts, meta = _parts_and_meta(image, faces)
    stored = meta["stored"]
    assert is_current(meta)  # items carry this build's format; older ones are dropped
    assert [face["part"] for face in stored["faces"]] == ["face-0.jpg", "face-1.jpg"]
    assert set(parts) == {"face-0.jpg", "face-1.jpg", stored["preview"]["part"]}
    for face, placement in zip(faces, stored["faces"], strict=True):
        kept = _decode(parts[placement["part"]])
        assert kept.format == "JPEG"
        context, expected_placement = stored_image.cut_context(image, face["box"])
        assert {k: placement[k] for k in ("left", "top", "scale")} == expected_placement
        assert kept.size == context.size and _difference(kept, context) < 10
    preview = _decode(parts[stored["preview"]["part"]])
    assert preview.format == "JPEG"
    assert (preview.width, preview.height) == (stored["preview"]["width"], 600)
    assert preview.width == 900 and _difference(preview, image) < 10  # small: kept at its size


@pytest.mark.parametrize(("width", "height"), [(3000, 1000), (1000, 3000), (2049, 2049)])
def test_a_large_image_has_a_preview_bounded_by_its_limit_that_keeps_its_aspect(width, height):
    image = Image.new("RGB", (width, height), (40, 160, 90))
    parts, meta = _parts_and_meta(image, [])
    described = meta["stored"]["preview"]
    preview = _decode(parts[described["part"]])
    assert (preview.width, preview.height) == (described["width"], described["height"])
    # Within the limit, and not shrunk further than a whole-factor reduction would.
    assert stored_image.PREVIEW_MAX_SIDE / 2 < max(preview.size) <= stored_image.PREVIEW_MAX_SIDE
    assert abs(preview.width / preview.height - width / height) < 0.01
    assert meta["stored"]["faces"] == []


def test_a_preview_is_never_wider_than_1024_px():
    """The documented bound: one pixel over it, and the preview is halved."""
    parts, meta = _parts_and_meta(Image.new("RGB", (1025, 700), (40, 160, 90)), [])
    preview = _decode(parts[meta["stored"]["preview"]["part"]])
    assert preview.size == (513, 350)


def _face_regions(count: int) -> list:
    return [SimpleNamespace(detected=True) for _ in range(count)]


def test_crops_read_back_are_the_crops_of_the_whole_image_face_by_face():
    image = _noise(1400, 900, cell=20, seed=3)
    faces = [
        {
            "box": {"x": 600, "y": 300, "width": 300, "height": 340},  # shrunk context, turned
            "landmarks": [[640, 380], [860, 420], [750, 480], [660, 560], [840, 590]],
        },
        {"box": {"x": 100, "y": 500, "width": 80, "height": 90}},
        {"box": {"x": 1340, "y": 850, "width": 80, "height": 80}},  # cut by the corner
    ]
    parts, meta = _parts_and_meta(image, faces)
    crops = stored_image.region_crops(meta, _face_regions(3), parts.get)
    assert crops is not None and len(crops) == 3
    # At the model's size (analyze cuts them so): the same crops, each 224 px a side.
    sized = stored_image.region_crops(meta, _face_regions(3), parts.get, size=224)
    assert [crop.size for crop in sized] == [(224, 224)] * 3
    for face, crop, at_224 in zip(faces, crops, sized, strict=True):
        direct = aligned_crop(image, face["box"], face.get("landmarks"))
        small, box = (64, 64), Image.Resampling.BOX
        assert _difference(crop.resize(small, box), direct.resize(small, box)) < 10, face["box"]
        assert _difference(at_224.resize(small, box), direct.resize(small, box)) < 10, face["box"]


@pytest.mark.parametrize(("width", "height"), [(320, 320), (2400, 2400), (2400, 1200)])
def test_the_whole_image_region_is_the_preview_without_a_margin(width, height):
    image = _noise(width, height, cell=40, seed=5)
    parts, meta = _parts_and_meta(image, [])
    whole = {"x": 0, "y": 0, "width": width, "height": height}
    region = SimpleNamespace(detected=False, box=whole)
    [crop] = stored_image.region_crops(meta, [region], parts.get)
    preview = _decode(parts[meta["stored"]["preview"]["part"]])
    assert crop.size == (max(preview.size),) * 2  # the preview's longer side, no margin
    direct = aligned_crop(image, whole, None, margin=0.0).resize(crop.size, Image.Resampling.BOX)
    assert _difference(crop, direct) < 15  # unrelated images differ by about 85
    [sized] = stored_image.region_crops(meta, [region], parts.get, size=224)
    assert sized.size == (224, 224)
    assert _difference(sized, direct.resize((224, 224), Image.Resampling.BOX)) < 15
    # Its edges are the image's own pixels (no fill shifted in), where the image reaches.
    pixels = np.asarray(crop, np.int16)
    top = (crop.height - preview.height) // 2
    for row in (top, top + preview.height - 1):
        assert np.abs(pixels[row] - np.asarray(FILL)).max() > 40
    for column in (0, crop.width - 1):
        assert np.abs(pixels[top:, column] - np.asarray(FILL)).max() > 40


def test_crops_of_a_face_whose_part_went_missing_are_none():
    image = _noise(400, 300)
    faces = [{"box": {"x": 50, "y": 50, "width": 40, "height": 40}}] * 2
    parts, meta = _parts_and_meta(image, faces)
    partial = {name: data for name, data in parts.items() if name != "face-1.jpg"}
    assert stored_image.region_crops(meta, _face_regions(2), partial.get) is None
    whole = SimpleNamespace(detected=False, box={"x": 0, "y": 0, "width": 400, "height": 300})
    assert stored_image.region_crops(meta, [whole], {}.get) is None
    assert stored_image.region_crops(meta, [], {}.get) == []
