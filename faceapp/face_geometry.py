"""Face geometry from a box and five landmarks: the crop CLIP sees, and a geometric head pose.

Landmarks are YuNet's five points, in this order: the eye on the image's left (the person's
right eye), the eye on the image's right, the nose tip, the mouth corner on the image's left, the
mouth corner on the image's right. Everything here is pure geometry in the coordinates of the
image it is given, so callers may pass a stored region instead of the whole image (shifting the
box and landmarks into that region's frame first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from PIL import Image

#: Margin around the face box, as a fraction of its longer side, on every side: CLIP sees hair,
#: ears and chin.
CROP_MARGIN = 0.25
#: Nose-tip depth in front of the eyes, as a fraction of the distance between the eyes (adult
#: faces: about 35-40 mm in front of eyes about 63 mm apart). Only the yaw estimate uses it.
NOSE_DEPTH_RATIO = 0.6
#: Fill for the parts of a crop that fall outside the image (mid grey: neither skin nor hair).
FILL = (127, 127, 127)

Point = Sequence[float]


def eye_roll(landmarks: Sequence[Point]) -> float:
    """In-plane rotation of the face in degrees: the angle of the line from the image-left eye to
    the image-right eye (positive: that line runs downwards, clockwise on screen)."""
    (x0, y0), (x1, y1) = landmarks[0][:2], landmarks[1][:2]
    return math.degrees(math.atan2(y1 - y0, x1 - x0))


def head_pose(landmarks: Sequence[Point]) -> dict[str, float]:
    """A geometric head pose from five landmarks: ``roll`` from the eyes, ``yaw`` estimated from
    how far the nose tip sits from the eyes' midpoint (degrees; see docs/DETECTOR.md for how far
    to trust each).

    Yaw is positive when the nose points to the image's right. With the eyes levelled, a head
    turned by ``yaw`` moves the nose tip sideways by ``depth * sin(yaw)`` while the eyes come
    closer, to ``distance * cos(yaw)``; so ``tan(yaw) = offset / (NOSE_DEPTH_RATIO * distance)``.
    """
    roll = eye_roll(landmarks)
    angle = math.radians(-roll)
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    def level(point: Point) -> tuple[float, float]:  # rotate so the eyes lie on one line
        return point[0] * cos_a - point[1] * sin_a, point[0] * sin_a + point[1] * cos_a

    (ex0, _), (ex1, _), (nx, _) = level(landmarks[0]), level(landmarks[1]), level(landmarks[2])
    distance = ex1 - ex0
    if distance <= 0:
        yaw = 0.0
    else:
        offset = nx - (ex0 + ex1) / 2
        yaw = math.degrees(math.atan2(offset, NOSE_DEPTH_RATIO * distance))
    return {"roll": round(roll, 1), "yaw": round(yaw, 1)}


def aligned_crop(
    image: Image.Image,
    box: Mapping[str, float],
    landmarks: Sequence[Point] | None,
    margin: float = CROP_MARGIN,
    size: int | None = None,
) -> Image.Image:
    """The face as CLIP should see it: a square around the box's centre, its side the box's
    longer side grown by `margin` on every side, turned so the eyes are level.

    Without landmarks it is the same square, unturned. The square stays centred on the face even
    at the image's border; what lies outside the image is filled with mid grey. The crop keeps the
    image's resolution, or is resized to `size` pixels a side (the model's input size, so CLIP's
    processor has nothing left to resize): OpenCV's bicubic to enlarge, its pixel-area average to
    shrink, 0.07-0.3 ms where PIL's resize in the processor took 0.7-2 ms.
    """
    if margin < 0:
        raise ValueError(f"margin must not be negative, not {margin!r}")
    if size is not None and size < 1:
        raise ValueError(f"size must be at least 1 pixel, not {size!r}")
    side = max(float(box["width"]), float(box["height"])) * (1 + 2 * margin)
    native = max(1, round(side))
    cx = float(box["x"]) + float(box["width"]) / 2
    cy = float(box["y"]) + float(box["height"]) / 2
    roll = math.radians(eye_roll(landmarks)) if landmarks else 0.0
    cos_r, sin_r = math.cos(roll), math.sin(roll)
    half = native / 2
    # The affine map takes each output pixel (u, v) back to the input point it shows: the
    # output's axes run along the eye line and across it, its centre on the box's. Pixel centres
    # sit at +0.5 (PIL's convention, which the crop always had); OpenCV's lie on the integers,
    # hence the half-pixel shifts in the last column.
    matrix = np.array(
        [
            [cos_r, -sin_r, cx - half * cos_r + half * sin_r + 0.5 * (cos_r - sin_r) - 0.5],
            [sin_r, cos_r, cy - half * sin_r - half * cos_r + 0.5 * (sin_r + cos_r) - 0.5],
        ],
        dtype=np.float64,
    )
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # OpenCV's SIMD warp: 0.07 ms for a 142 px crop against 0.47 ms for PIL's transform, the
    # same pixels within 3 levels but at the image's own edge, which OpenCV blends into the fill
    # (tests/test_face_geometry.py holds it to PIL's).
    crop = cv2.warpAffine(
        np.asarray(rgb),
        matrix,
        (native, native),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=FILL,
    )
    if size is not None and size != native:
        crop = cv2.resize(
            crop, (size, size), interpolation=cv2.INTER_CUBIC if size > native else cv2.INTER_AREA
        )
    return Image.fromarray(crop)
