"""Shared fixtures: the tiny random CLIP (made once by `models random`), app, client, photos."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from faceapp import create_app  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random-weights CLIP written by the real `flask models random` command."""
    folder = tmp_path_factory.mktemp("models") / "tiny-clip"
    app = create_app(
        {
            "TESTING": True,
            "MODELS_DIR": str(folder.parent),
            "TESTER_ENABLED": False,
            "STORE_URL": str(tmp_path_factory.mktemp("cli-store")),
        }
    )
    result = app.test_cli_runner().invoke(args=["models", "random", str(folder), "--size", "tiny"])
    assert result.exit_code == 0, result.output
    return str(folder)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server on a free loopback port (no persistence), stopped afterwards."""
    from tests.servers import redis_server

    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture
def config(tmp_path, tiny_model_dir) -> dict:
    """The test configuration; tests may change it before asking for `app`."""
    return {
        "TESTING": True,
        "MODEL_NAME": tiny_model_dir,
        "MODELS_DIR": str(tmp_path / "models"),
        "STORE_URL": str(tmp_path / "store"),
        "LOAD_MODEL_ON_START": False,
        "MODEL_AUTO_PULL": False,
        "TESTER_ENABLED": True,
        "WTF_CSRF_ENABLED": False,
        "SECRET_KEY": "test-secret-key-not-for-production",  # no key file in the repo's instance/
        "ADMIN_KEYS": "admin-key",
        "TORCH_THREADS": 1,
        # Haar needs no file; tests of YuNet and of the fallback set DETECTOR themselves.
        "DETECTOR": "haar",
    }


@pytest.fixture
def app(config):
    return create_app(config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


ADMIN = {"Authorization": "Bearer admin-key"}


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **save)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def astronaut_jpeg() -> bytes:
    """scikit-image's astronaut: a real photograph with one face."""
    from skimage import data

    return jpeg_bytes(Image.fromarray(data.astronaut()))


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """scikit-image's coffee cup: a real photograph with no face."""
    from skimage import data

    return jpeg_bytes(Image.fromarray(data.coffee()))


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """scikit-image's astronaut as a PIL image (one face, about x 178-271, y 67-160)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def haar():
    """OpenCV's frontal-face Haar detector, as the app builds it by default."""
    from faceapp.faces import HaarFaceDetector

    return HaarFaceDetector()


YUNET_FIXTURE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "fixtures",
    "face_detection_yunet.onnx",
)


@pytest.fixture(scope="session")
def yunet_model() -> str:
    """The YuNet ONNX test fixture (../shared/fixtures; CI has it, a bare clone may not)."""
    if not os.path.isfile(YUNET_FIXTURE):
        pytest.skip(f"the YuNet test fixture is not at {os.path.normpath(YUNET_FIXTURE)}")
    return YUNET_FIXTURE


@pytest.fixture(scope="session")
def yunet(yunet_model):
    """YuNet from the test fixture, with the default score threshold."""
    from faceapp.faces import YuNetFaceDetector

    return YuNetFaceDetector(yunet_model)


# -- the tester pages in Chromium (tests/browser.py) ----------------------------------------------


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """Where browser tests leave screenshots and server logs: $FACEAPP_ARTIFACTS, else a tmp dir."""
    from pathlib import Path

    folder = os.environ.get("FACEAPP_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("tester-artifacts")


@pytest.fixture(scope="session")
def playwright():
    """Playwright's sync driver; Chromium missing is a failure, never a skip."""
    from tests.browser import CHROMIUM

    assert os.path.exists(CHROMIUM), (
        f"chromium is not installed at {CHROMIUM}: install Debian's `chromium` package "
        "(CI does; FACEAPP_CHROMIUM names another binary)"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright):
    """One headless Chromium for the session's browser tests (each opens its own pages)."""
    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


def pytest_terminal_summary(terminalreporter):
    """The hostile-input report: the worst memory and CPU cost of any input measured."""
    from tests.costs import summary_lines

    lines = summary_lines()
    if lines:
        terminalreporter.section("costs of hostile inputs")
        for line in lines:
            terminalreporter.write_line(line)
