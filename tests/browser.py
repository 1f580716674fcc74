"""The tester pages in Chromium: Debian's browser, its arguments, and a tester served by gunicorn.

The fixtures that use these (`artifacts`, `playwright`, `browser`) are in conftest.py.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import requests

from tests.conftest import YUNET_FIXTURE
from tests.servers import gunicorn, wait_until

CHROMIUM = os.environ.get("FACEAPP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
VIEWPORT = {"width": 1280, "height": 900}


@contextmanager
def serve_tester(instance: str, model_dir: str, log_path: str, *, workers: int = 2, **settings):
    """gunicorn serving the pages (FACEAPP_<KEY> for each setting); yields its base URL.

    It waits until every worker's model is ready, unless LOAD_MODEL_ON_START is "false".
    """
    env = {
        "FACEAPP_INSTANCE_PATH": instance,
        "FACEAPP_MODEL_NAME": model_dir,
        "FACEAPP_MODEL_AUTO_PULL": "false",
        "FACEAPP_TESTER_ENABLED": "true",
        **{f"FACEAPP_{key}": value for key, value in settings.items() if key != "PORT"},
    }
    if os.path.isfile(YUNET_FIXTURE):  # the detector users get; without it, the Haar fallback
        env["FACEAPP_DETECTOR_MODEL"] = YUNET_FIXTURE
    with gunicorn(env, workers=workers, log_path=log_path, port=settings.get("PORT")) as (base, _):
        if settings.get("LOAD_MODEL_ON_START") != "false":
            streak = []

            def every_worker_ready() -> bool:
                with requests.Session() as session:  # a new connection: any worker may answer
                    streak.append(session.get(base + "/api/ready", timeout=5).status_code == 200)
                return len(streak) >= 8 and all(streak[-8:])

            wait_until(every_worker_ready, 60, "every worker's model ready")
        yield base


def collect_console_errors(page) -> list[str]:
    """A list that fills with the page's script errors and CSP violations (not 4xx loads)."""
    errors: list[str] = []

    def on_console(message) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors
