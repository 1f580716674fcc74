"""Settings that must take effect, or stop the start, when set (issue 19: a mutation check found
each of these could break unnoticed): a default that hides a misspelt key is no test of the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from PIL import Image

from faceapp import create_app, validation
from faceapp.config import DEFAULTS, SettingError, load_config, yes_no
from faceapp.faces import FaceBox, build_detector


def _two_faces(ratio: float) -> tuple[Image.Image, list[FaceBox]]:
    """A grey image with a main face of 100 px and another of 100 * ratio px, both inside."""
    image = Image.new("RGB", (400, 200), (128, 128, 128))
    side = round(100 * ratio)
    return image, [FaceBox(20, 50, 100, 100, 0.99), FaceBox(250, 50, side, side, 0.99)]


def _codes(app, ratio: float) -> tuple[list[str], list[str]]:
    image, found = _two_faces(ratio)
    report = validation.assess(image, found, validation.Thresholds.from_config(app.config))
    return [i.code for i in report.errors], [i.code for i in report.warnings]


def test_comparable_face_ratio_set_in_the_config_takes_effect(config):
    # A second face 70 % of the main one: comparable under the default 0.5, background under 0.8.
    errors, warnings = _codes(create_app(config), 0.7)
    assert "face.multiple" in errors and "face.background" not in warnings
    errors, warnings = _codes(create_app({**config, "COMPARABLE_FACE_RATIO": 0.8}), 0.7)
    assert "face.multiple" not in errors and "face.background" in warnings


def test_out_of_focus_ratio_set_in_the_config_takes_effect(config):
    # The default (0.1) would hide a validation reading another key.
    app = create_app({**config, "OUT_OF_FOCUS_RATIO": 0.3})
    assert validation.Thresholds.from_config(app.config).out_of_focus_ratio == 0.3


@pytest.mark.parametrize("ratio", [0, -0.5, 1.01, 2])
def test_an_out_of_range_comparable_face_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="COMPARABLE_FACE_RATIO"):
        validation.Thresholds(comparable_face_ratio=ratio)


def test_the_detector_version_changes_with_detect_max_side():
    """The version keys stored validations: a new input size must not reuse the old faces."""
    versions = {
        side: build_detector({"DETECTOR": "haar", "DETECT_MAX_SIDE": side}).info["version"]
        for side in (640, 320)
    }
    assert versions[640] != versions[320]


@pytest.mark.parametrize(("length", "usable"), [(31, False), (32, True)])
def test_a_short_secret_key_file_stops_the_start(config, tmp_path, monkeypatch, length, usable):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "secret_key").write_text("k" * length + "\n")
    monkeypatch.setenv("FACEAPP_INSTANCE_PATH", str(instance))
    settings = {**config, "SECRET_KEY": None}
    if usable:
        assert create_app(settings).config["SECRET_KEY"] == "k" * length
    else:
        with pytest.raises(RuntimeError, match="no usable secret key"):
            create_app(settings)


API_MD = Path(__file__).resolve().parent.parent / "docs" / "API.md"


def _documented(text: str):
    """A default as docs/API.md's Configuration table writes it, or None for prose (a default
    worked out at start, like `<instance>/models`)."""
    units = {"GiB": 1024**3, "MiB": 1024**2, "days": 24 * 3600}
    text = re.sub(r" \([^)]*\)$", "", text)  # "335544320 (320 MiB)": the gloss aside
    literal = text[1:-1] if re.fullmatch(r"`[^`]*`", text) else text
    if literal in ("true", "false"):
        return literal == "true"
    if match := re.fullmatch(r"(\d+) (GiB|MiB|days)", literal):
        return int(match.group(1)) * units[match.group(2)]
    if re.fullmatch(r"\d+", literal):
        return int(literal)
    if re.fullmatch(r"\d+\.\d+", literal):
        return float(literal)
    if literal != text:
        return literal
    return "" if text == "empty" else None


def test_every_default_is_the_one_docs_api_md_gives():
    """Operators read the defaults in docs/API.md: a limit doubled or a switch flipped in
    config.py without the table following is a change nobody was told about."""
    section = API_MD.read_text().split("\n## Configuration\n", 1)[1]
    rows = section.split("\n| key | default | meaning |\n", 1)[1].split("\n\n", 1)[0]
    table = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]+) \|", rows, re.M)
    documented = {key: _documented(text.strip()) for key, text in table}
    for key, default in DEFAULTS.items():
        assert key in documented, f"{key} is not in docs/API.md's Configuration table"
        if documented[key] is None or default is None:
            assert default is None, f"{key}: docs/API.md gives no value for {default!r}"
            continue
        assert documented[key] == default and type(documented[key]) is type(default), key


# Settings whose default is None ("work it out"): None stays allowed, and a value of another
# type is refused like any other setting's (config.py's NULLABLE declares these types).
NULLABLE_TYPES = {
    "MODELS_DIR": str,
    "ATTRIBUTES_FILE": str,
    "STORE_URL": str,
    "MAX_FORM_MEMORY_SIZE": int,
    "DETECTOR_MODEL": str,
    "DETECTOR_AUTO_PULL": bool,
    "DETECTOR_URL": str,
    "DETECTOR_SHA256": str,
    "YUNET_SCORE_THRESHOLD": float,
    "HAAR_MIN_CONFIDENCE": float,
    "TESTER_ENABLED": bool,
    "SECRET_KEY": str,
    "RATELIMIT_STORAGE_URI": str,
}
NOT_OF_TYPE = {str: 12, int: "twelve", float: "twelve", bool: "maybe"}


@pytest.mark.parametrize("key", sorted(NULLABLE_TYPES))
def test_a_setting_without_a_default_takes_none_or_its_type_only(key, tmp_path):
    load_config(Flask("faceapp", instance_path=str(tmp_path)), {key: None})
    wrong = NOT_OF_TYPE[NULLABLE_TYPES[key]]
    with pytest.raises(SettingError, match=key):
        load_config(Flask("faceapp", instance_path=str(tmp_path)), {key: wrong})


def test_flask_and_extension_settings_come_from_the_environment_too(tmp_path, monkeypatch):
    """Keys faceapp does not declare (Flask-Limiter's RATELIMIT_HEADERS_ENABLED) are read from
    FACEAPP_* as Flask reads them, JSON first."""
    monkeypatch.setenv("FACEAPP_RATELIMIT_HEADERS_ENABLED", "true")
    monkeypatch.setenv("FACEAPP_RATELIMIT_STRATEGY", "moving-window")
    app = Flask("faceapp", instance_path=str(tmp_path), instance_relative_config=True)
    load_config(app, None)
    assert app.config["RATELIMIT_HEADERS_ENABLED"] is True
    assert app.config["RATELIMIT_STRATEGY"] == "moving-window"


@pytest.mark.parametrize(("sent", "kept"), [("Haar", "haar"), (" YUNET ", "yunet"), ("", "yunet")])
def test_detector_is_checked_and_lowercased_where_the_settings_load(
    tmp_path, monkeypatch, sent, kept
):
    """DETECTOR is checked in one place, faceapp/config.py: from the environment as from a test
    mapping, any case; empty is the default. faces.py then trusts the value it reads."""
    monkeypatch.setenv("FACEAPP_DETECTOR", sent)
    app = Flask("faceapp", instance_path=str(tmp_path), instance_relative_config=True)
    load_config(app, None)
    assert app.config["DETECTOR"] == kept
    mapped = Flask("faceapp", instance_path=str(tmp_path))
    load_config(mapped, {"DETECTOR": sent})
    assert mapped.config["DETECTOR"] == kept


def test_an_unknown_detector_stops_the_start_naming_the_key(tmp_path, monkeypatch):
    with pytest.raises(SettingError, match=r"DETECTOR: 'mtcnn' is not one of yunet, haar"):
        load_config(Flask("faceapp", instance_path=str(tmp_path)), {"DETECTOR": "mtcnn"})
    monkeypatch.setenv("FACEAPP_DETECTOR", "MTCNN")
    with pytest.raises(SettingError, match=r"FACEAPP_DETECTOR: 'MTCNN' is not one of"):
        load_config(Flask("faceapp", instance_path=str(tmp_path)), None)


@pytest.mark.parametrize(("value", "meant"), [(1, True), (0, False), (True, True), ("On", True)])
def test_yes_no_takes_one_and_zero_as_numbers_too(value, meant):
    assert yes_no(value) is meant


@pytest.mark.parametrize("value", [2, -1, 0.5, "maybe", None])
def test_yes_no_refuses_anything_else(value):
    with pytest.raises(ValueError, match="not a yes/no value"):
        yes_no(value)


@pytest.mark.parametrize(
    ("x", "y", "role"),
    [
        (1, 1, "comparable"),  # one pixel in from the top and left edges: whole
        (0, 50, "background"),
        (250, 0, "background"),
        (329, 129, "comparable"),  # ends one pixel before the right and bottom edges
        (330, 50, "background"),
        (250, 130, "background"),
    ],
)
def test_a_face_is_cut_by_the_border_only_when_it_touches_it(x, y, role):
    main = FaceBox(100, 50, 100, 100, 0.99)
    faces = [main, FaceBox(x, y, 70, 70, 0.99)]
    roles = validation.face_roles(faces, (400, 200), validation.Thresholds(), [500.0, 500.0])
    assert roles == ["main", role]
