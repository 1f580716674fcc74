"""The detector as a service sees it: YuNet by default, the Haar fallback that says so, the
version validations are cached under, landmarks and roles in answers, and max_faces."""

from __future__ import annotations

import io
import shutil

import pytest
from flask import Flask
from PIL import Image

from faceapp import create_app, faces, model_files, validation
from tests.conftest import ADMIN, jpeg_bytes


@pytest.fixture
def yunet_config(config, yunet_model) -> dict:
    return dict(config, DETECTOR="yunet", DETECTOR_MODEL=yunet_model)


def upload(client, data: bytes, **query):
    return client.post(
        "/api/validate", query_string=query, data={"file": (io.BytesIO(data), "photo.jpg")}
    )


@pytest.fixture(scope="module")
def crowd_jpeg(astronaut) -> bytes:
    """The astronaut and, behind her, a small copy (background) and a large copy (comparable)."""
    canvas = Image.new("RGB", (1300, 600), (70, 80, 90))
    canvas.paste(astronaut, (0, 44))
    canvas.paste(astronaut.resize((200, 200), Image.Resampling.LANCZOS), (560, 100))
    canvas.paste(astronaut.resize((420, 420), Image.Resampling.LANCZOS), (820, 60))
    return jpeg_bytes(canvas)


def test_detector_before_init_app_is_a_clear_error():
    with Flask("bare").app_context(), pytest.raises(RuntimeError, match="faces.init_app"):
        faces.detector()


def test_yunet_is_the_default_and_details_carry_landmarks_pose_and_role(
    yunet_config, astronaut_jpeg
):
    yunet_config.pop("DETECTOR")  # the default
    app = create_app(yunet_config)
    with app.app_context():
        assert faces.describe()["name"] == "yunet"
        assert "fallback" not in faces.describe()
    body = upload(app.test_client(), astronaut_jpeg, details=1).get_json()
    assert body["valid"] is True
    (face,) = body["details"]["faces"]
    assert face["role"] == "main"
    assert len(face["landmarks"]) == 5 and all(len(point) == 2 for point in face["landmarks"])
    assert set(face["pose"]) == {"roll", "yaw"}
    assert body["details"]["detector"]["name"] == "yunet"
    assert body["details"]["detector"]["score_threshold"] == 0.75


def test_a_missing_model_falls_back_to_haar_and_says_so_everywhere(config, astronaut_jpeg):
    config.update(DETECTOR="yunet")  # the models folder has no YuNet, and auto-pull is off
    app = create_app(config)
    client = app.test_client()
    body = upload(client, astronaut_jpeg, details=1).get_json()
    detector = body["details"]["detector"]
    assert detector["name"] == "haar"
    assert detector["fallback"]["from"] == "yunet"
    assert "models pull" in detector["fallback"]["reason"]
    assert body["valid"] is True  # Haar still finds her

    (event,) = client.get(f"/api/images/{body['image_id']}/trace").get_json()["events"]
    assert event["detector"] == "haar" and event["detector_fallback_from"] == "yunet"
    assert event["detector_version"] == detector["version"]
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    ready = client.get("/api/ready").get_json()
    assert ready["model"]["detector"]["name"] == "haar"
    assert "fallback" in ready["model"]["detector"]
    analysis = client.post("/api/analyze", json={"image_id": body["image_id"]}).get_json()
    assert analysis["model"]["detector"] == detector
    page = client.get(f"/app/images/{body['image_id']}").get_data(as_text=True)
    assert 'id="banner-detector-fallback"' in page


def test_no_fallback_banner_when_yunet_runs(yunet_config):
    page = create_app(yunet_config).test_client().get("/app").get_data(as_text=True)
    assert "banner-detector-fallback" not in page


def test_a_corrupt_model_file_keeps_the_service_up_on_haar(config, tmp_path, astronaut_jpeg):
    broken = tmp_path / "yunet.onnx"
    broken.write_bytes(b"\x08\x07 not an onnx graph" * 100)
    config.update(DETECTOR="yunet", DETECTOR_MODEL=str(broken))
    app = create_app(config)
    with app.app_context():
        info = faces.describe()
    assert info["name"] == "haar"
    assert str(broken) in info["fallback"]["reason"]
    assert "not a readable YuNet ONNX model" in info["fallback"]["reason"]
    assert upload(app.test_client(), astronaut_jpeg).status_code == 200


def test_a_pulled_model_that_no_longer_matches_its_manifest_is_refused(config, yunet_model):
    models_dir = config["MODELS_DIR"]
    path = model_files.detector_path(models_dir)
    folder = path.rsplit("/", 1)[0]
    shutil.os.makedirs(folder)
    shutil.copyfile(yunet_model, path)
    manifest = model_files.build_manifest(folder, model_files.YUNET["id"], "2023mar")
    model_files.write_manifest(folder, manifest)
    config.update(DETECTOR="yunet")
    with create_app(config).app_context():
        assert faces.describe()["name"] == "yunet"  # the intact pulled file is used
    with open(path, "r+b") as fh:  # one byte changed on disk
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with create_app(config).app_context():
        info = faces.describe()
    assert info["name"] == "haar"
    assert "does not match its manifest" in info["fallback"]["reason"]


