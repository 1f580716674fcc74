"""Swagger UI at /api/docs: packaged files, no inline script, strict CSP, offline in chromium."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests.servers import app_env, gunicorn


def test_the_page_and_its_files(config):
    config["API_KEYS"] = "user-key"  # neither the page nor the document needs a key
    from faceapp import create_app

    client = create_app(config).test_client()
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    html = page.get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"https?://", html.split("<noscript>")[0]), "no outside URL on the page"
    assert 'data-openapi-url="/api/openapi.json"' in html
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        with client.get(f"/api/docs/{name}") as asset:
            assert asset.status_code == 200 and len(asset.data) > 500, name
            if name.endswith(".js"):
                assert b"SwaggerUIBundle" in asset.data
    with client.get("/static/api-docs.js") as script:
        assert b"requestInterceptor" in script.data
    missing = client.get("/api/docs/../config.py")
    assert missing.status_code == 404
    assert client.get("/api/docs/oauth2-redirect.html").status_code == 404  # not on the list
    document = client.get("/api/openapi.json")  # public: Swagger UI loads it before a key
    assert document.status_code == 200 and document.get_json()["info"]["title"] == "faceapp"
    assert client.get("/api/attributes").status_code == 401  # the operations still need one


@pytest.mark.slow
def test_swagger_ui_renders_offline_in_chromium(tmp_path, tiny_model_dir, playwright):
    # The session's Playwright driver (tests/conftest.py): a second sync driver in the same
    # process fails once the first has started ("Sync API inside the asyncio loop").
    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    env = app_env(
        str(tmp_path / "instance"), tiny_model_dir, LOAD_MODEL_ON_START="false", API_KEYS="user-key"
    )
    with gunicorn(env, workers=1, log_path=str(tmp_path / "g.log")) as (base, _):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        asked, problems = [], []
        page.on("request", lambda r: asked.append(r.url))
        page.on(
            "console",
            lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(str(e)))
        with page.expect_response(lambda r: r.url.endswith("/api/openapi.json")) as doc:
            page.goto(base + "/api/docs")
        assert doc.value.status == 200  # the document needs no key: it loads at once
        # Without a key the page explains the key above the operations.
        page.wait_for_selector("#api-key-needed", state="visible")
        assert "needs an API key" in page.inner_text("#api-key-needed")
        page.wait_for_selector(".swagger-ui .info .title")
        assert "faceapp" in page.inner_text(".swagger-ui .info .title")
        assert "Failed to load" not in page.inner_text("body")
        page.wait_for_selector(".opblock-summary-path")
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/api/validate" in " ".join(paths) and len(paths) >= 10
        # A wrong key is refused by the first operation tried, and said so; the right one works.
        attributes = page.locator("#operations-images-get_attributes")
        attributes.locator(".opblock-summary-control").click()
        attributes.locator("button.execute").wait_for()
        page.fill("#api-key-value", "wrong-key")
        page.click("#api-key button[type=submit]")
        with page.expect_response(lambda r: r.url.endswith("/api/attributes")) as tried:
            attributes.locator("button.execute").click()
        assert tried.value.status == 401
        page.wait_for_selector("#api-key-refused", state="visible")
        page.fill("#api-key-value", "user-key")
        page.click("#api-key button[type=submit]")
        page.wait_for_selector("#api-key-needed", state="hidden")
        with page.expect_response(lambda r: r.url.endswith("/api/attributes")) as tried:
            attributes.locator("button.execute").click()
        assert tried.value.status == 200
        # Try a request from the page: GET /api/health through Swagger UI's own client.
        block = page.locator("#operations-probes-get_health")
        block.locator(".opblock-summary-control").click()
        block.locator("button.execute").wait_for()
        with page.expect_response(lambda r: "/api/health" in r.url) as health:
            block.locator("button.execute").click()
        assert health.value.status == 200
        block.locator(".live-responses-table").wait_for()
        assert "x-faceapp-version" in block.inner_text().lower()
        # validate and analyze run as delivered: a real example, JSON, no format=yaml.
        for operation, path in [
            ("post_validate", "/api/validate"),
            ("post_analyze", "/api/analyze"),
        ]:
            block = page.locator(f"#operations-images-{operation}")
            block.locator(".opblock-summary-control").click()
            block.locator("button.execute").wait_for()
            body = block.locator(".body-param__text").input_value()
            assert '"image_base64"' in body and '"string"' not in body and "image_url" not in body
            assert block.locator("tr[data-param-name='format'] input").input_value() == ""
            with page.expect_response(lambda r, p=path: r.url.split("?")[0].endswith(p)) as ran:
                block.locator("button.execute").click()
            assert ran.value.status == 200, ran.value.text()[:300]
            assert ran.value.headers["content-type"].startswith("application/json")
        browser.close()
    origins = {urlsplit(url).netloc for url in asked if not url.startswith("data:")}
    assert origins == {urlsplit(base).netloc}, f"the page reached outside: {origins}"
    csp = [p for p in problems if "Content Security Policy" in p]
    assert not csp, csp
