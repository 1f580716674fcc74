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


def portraits() -> list[tuple[str, bytes]]:
    """Real photographs of people as a client would upload them, named: scikit-image's
    astronaut at five sizes and JPEG qualities and as two variants, its cameraman at two sizes,
    and four of its LFW faces enlarged into a small portrait. Nothing is downloaded."""
    import numpy as np
    from skimage import data

    photo = astronaut()
    camera = Image.fromarray(data.camera()).convert("RGB")
    found = [
        (f"astronaut {side} px q{quality}", jpeg_bytes(photo.resize((side, side)), quality))
        for side, quality in ((512, 92), (512, 75), (1024, 90), (1600, 85), (2000, 95))
    ]
    found.append(
        ("astronaut mirrored 800 px", jpeg_bytes(ImageOps.mirror(photo).resize((800, 800))))
    )
    darker = ImageEnhance.Brightness(photo).enhance(0.7).resize((1200, 1200))
    found.append(("astronaut darker 1200 px q80", jpeg_bytes(darker, quality=80)))
    found.append(("camera 512 px", jpeg_bytes(camera)))
    found.append(("camera 1024 px q85", jpeg_bytes(camera.resize((1024, 1024)), quality=85)))
    for index in (0, 3, 6, 11):  # LFW crops: 25 x 25 grey faces, enlarged 6x on a grey canvas
        face = Image.fromarray((data.lfw_subset()[index] * 255).astype(np.uint8)).convert("RGB")
        face = face.resize((150, 150), Image.Resampling.BICUBIC)
        portrait = Image.new("RGB", (285, 300), (128, 128, 128))
        portrait.paste(face, (67, 60))
        found.append((f"lfw face {index} 285 x 300 px", jpeg_bytes(portrait, quality=90)))
    return found