def test_an_unknown_detector_fails_the_start(config):
    config.update(DETECTOR="mtcnn")
    with pytest.raises(ValueError, match="mtcnn"):
        create_app(config)


def test_changing_the_detector_revalidates_a_stored_image(config, yunet_config, astronaut_jpeg):
    haar_client = create_app(config).test_client()
    first = upload(haar_client, astronaut_jpeg, details=1).get_json()
    assert first["details"]["detector"]["name"] == "haar"
    assert upload(haar_client, astronaut_jpeg, details=1).get_json() == first  # cached

    yunet_client = create_app(yunet_config).test_client()  # same store, other detector
    second = upload(yunet_client, astronaut_jpeg, details=1).get_json()
    assert second["details"]["detector"]["name"] == "yunet"
    assert "landmarks" in second["details"]["faces"][0]
    events = yunet_client.get(f"/api/images/{first['image_id']}/trace").get_json()["events"]
    assert [event["event"] for event in events] == ["validated", "validated", "wiped", "validated"]
    assert events[2]["reason"] == "detector_changed"


def test_changing_the_threshold_changes_the_version(yunet_config):
    with create_app(yunet_config).app_context():
        default = faces.describe()["version"]
    with create_app(dict(yunet_config, YUNET_SCORE_THRESHOLD=0.9)).app_context():
        stricter = faces.describe()
    assert stricter["score_threshold"] == 0.9 and stricter["version"] != default


def test_background_faces_are_listed_and_analysed(yunet_config, crowd_jpeg):
    client = create_app(yunet_config).test_client()
    body = upload(client, crowd_jpeg, details=1).get_json()
    roles = [face["role"] for face in body["details"]["faces"]]
    assert roles == ["main", "comparable", "background"]
    assert [issue["code"] for issue in body["errors"]] == ["face.multiple"]
    assert [issue["code"] for issue in body["warnings"]] == ["face.background"]
    page = client.get(f"/app/images/{body['image_id']}").get_data(as_text=True)
    assert page.count('data-role="background"') == 1 and page.count('data-role="main"') == 1
    assert page.count('class="face-landmark"') == 15  # five per face

    forced = {"image_id": body["image_id"], "force": True}
    analysed = client.post("/api/analyze", json=forced).get_json()
    assert [face["role"] for face in analysed["faces"]] == roles
    assert all(len(face["landmarks"]) == 5 and "pose" in face for face in analysed["faces"])
    assert analysed["model"]["detector"]["name"] == "yunet"

    assert analysed["face_count"] == {"found": 3, "not_analysed": 0, "max_faces": 5}

    one = client.post("/api/analyze", json={**forced, "max_faces": 1}).get_json()
    assert [face["role"] for face in one["faces"]] == ["main"]
    assert one["cached"] is False  # max_faces is part of the cache key
    assert one["face_count"] == {"found": 3, "not_analysed": 2, "max_faces": 1}
    two = client.post("/api/analyze", json={**forced, "max_faces": 2}).get_json()
    assert [face["role"] for face in two["faces"]] == ["main", "comparable"]
    again = client.post("/api/analyze", json={**forced, "max_faces": 2}).get_json()
    assert again["cached"] is True
    assert again["face_count"] == {"found": 3, "not_analysed": 1, "max_faces": 2}
    trace = client.get(f"/api/images/{body['image_id']}/trace").get_json()["events"]
    assert [e.get("faces_not_analysed") for e in trace if "faces" in e] == [None, 2, 1, 1]


def test_the_tester_says_how_many_faces_were_not_analysed(yunet_config, crowd_jpeg):
    client = create_app(yunet_config).test_client()
    image_id = upload(client, crowd_jpeg).get_json()["image_id"]
    page = client.get(f"/app/images/{image_id}").get_data(as_text=True)
    assert 'name="max_faces"' in page and 'placeholder="5"' in page
    form = {"force": "1", "max_faces": "2", "labels": ""}
    answer = client.post(f"/app/images/{image_id}", data=form, follow_redirects=True)
    assert answer.status_code == 200
    text = " ".join(answer.get_data(as_text=True).split())
    assert "3 faces found: the 2 largest analysed, <strong>1 not analysed</strong>" in text
    assert 'value="2"' in text  # the field keeps what was sent
    assert text.count('class="face-card"') == 2
    blank = client.post(f"/app/images/{image_id}", data={**form, "max_faces": ""})
    assert blank.status_code == 303  # blank: MAX_FACES
    refused = client.post(f"/app/images/{image_id}", data={**form, "max_faces": "0"})
    assert refused.status_code == 400 and "max_faces" in refused.get_data(as_text=True)


