"""`models pull` for the face detector: a local HTTP server serves the fixture's bytes (there is
no network here), and wrong, truncated or missing files never land in the models folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from faceapp import create_app, faces, model_files
from tests.test_url_fetch import raw_server  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def fixture_bytes(yunet_model) -> bytes:
    with open(yunet_model, "rb") as fh:
        return fh.read()


@pytest.fixture
def served(httpserver, fixture_bytes):
    """The fixture at /yunet.onnx; returns (url, its SHA-256)."""
    httpserver.expect_request("/yunet.onnx").respond_with_data(
        fixture_bytes, content_type="application/octet-stream"
    )
    return httpserver.url_for("/yunet.onnx"), hashlib.sha256(fixture_bytes).hexdigest()


def leftovers(models_dir) -> list[str]:
    return sorted(os.listdir(models_dir)) if os.path.isdir(models_dir) else []


def test_the_pinned_source_is_opencv_zoos_2023mar_file():
    assert model_files.YUNET["url"].endswith("/face_detection_yunet_2023mar.onnx")
    assert model_files.detector_source({}) == {
        "url": model_files.YUNET["url"],
        "sha256": model_files.YUNET["sha256"],
        "size": 232_589,  # OpenCV Zoo's Git LFS object for the 2023mar file
    }
    # Another URL or hash: the size is not known, only the hash is checked.
    assert model_files.detector_source({"DETECTOR_SHA256": "ab" * 32})["size"] is None


def test_pull_stores_the_file_with_a_manifest(tmp_path, served, fixture_bytes):
    url, sha = served
    path = model_files.pull_file(url, sha, str(tmp_path), progress=False)
    assert path == model_files.detector_path(str(tmp_path))
    with open(path, "rb") as fh:
        assert fh.read() == fixture_bytes
    manifest = model_files.read_manifest(os.path.dirname(path))
    assert manifest["id"] == "opencv/face_detection_yunet"
    assert manifest["revision"] == "2023mar" and manifest["url"] == url
    assert manifest["files"] == [
        {"name": model_files.YUNET["file"], "size": len(fixture_bytes), "sha256": sha}
    ]
    assert leftovers(tmp_path) == ["opencv--face_detection_yunet"]  # no staging folder left
    listed = model_files.list_models(str(tmp_path))
    assert [item["id"] for item in listed] == ["opencv/face_detection_yunet"]


@pytest.mark.parametrize(
    ("serve", "message"),
    [
        ("wrong_hash", "not the expected"),
        ("truncated", "sent 50000 of the expected"),
        ("missing", "HTTP 404"),
    ],
)
def test_a_bad_download_stores_nothing_and_keeps_the_old_copy(
    tmp_path, httpserver, fixture_bytes, serve, message
):
    sha = hashlib.sha256(fixture_bytes).hexdigest()
    good = httpserver.url_for("/good.onnx")
    httpserver.expect_request("/good.onnx").respond_with_data(fixture_bytes)
    path = model_files.pull_file(good, sha, str(tmp_path), progress=False)

    if serve == "wrong_hash":
        httpserver.expect_request("/bad.onnx").respond_with_data(fixture_bytes[::-1])
    elif serve == "truncated":
        httpserver.expect_request("/bad.onnx").respond_with_data(fixture_bytes[:50_000])
    else:
        httpserver.expect_request("/bad.onnx").respond_with_data("not here", status=404)
    bad = httpserver.url_for("/bad.onnx")
    with pytest.raises(model_files.DownloadError, match=message):
        model_files.pull_file(bad, sha, str(tmp_path), size=len(fixture_bytes), progress=False)
    assert leftovers(tmp_path) == ["opencv--face_detection_yunet"]
    assert model_files.sha256_file(path) == sha  # the older, good copy is untouched


def test_an_unreachable_server_is_a_download_error(tmp_path):
    with pytest.raises(model_files.DownloadError, match="could not download"):
        model_files.pull_file(
            "http://127.0.0.1:9/yunet.onnx", "0" * 64, str(tmp_path), progress=False, timeout=2
        )
    assert leftovers(tmp_path) == []


def test_cli_pull_yunet_fetches_only_the_detector_once(config, served, httpserver):
    url, sha = served
    # Auto-pull on, as in production: building the app must not fetch it a second time.
    config.update(DETECTOR="yunet", DETECTOR_URL=url, DETECTOR_SHA256=sha, MODEL_AUTO_PULL=True)
    result = create_app(config).test_cli_runner().invoke(args=["models", "pull", "yunet"])
    assert result.exit_code == 0, result.output
    assert f"SHA-256 {sha}" in result.output
    assert leftovers(config["MODELS_DIR"]) == ["opencv--face_detection_yunet"]
    assert len(httpserver.log) == 1


def test_cli_pull_reports_a_bad_file_without_a_traceback(config, served):
    url, _sha = served
    config.update(DETECTOR_URL=url, DETECTOR_SHA256="0" * 64)
    result = create_app(config).test_cli_runner().invoke(args=["models", "pull", "yunet"])
    assert result.exit_code == 1
    assert "could not pull the face detector" in result.output
    assert "Traceback" not in result.output


def test_the_app_pulls_a_missing_detector_in_the_background(config, served):
    url, sha = served
    config.update(DETECTOR="yunet", DETECTOR_URL=url, DETECTOR_SHA256=sha, MODEL_AUTO_PULL=True)
    with create_app(config).app_context():
        first = faces.describe()  # never waits for the download
        assert faces.wait_for_pull(timeout=30)
        assert faces.describe()["name"] == "yunet"
    assert first["name"] in ("haar", "yunet")  # yunet only when the pull won the race
    if first["name"] == "haar":
        assert "being pulled in the background" in first["fallback"]["reason"]
    assert os.path.isfile(model_files.detector_path(config["MODELS_DIR"]))


def test_a_failed_auto_pull_falls_back_to_haar_with_the_reason(config, httpserver):
    httpserver.expect_request("/yunet.onnx").respond_with_data("gone", status=404)
    config.update(
        DETECTOR="yunet", DETECTOR_URL=httpserver.url_for("/yunet.onnx"), DETECTOR_AUTO_PULL=True
    )
    with create_app(config).app_context():
        faces.describe()
        assert faces.wait_for_pull(timeout=30)
        info = faces.describe()
    assert info["name"] == "haar"
    assert "HTTP 404" in info["fallback"]["reason"]
    assert "flask --app wsgi models pull yunet" in info["fallback"]["reason"]


def test_auto_pull_fetches_a_missing_detector_once_and_quietly(config, served, httpserver, capfd):
    url, sha = served
    config.update(DETECTOR="yunet", DETECTOR_URL=url, DETECTOR_SHA256=sha, MODEL_AUTO_PULL=True)
    for _ in range(2):  # a second start finds the file in the models folder
        with create_app(config).app_context():
            faces.describe()
            assert faces.wait_for_pull(timeout=30)
            assert faces.describe()["name"] == "yunet"
    assert len(httpserver.log) == 1
    # A worker pulls in the background: no progress bar in the server's log.
    assert "B/s" not in capfd.readouterr().err


def drip_forever(conn, stop):
    """Headers, then one byte of the body every 0.2 s (the probe's server: one every 5 s)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 232589\r\n\r\n")
    while not stop.wait(0.2):
        conn.sendall(b"x")


def test_a_pull_from_a_dripping_server_stops_at_its_deadline(tmp_path, raw_server):  # noqa: F811
    server = raw_server(drip_forever)
    started = time.monotonic()
    with pytest.raises(model_files.DownloadError, match="within 1 s"):
        model_files.pull_file(
            f"http://127.0.0.1:{server.port}/yunet.onnx",
            "0" * 64,
            str(tmp_path),
            progress=False,
            timeout=5,
            deadline=1.0,
        )
    assert time.monotonic() - started < 4  # before: until the server gave up
    assert leftovers(tmp_path) == []


def test_a_request_never_waits_for_the_detector_pull(config, raw_server):  # noqa: F811
    server = raw_server(drip_forever)
    config.update(
        DETECTOR="yunet",
        DETECTOR_URL=f"http://127.0.0.1:{server.port}/yunet.onnx",
        MODEL_AUTO_PULL=True,
        DETECTOR_PULL_DEADLINE=3.0,
    )
    app = create_app(config)
    started = time.monotonic()
    with app.app_context():
        info = faces.describe()  # before: blocked in the download, holding the detector lock
        assert time.monotonic() - started < 1.5
        assert info["name"] == "haar"
        assert "being pulled in the background" in info["fallback"]["reason"]
        assert faces.wait_for_pull(timeout=30)
        assert "within 3 s" in faces.describe()["fallback"]["reason"]


def stale_staging(models_dir, name: str, age: float = 0.0) -> str:
    folder = os.path.join(models_dir, name)
    os.makedirs(folder)
    with open(os.path.join(folder, "model.safetensors"), "wb") as fh:
        fh.write(b"half")
    if age:
        old = time.time() - age
        for path in (os.path.join(folder, "model.safetensors"), folder):
            os.utime(path, (old, old))
    return folder


def test_a_pull_removes_the_staging_folders_of_dead_pulls(tmp_path, served):
    url, sha = served
    models_dir = str(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    killed = stale_staging(
        models_dir, f"{model_files.staging_prefix().rsplit('-', 2)[0]}-{dead}-abcd"
    )
    forgotten = stale_staging(models_dir, ".pull-abcd1234", age=model_files.STALE_PULL_SECONDS + 60)
    running = stale_staging(models_dir, model_files.staging_prefix() + "live")
    foreign = stale_staging(models_dir, ".pull-otherhost-1-xyz")  # another host's, recent
    model_files.pull_file(url, sha, models_dir, progress=False)
    assert not os.path.exists(killed) and not os.path.exists(forgotten)
    assert os.path.isdir(running) and os.path.isdir(foreign)
