"""The tester pages in a real browser (Debian's chromium through Playwright) against real gunicorn.

Screenshots go to $FACEAPP_ARTIFACTS (else a temporary folder); FACEAPP_UPDATE_SCREENSHOT=1 also
writes the result page to docs/tester-result.png. Chromium missing is a failure, never a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, collect_console_errors, serve_tester
from tests.servers import ROOT

pytestmark = pytest.mark.slow

DOCS_SCREENSHOT = Path(ROOT) / "docs" / "tester-result.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, artifacts):
    """Two gunicorn workers, each with its model loaded (so the pages never say 'not ready')."""
    instance = str(tmp_path_factory.mktemp("tester-instance"))
    with serve_tester(instance, tiny_model_dir, str(artifacts / "gunicorn.log")) as base:
        yield base


def save_docs_screenshot(source: Path) -> None:
    """The result page for the docs, as a 256-colour PNG to keep the repository small."""
    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    with Image.open(source) as image:
        small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        small.save(DOCS_SCREENSHOT, optimize=True)


def test_upload_analyze_and_a_corrupt_file_in_chromium(
    served, browser, artifacts, tmp_path, astronaut_jpeg, coffee_jpeg
):
    from playwright.sync_api import expect

    base = served
    image_id = hashlib.sha256(astronaut_jpeg).hexdigest()
    photo, half, cup = tmp_path / "astronaut.jpg", tmp_path / "half.jpg", tmp_path / "cup.jpg"
    photo.write_bytes(astronaut_jpeg)
    cup.write_bytes(coffee_jpeg)
    half.write_bytes(astronaut_jpeg[: len(astronaut_jpeg) // 2])

    page = browser.new_page(viewport=VIEWPORT)
    console_errors = collect_console_errors(page)  # CSP violations and script errors

    page.goto(base + "/app")
    expect(page).to_have_title(re.compile("faceapp tester"))
    page.set_input_files("#file", str(photo))
    page.click("#validate-button")
    page.wait_for_url(f"{base}/app/images/{image_id}")

    # The preview has loaded and the overlay covers it exactly, with one face outlined.
    page.wait_for_function(
        "() => { const img = document.getElementById('preview');"
        " return img.complete && img.naturalWidth > 0; }"
    )
    assert page.locator("#overlay .face-line").count() == 1
    image_box = page.locator("#preview").bounding_box()
    overlay_box = page.locator("#overlay").bounding_box()
    assert all(abs(image_box[k] - overlay_box[k]) < 1 for k in ("x", "y", "width", "height"))
    face_box = page.locator("#overlay .face-line").bounding_box()
    assert image_box["x"] < face_box["x"] < image_box["x"] + image_box["width"] - face_box["width"]
    assert image_id in page.inner_text("#validation-json")
    page.screenshot(path=str(artifacts / "tester-image.png"), full_page=True)

    page.fill("#labels", "an astronaut\na person in a clown costume")
    page.click("#analyze-button")
    page.wait_for_url(re.compile(r"\?run=[A-Za-z0-9_-]+#analysis$"))
    expect(page.locator("#analysis-json")).to_be_visible()
    analysis = json.loads(page.inner_text("#analysis-json"))
    assert analysis["image_id"] == image_id and len(analysis["faces"]) == 1
    assert analysis["cached"] is False and page.inner_text("#analysis-status") == "computed"
    rows = page.locator("#trace tbody tr").count()
    page.reload()  # a reload shows the same run and adds nothing to the trace
    page.go_back()
    page.go_forward()
    assert page.locator("#trace tbody tr").count() == rows
    assert json.loads(page.inner_text("#analysis-json")) == analysis
    assert page.locator("svg.bar .bar-fill").count() > 0
    assert page.locator("tr.win").count() == len(analysis["faces"][0]["attributes"]) + 1
    page.click("[data-tab='panel-yaml']")  # tester.js: tabs
    expect(page.locator("#analysis-yaml")).to_be_visible()
    expect(page.locator("#analysis-json")).to_be_hidden()
    assert f"image_id: {image_id}" in page.inner_text("#analysis-yaml")
    page.click("[data-tab='panel-json']")
    trace = page.inner_text("#trace")
    assert "validated" in trace and "analyzed" in trace
    result = artifacts / "tester-result.png"
    page.screenshot(path=str(result), full_page=True)
    if os.environ.get("FACEAPP_UPDATE_SCREENSHOT") == "1":
        save_docs_screenshot(result)

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than it
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artifacts / "tester-result-phone.png"), full_page=True)
    page.set_viewport_size(VIEWPORT)

    page.goto(base + "/app")
    expect(page.locator(f"a[href='/app/images/{image_id}']").first).to_be_visible()
    page.set_input_files("#file", str(half))
    page.click("#validate-button")
    expect(page.locator("#form-error")).to_contain_text("image.corrupt")
    page.screenshot(path=str(artifacts / "tester-error.png"), full_page=True)

    # No face: Analyze is refused (409) with an offer to force it, which then works.
    page.set_input_files("#file", str(cup))
    page.click("#validate-button")
    expect(page.locator("#validation-errors")).to_contain_text("face.none")
    assert page.locator("#overlay .face-line").count() == 0
    page.click("#analyze-button")
    expect(page.locator("#page-error")).to_contain_text("image.not_valid")
    page.screenshot(path=str(artifacts / "tester-not-valid.png"), full_page=True)
    page.click("#force-button")
    expect(page.locator("#analysis-json")).to_be_visible()
    expect(page.locator(".face-card h3")).to_contain_text("Whole image")

    assert console_errors == []
    page.close()


def test_a_server_without_the_tester_has_no_pages(config):
    from faceapp import create_app

    client = create_app({**config, "TESTER_ENABLED": False}).test_client()
    assert client.get("/app").status_code == 404


def test_the_docs_screenshot_stays_small():
    assert DOCS_SCREENSHOT.stat().st_size < 300 * 1024


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, tiny_model_dir, artifacts):
    """One gunicorn worker that needs a key (API_KEYS), its model loaded."""
    instance = str(tmp_path_factory.mktemp("keyed-instance"))
    log = str(artifacts / "gunicorn-keyed.log")
    with serve_tester(instance, tiny_model_dir, log, workers=1, API_KEYS="qa-key") as base:
        yield base


def test_sign_in_busy_button_label_errors_and_copy_over_http_in_chromium(
    keyed_server, playwright, tmp_path, artifacts, astronaut_jpeg
):
    """Over plain http by host name (no secure context, so no navigator.clipboard)."""
    from playwright.sync_api import expect

    port = keyed_server.rsplit(":", 1)[1]
    base = f"http://faceapp.test:{port}"
    image_id = hashlib.sha256(astronaut_jpeg).hexdigest()
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP faceapp.test 127.0.0.1"]
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    try:
        page = chromium.new_page(viewport=VIEWPORT)
        console_errors = collect_console_errors(page)

        page.goto(base + "/app")  # no key yet: the sign-in form
        page.wait_for_url(re.compile(r"/app/login\?next=/app$"))
        page.fill("#key", "wrong")
        page.click("#login-button")
        expect(page.locator("#form-error")).to_contain_text("not one this service accepts")
        page.fill("#key", "qa-key")
        page.click("#login-button")
        page.wait_for_url(base + "/app")
        expect(page.locator("#recent-none")).to_contain_text("No images sent with this key")
        expect(page.locator("#signed-in")).to_be_visible()

        page.set_input_files("#file", str(photo))
        page.click("#validate-button")
        page.wait_for_url(f"{base}/app/images/{image_id}")
        assert page.evaluate("window.isSecureContext") is False

        # A repeated label: the text stays, the message names line 3 and selects it.
        typed = "a hat\na cap\nA HAT"
        page.fill("#labels", typed)
        page.click("#analyze-button")
        expect(page.locator("#labels-error")).to_contain_text("line 3 repeats line 1")
        assert page.input_value("#labels") == typed
        selected = page.evaluate(
            "() => { const t = document.getElementById('labels');"
            " return t.value.slice(t.selectionStart, t.selectionEnd); }"
        )
        assert selected == "A HAT"

        # Analyze disables its button and says it is working. The answer is held back here
        # (a listener after tester.js's cancels this one submission) to see the page meanwhile.
        page.fill("#labels", "a hat\na cap")
        page.evaluate(
            "document.querySelector('form[data-busy-form]')"
            ".addEventListener('submit', (e) => e.preventDefault(), {once: true})"
        )
        page.click("#analyze-button")
        expect(page.locator("#analyze-button")).to_be_disabled()
        expect(page.locator("#analyze-button")).to_have_text("Analyzing…")
        expect(page.locator("#analyze-busy")).to_be_visible()
        page.evaluate("document.querySelector('form[data-busy-form]').submit()")
        page.wait_for_url(re.compile(r"\?run="))
        expect(page.locator("#analyze-button")).to_be_enabled()
        expect(page.locator("#analysis-options")).to_contain_text("a hat · a cap")

        # Copy without navigator.clipboard: the text is selected (and copied where allowed).
        button = page.locator("button[data-copy='validation-json']")
        expect(button).to_be_visible()
        button.click()
        expect(button).to_have_text(re.compile("Copied|Selected: press Ctrl\\+C"))
        assert image_id in page.evaluate("window.getSelection().toString()")
        page.screenshot(path=str(artifacts / "tester-keyed.png"), full_page=True)

        page.click("#logout-button")
        page.wait_for_url(re.compile(r"/app/login$"))
        page.goto(f"{base}/app/images/{image_id}/preview.jpg")
        assert "/app/login" in page.url  # signed out: the image is no longer served
        assert console_errors == []
    finally:
        chromium.close()
