"""Quality checks: is this photo usable for face analysis, and if not, why.

The codes, as clients see them: docs/API.md, "POST /api/validate".

Errors make an image invalid (no face, several faces, a face or image too small); warnings only
inform (background faces, blurry, too dark, too bright). The measures behind them go into
``QualityReport.quality`` for ``?details=1``.

The main subject decides validity: the largest face in focus is the main face. A face is out of
focus when it is blurry (sharpness under ``BLUR_THRESHOLD``) and under ``OUT_OF_FOCUS_RATIO`` of
the sharpest face of about the largest one's size: the bokeh of a portrait, where YuNet may
find a "face" as large as the subject's (a red-carpet photo: 660 x 669 px at score 0.77 beside
the real 644 x 850 px face). Another face counts toward ``face.multiple`` only when it is
comparable (its box's longer side at least ``COMPARABLE_FACE_RATIO`` of the main face's), in
focus, and not cut by the image border; smaller, edge-cut or out-of-focus faces give the warning
``face.background`` instead. Each face's role (``main``, ``comparable``, ``background``) is in
``QualityReport.roles``, its sharpness in ``QualityReport.sharpness``.

Sharpness is the variance of the Laplacian of a face, resampled to a fixed
``SHARPNESS_SIDE`` square and normalised to a fixed contrast, so that it depends on focus, not
on the image's resolution or exposure. Measured on skimage's astronaut (face about 95 px):
sharp 1172; upscaled 3x 1005; shrunk so the face is 42 px 330; JPEG quality 10 889; darkened to
10 % 1443; Gaussian blur radius 1: 269, 2: 82, 3: 33, 6: 30; upscaled 3x, blur radius 18: 20.
A blurred copy of her face beside the sharp one (1387), at the same size: YuNet still finds it
(score 0.94 to 0.80) and it measures 381 at radius 1, 107 at 2, 59 at 3, 33 at 6, 28 at 10.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from faceapp.faces import FaceBox
from faceapp.schemas import yes_no

#: Side of the square the face region is resampled to before measuring its sharpness.
SHARPNESS_SIDE = 64
#: Brightness and contrast are measured on a copy at most this many pixels a side.
QUALITY_MAX_SIDE = 512
#: Grey-level standard deviation the region is normalised to before measuring its sharpness.
SHARPNESS_CONTRAST = 50.0
#: The checks' code version: raise it when :func:`assess` or :func:`face_roles` judge
#: differently, so that validations stored under the old rules are redone (:func:`rules_version`).
RULES_CODE_VERSION = 1


@dataclass(frozen=True)
class Thresholds:
    """The limits the checks use, from the configuration's face and validation keys."""

    require_single_face: bool = True
    min_face_px: int = 48
    min_image_px: int = 64
    blur_threshold: float = 100.0
    dark_threshold: float = 40.0
    bright_threshold: float = 220.0
    comparable_face_ratio: float = 0.5
    out_of_focus_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.comparable_face_ratio <= 1:
            raise ValueError("Need 0 < COMPARABLE_FACE_RATIO <= 1.")
        if not 0 <= self.out_of_focus_ratio < 1:
            raise ValueError("Need 0 <= OUT_OF_FOCUS_RATIO < 1.")
        if self.min_face_px < 0 or self.min_image_px < 0 or self.blur_threshold < 0:
            raise ValueError("MIN_FACE_PX, MIN_IMAGE_PX and BLUR_THRESHOLD must not be negative.")
        if not 0 <= self.dark_threshold < self.bright_threshold <= 255:
            raise ValueError("Need 0 <= DARK_THRESHOLD < BRIGHT_THRESHOLD <= 255.")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Thresholds:
        """Read the thresholds from a Flask config (or any mapping with the same keys)."""
        return cls(
            require_single_face=_as_bool(config["REQUIRE_SINGLE_FACE"], "REQUIRE_SINGLE_FACE"),
            min_face_px=int(config["MIN_FACE_PX"]),
            min_image_px=int(config["MIN_IMAGE_PX"]),
            blur_threshold=float(config["BLUR_THRESHOLD"]),
            dark_threshold=float(config["DARK_THRESHOLD"]),
            bright_threshold=float(config["BRIGHT_THRESHOLD"]),
            comparable_face_ratio=float(config.get("COMPARABLE_FACE_RATIO", 0.5)),
            out_of_focus_ratio=float(config.get("OUT_OF_FOCUS_RATIO", 0.1)),
        )


