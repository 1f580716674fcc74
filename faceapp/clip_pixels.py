"""A face crop to the pixels CLIP's image encoder takes, in PIL, OpenCV and NumPy, never torch.

It does what the checkpoint's own image processor (transformers' ``CLIPImageProcessorPil``)
does with its settings: resize the shorter side to ``size.shortest_edge`` with its filter, cut
the centre ``crop_size``, scale to 0..1 and normalise by the mean and std, channels first. The
processor takes that path in four NumPy passes (with copies and float64 on the way) and 8-10 ms
per face crop on the 2-core machine; here the resize and crop are one PIL call and the rest one
table look-up per pixel in float32, about 1.3 ms, with the same numbers (tests/test_models.py
compares them to 1e-5). A processor with other settings (no crop, fixed height and width,
padding) keeps its own path: :meth:`PixelRecipe.of` returns None for it.

The service cuts its face crops at the recipe's :attr:`PixelRecipe.square_side` already
(face_geometry.aligned_crop's ``size``: OpenCV resizes them in 0.1 ms), so for them the resize
and crop are nothing to do and only the look-up runs.

Request threads run this (faceapp/analysis.py), so it must never call torch: the inference
thread is the only one that does (faceapp/engine.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PixelRecipe:
    """A processor's resize, crop and normalisation, applied in one pass per image."""

    shortest_edge: int
    crop_height: int
    crop_width: int
    resample: int
    scale: np.ndarray  # per channel: rescale_factor / std
    shift: np.ndarray  # per channel: -mean / std

    @classmethod
    def of(cls, processor: Any) -> PixelRecipe | None:
        """The recipe of an image processor, or None when its settings are not the plain CLIP
        shape this module reproduces (then the processor itself runs)."""
        size, crop = _as_dict(processor.size), _as_dict(processor.crop_size)
        plain = (
            getattr(processor, "do_resize", False)
            and getattr(processor, "do_center_crop", False)
            and getattr(processor, "do_rescale", False)
            and getattr(processor, "do_normalize", False)
            and getattr(processor, "do_convert_rgb", True) is not False
            and not getattr(processor, "do_pad", False)
            and set(k for k, v in size.items() if v) == {"shortest_edge"}
            and crop.get("height")
            and crop.get("width")
        )
        if not plain:
            return None
        mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(-1)
        std = np.asarray(processor.image_std, dtype=np.float32).reshape(-1)
        if mean.size not in (1, 3) or std.size not in (1, 3):
            return None
        scale = np.float32(processor.rescale_factor) / std
        return cls(
            shortest_edge=int(size["shortest_edge"]),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            resample=int(processor.resample),
            scale=np.broadcast_to(scale, (3,)).astype(np.float32),
            shift=np.broadcast_to(-mean / std, (3,)).astype(np.float32),
        )

    @property
    def square_side(self) -> int | None:
        """The side of a square image this recipe neither resizes nor crops (None: none)."""
        side = self.shortest_edge
        return side if self.crop_height == side and self.crop_width == side else None

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One image's pixels: float32, 3 x crop_height x crop_width."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        width, height = rgb.size
        if (width, height) == (self.square_side,) * 2:  # cut at the input size: as it is
            return self._normalised(np.asarray(rgb))
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
        top = (new_height - self.crop_height) // 2
        left = (new_width - self.crop_width) // 2
        resized = rgb.resize((new_width, new_height), self.resample)
        if top >= 0 and left >= 0:
            cropped = resized.crop((left, top, left + self.crop_width, top + self.crop_height))
        else:  # a crop larger than the resized image: pad with black, as the processor does
            cropped = Image.new("RGB", (self.crop_width, self.crop_height))
            cropped.paste(resized, (-left, -top))
        return self._normalised(np.asarray(cropped))

    def _normalised(self, rgb: np.ndarray) -> np.ndarray:
        # Each channel's 256 possible values, scaled and shifted once: one table look-up per
        # pixel (OpenCV's LUT, all three channels in one pass), with the numbers of the
        # multiply-add on the whole image; then channels first. 0.15 ms for a 224 px crop, against
        # 0.6 ms for the multiply-add and 0.8 ms for NumPy's look-up channel by channel.
        normalised = cv2.LUT(rgb, self.lut)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))

    @cached_property
    def lut(self) -> np.ndarray:
        """Per level (0-255) and channel, the float32 value it becomes, in the shape cv2.LUT takes
        for a 3-channel image (1 x 256 x 3)."""
        levels = np.arange(256, dtype=np.float32)
        return np.ascontiguousarray(levels[None, :, None] * self.scale + self.shift)

    def batch(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        return [self.pixels(image) for image in images]


def _as_dict(size: Any) -> dict:
    """A processor's size setting (a dict, or transformers' SizeDict) as a plain dict."""
    if size is None:
        return {}
    if isinstance(size, dict):
        return dict(size)
    keys = ("shortest_edge", "longest_edge", "height", "width", "max_height", "max_width")
    return {key: getattr(size, key, None) for key in keys}