def test_max_faces_default_is_a_config_key(yunet_config, crowd_jpeg):
    client = create_app(dict(yunet_config, MAX_FACES=2)).test_client()
    image_id = upload(client, crowd_jpeg).get_json()["image_id"]
    analysed = client.post("/api/analyze", json={"image_id": image_id, "force": True})
    assert len(analysed.get_json()["faces"]) == 2
    assert analysed.get_json()["face_count"] == {"found": 3, "not_analysed": 1, "max_faces": 2}


@pytest.mark.parametrize("value", [0, -1, 101, "many"])
def test_max_faces_out_of_range_is_input_invalid(client, astronaut_jpeg, value):
    image_id = upload(client, astronaut_jpeg).get_json()["image_id"]
    answer = client.post("/api/analyze", json={"image_id": image_id, "max_faces": value})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "input.invalid"


def test_wipe_cache_under_a_new_detector_stores_the_image_afresh(
    config, yunet_config, astronaut_jpeg
):
    """wipe_cache under another detector re-stores the image (its face contexts follow the new
    faces), as a plain re-validation does, and the trace says why."""
    haar_client = create_app(config).test_client()
    first = upload(haar_client, astronaut_jpeg, details=1).get_json()
    client = create_app(yunet_config).test_client()
    answer = client.post(
        "/api/validate?details=1",
        data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg"), "wipe_cache": "true"},
    ).get_json()
    assert answer["details"]["detector"]["name"] == "yunet"
    events = client.get(f"/api/images/{first['image_id']}/trace").get_json()["events"]
    assert [e["event"] for e in events] == ["validated", "wiped", "validated"]
    assert events[1]["reason"] == "detector_changed"


def test_tiny_images_between_photos_are_too_small_never_a_500(yunet_config, astronaut_jpeg):
    client = create_app(yunet_config).test_client()
    for side, level in [(5, 128), (12, 255), (10, 0), (1, 128), (2, 0), (31, 255)] * 2:
        assert upload(client, astronaut_jpeg, wipe_cache=1).get_json()["valid"] is True
        tiny = io.BytesIO()
        Image.new("RGB", (side, side), (level,) * 3).save(tiny, "PNG")
        answer = upload(client, tiny.getvalue(), wipe_cache=1, details=1)
        assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
        body = answer.get_json()
        assert [issue["code"] for issue in body["errors"]][:1] == ["image.too_small"]
        assert body["details"]["faces"] == []


def test_changing_a_validation_rule_revalidates_a_stored_image(config, astronaut_jpeg):
    """A stored validation holds for one detector and one set of rules: a stricter MIN_FACE_PX
    on the same store judges the image again instead of serving the old `valid: true`."""
    first = upload(create_app(config).test_client(), astronaut_jpeg).get_json()
    assert first["valid"] is True
    strict = create_app(dict(config, MIN_FACE_PX=4000)).test_client()
    second = upload(strict, astronaut_jpeg).get_json()
    assert [issue["code"] for issue in second["errors"]] == ["face.too_small"]
    events = strict.get(f"/api/images/{first['image_id']}/trace").get_json()["events"]
    assert [e["event"] for e in events] == ["validated", "wiped", "validated"]
    assert events[1]["reason"] == "rules_changed"
    assert upload(strict, astronaut_jpeg).get_json() == second  # cached under the new rules


def test_analyze_by_id_judges_a_stored_image_by_the_current_rules(config, astronaut_jpeg):
    image_id = upload(create_app(config).test_client(), astronaut_jpeg).get_json()["image_id"]
    strict = create_app(dict(config, MIN_FACE_PX=4000)).test_client()
    answer = strict.post("/api/analyze", json={"image_id": image_id})
    assert answer.status_code == 409
    assert answer.get_json()["error"]["code"] == "image.not_valid"
    record = strict.get(f"/api/images/{image_id}").get_json()
    assert [issue["code"] for issue in record["validation"]["errors"]] == ["face.too_small"]


@pytest.mark.parametrize(
    "change",
    [
        {"COMPARABLE_FACE_RATIO": 0.3},
        {"OUT_OF_FOCUS_RATIO": 0.2},
        {"MIN_FACE_PX": 40},
        {"MIN_IMAGE_PX": 32},
        {"BLUR_THRESHOLD": 50.0},
        {"DARK_THRESHOLD": 30.0},
        {"BRIGHT_THRESHOLD": 230.0},
        {"REQUIRE_SINGLE_FACE": False},
        {"STORED_MAX_SIDE": 1500},
    ],
)
def test_each_validation_setting_changes_the_rules_version(config, change):
    default = validation.rules_version(create_app(config).config)
    assert validation.rules_version(create_app(dict(config, **change)).config) != default


def test_the_rules_code_version_changes_the_rules_version(config, monkeypatch):
    settings = create_app(config).config
    default = validation.rules_version(settings)
    monkeypatch.setattr(validation, "RULES_CODE_VERSION", validation.RULES_CODE_VERSION + 1)
    assert validation.rules_version(settings) != default