def rules_version(config: Mapping[str, Any]) -> str:
    """12 hex characters that change with the rules a validation was judged by: the thresholds,
    STORED_MAX_SIDE (the checks measure the stored copy), the measuring constants and
    :data:`RULES_CODE_VERSION`. A stored validation of another version is redone, as one of
    another detector is (faceapp/services.py)."""
    return _rules_version(
        RULES_CODE_VERSION,
        Thresholds.from_config(config),
        int(config["STORED_MAX_SIDE"]),
        (SHARPNESS_SIDE, QUALITY_MAX_SIDE, SHARPNESS_CONTRAST),
    )


@functools.lru_cache(maxsize=32)
def _rules_version(code: int, thresholds: Thresholds, stored_max_side: int, measures: tuple) -> str:
    # Every analyze by image_id asks (is the stored validation still current?): the hash of the
    # same rules is worked out once (0.1 ms a request).
    document = {
        "code": code,
        "thresholds": asdict(thresholds),
        "stored_max_side": stored_max_side,
        "measures": list(measures),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:12]


@dataclass(frozen=True)
class Issue:
    """One finding: a stable code and one human sentence."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass
class QualityReport:
    """What :func:`assess` found: errors (image invalid), warnings, and the measures behind them."""

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)  # per face, in the order given to assess
    sharpness: list[float] = field(default_factory=list)  # per face, in the same order

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """``valid``, ``errors`` and ``warnings`` as /api/validate answers them."""
        return {
            "valid": self.valid,
            "errors": [issue.to_dict() for issue in self.errors],
            "warnings": [issue.to_dict() for issue in self.warnings],
        }


def assess(
    image: Image.Image,
    faces: list[FaceBox],
    thresholds: Thresholds,
    reduced: Image.Image | None = None,
) -> QualityReport:
    """Check an image and the faces found in it against the thresholds.

    Brightness and contrast are measured on a copy at most ``QUALITY_MAX_SIDE`` pixels a side
    (a box-filtered reduction: the mean is kept), made from `reduced` (a whole-factor reduction
    of `image`, validate's preview) when given, which is cheaper and gives the same copy;
    sharpness on each face's own pixels.
    """
    luma = bounded_copy(reduced or image, QUALITY_MAX_SIDE).convert("L")
    pixels = np.asarray(luma, dtype=np.float32)
    brightness = float(pixels.mean())
    face_sharpness = [measure_sharpness(image.crop(_corners(face))) for face in faces]
    roles = face_roles(faces, image.size, thresholds, face_sharpness)
    if not faces:
        sharpness = measure_sharpness(luma)
        main = None
        face_px = 0
    else:
        index = roles.index("main")
        main, sharpness = faces[index], face_sharpness[index]
        face_px = min(main.width, main.height)
    image_px = min(image.size)

    errors: list[Issue] = []
    warnings: list[Issue] = []
    if image_px < thresholds.min_image_px:
        message = (
            f"The image is {image_px} px on its shorter side; "
            f"at least {thresholds.min_image_px} px is needed."
        )
        errors.append(Issue("image.too_small", message))
    subjects = roles.count("main") + roles.count("comparable")
    if not faces:
        errors.append(Issue("face.none", "No face was found in the image."))
    elif subjects > 1 and thresholds.require_single_face:
        message = f"{subjects} faces of comparable size were found; the image must show one."
        errors.append(Issue("face.multiple", message))
    elif subjects > 1:
        message = (
            f"{subjects} faces of comparable size were found; "
            "the largest one is taken as the main face."
        )
        warnings.append(Issue("face.multiple", message))
    if "background" in roles:
        message = (
            f"{roles.count('background')} smaller, edge-cut or out-of-focus face(s) besides the "
            "main face were found; they do not count as other subjects."
        )
        warnings.append(Issue("face.background", message))
    if main is not None and face_px < thresholds.min_face_px:
        message = (
            f"The main face is {face_px} px on its shorter side; "
            f"at least {thresholds.min_face_px} px is needed."
        )
        errors.append(Issue("face.too_small", message))

    # Blur is judged on the face only: whole-image sharpness mixes focus with scene content.
    if main is not None and sharpness < thresholds.blur_threshold:
        message = (
            f"The face looks blurry: its sharpness is {sharpness:.1f}, "
            f"below the limit of {thresholds.blur_threshold:g}."
        )
        warnings.append(Issue("image.blurry", message))
    if brightness < thresholds.dark_threshold:
        message = (
            f"The image is too dark: its mean brightness is {brightness:.1f} of 255, "
            f"below the limit of {thresholds.dark_threshold:g}."
        )
        warnings.append(Issue("image.too_dark", message))
    elif brightness > thresholds.bright_threshold:
        message = (
            f"The image is too bright: its mean brightness is {brightness:.1f} of 255, "
            f"above the limit of {thresholds.bright_threshold:g}."
        )
        warnings.append(Issue("image.too_bright", message))

    quality = {
        "brightness": round(brightness, 2),
        "contrast": round(float(pixels.std()), 2),
        "sharpness": round(sharpness, 2),
        "face_count": len(faces),
        "largest_face_px": face_px,
    }
    return QualityReport(errors, warnings, quality, roles, face_sharpness)


def main_first(faces: list[FaceBox], report: QualityReport) -> list[FaceBox]:
    """The faces with the main face first, the others in their order (largest first), and the
    report's roles and sharpness reordered to match: analysis takes the first `max_faces`."""
    order = sorted(range(len(faces)), key=lambda index: report.roles[index] != "main")
    report.roles = [report.roles[index] for index in order]
    report.sharpness = [report.sharpness[index] for index in order]
    return [faces[index] for index in order]


def describe_faces(faces: list[FaceBox], report: QualityReport) -> list[dict[str, Any]]:
    """The faces as details and analyze answers show them, each with its role and sharpness."""
    return [
        dict(face.to_dict(), role=role, sharpness=round(sharpness, 2))
        for face, role, sharpness in zip(faces, report.roles, report.sharpness, strict=True)
    ]


def face_roles(
    faces: list[FaceBox],
    image_size: tuple[int, int],
    thresholds: Thresholds,
    sharpness: list[float],
) -> list[str]:
    """Each face's role: ``main`` (the largest in focus), ``comparable`` (in focus, its longer
    side at least the comparable ratio of the main face's, and not touching the image border) or
    ``background``.

    Out of focus: blurry, and under the out-of-focus ratio of the sharpest face whose size is
    comparable to the largest face's (that face is in focus, so there always is a main face).
    """
    if not faces:
        return []
    ratio = thresholds.comparable_face_ratio
    largest_side = max(max(face.width, face.height) for face in faces)
    reference = max(
        value
        for face, value in zip(faces, sharpness, strict=True)
        if max(face.width, face.height) >= ratio * largest_side
    )
    in_focus = [
        value >= thresholds.blur_threshold or value >= thresholds.out_of_focus_ratio * reference
        for value in sharpness
    ]
    main = max(
        (index for index in range(len(faces)) if in_focus[index]),
        key=lambda index: faces[index].area,
    )
    main_side = max(faces[main].width, faces[main].height)
    width, height = image_size
    roles = []
    for index, face in enumerate(faces):
        cut = face.x <= 0 or face.y <= 0 or face.x + face.width >= width
        cut = cut or face.y + face.height >= height
        if index == main:
            roles.append("main")
        elif max(face.width, face.height) >= ratio * main_side and in_focus[index] and not cut:
            roles.append("comparable")
        else:
            roles.append("background")
    return roles


def _corners(face: FaceBox) -> tuple[int, int, int, int]:
    return face.x, face.y, face.x + face.width, face.y + face.height


def bounded_copy(image: Image.Image, max_side: int) -> Image.Image:
    """The image reduced by a whole factor (box filter) until it is at most `max_side` a side."""
    factor = -(-max(image.size) // max_side)  # ceiling division
    return image.reduce(factor) if factor > 1 else image


def measure_sharpness(region: Image.Image) -> float:
    """Variance of the Laplacian of a greyscale region, at a fixed size and contrast."""
    grey = region.convert("L")
    side = SHARPNESS_SIDE
    # Area averaging when shrinking; bicubic when a small face must be enlarged.
    resample = Image.Resampling.BOX if min(grey.size) >= side else Image.Resampling.BICUBIC
    values = np.asarray(grey.resize((side, side), resample), dtype=np.float64)
    # Normalising the contrast keeps a dark or washed-out but focused face from reading as blurry.
    values = (values - values.mean()) * (SHARPNESS_CONTRAST / max(float(values.std()), 1.0))
    return float(cv2.Laplacian(values, cv2.CV_64F, ksize=1).var())


def _as_bool(value: Any, key: str) -> bool:
    try:
        return yes_no(value)
    except ValueError:
        raise ValueError(f"{key} must be true or false, not {value!r}.") from None
