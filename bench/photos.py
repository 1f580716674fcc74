"""The benchmark's inputs: real photographs from scikit-image, and images made from them."""

from __future__ import annotations

import io

from PIL import Image, ImageEnhance, ImageOps

LARGE_SIZE = (4000, 3000)


def astronaut() -> Image.Image:
    """scikit-image's astronaut (512x512, one face), a photograph nobody here made."""
    from skimage import data

    return Image.fromarray(data.astronaut()).convert("RGB")


def jpeg_bytes(image: Image.Image, quality: int = 92) -> bytes:
    """The image as JPEG bytes, the way a client would upload it."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def large_jpeg(photo: Image.Image) -> bytes:
    """A 4000x3000 JPEG: the photo's top 4:3 band (face included) upscaled, like a phone photo."""
    band = photo.crop((0, 0, photo.width, photo.width * 3 // 4))
    return jpeg_bytes(band.resize(LARGE_SIZE, Image.Resampling.BICUBIC), quality=90)


def four_faces(photo: Image.Image) -> Image.Image:
    """A 2x2 mosaic of the photo (as taken, mirrored, darker, more contrast): four real faces."""
    variants = [
        photo,
        ImageOps.mirror(photo),
        ImageEnhance.Brightness(photo).enhance(0.8),
        ImageEnhance.Contrast(photo).enhance(1.3),
    ]
    mosaic = Image.new("RGB", (photo.width * 2, photo.height * 2))
    for index, variant in enumerate(variants):
        mosaic.paste(variant, ((index % 2) * photo.width, (index // 2) * photo.height))
    return mosaic
