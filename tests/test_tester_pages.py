"""The tester pages under /app, through Flask's test client: every page and every error path."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat

import pytest
from PIL import Image
from ruamel.yaml import YAML

from faceapp import create_app
from faceapp.config import instance_secret_key
from faceapp.face_models import models

INLINE_SCRIPT = re.compile(r"<script\b[^>]*>\s*[^<\s]", re.IGNORECASE)  # a script with a body
INLINE_STYLE = re.compile(r"<style\b|\sstyle\s*=", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def upload(client, data: bytes, name: str = "photo.jpg", **fields):
    return client.post("/app", data={"file": (io.BytesIO(data), name), **fields})


def page_of(client, image_bytes: bytes) -> str:
    """Upload and return the image page's URL."""
    answer = upload(client, image_bytes)
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return answer.headers["Location"]


def element_text(html: str, element_id: str) -> str:
    """The text of the <pre> with this id, unescaped."""
    import html as html_lib

    match = re.search(rf'<pre class="code" id="{element_id}">(.*?)</pre>', html, re.DOTALL)
    assert match, f"no #{element_id} in the page"
    return html_lib.unescape(match.group(1))


def assert_html_page(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    assert response.mimetype == "text/html"
    text = response.get_data(as_text=True)
    assert text.startswith("<!doctype html>") and "<title>" in text
    assert '<a class="brand" href="/app">' in text
    assert "Traceback" not in text
    return text


def test_upload_form_has_the_inputs_and_a_csrf_token(client, astronaut_jpeg):
    text = assert_html_page(client.get("/app"), 200)
    assert re.search(
        r'<form class="upload-form" method="post" action="/app" '
        r'enctype="multipart/form-data" data-busy-form>',
        text,
    )
    for name in ("file", "image_url", "wipe_cache"):
        assert f'name="{name}"' in text
    assert CSRF_FIELD.search(text)
    assert "No images stored yet." in text


def test_a_post_without_the_csrf_token_is_refused_in_html(config, astronaut_jpeg):
    client = create_app({**config, "WTF_CSRF_ENABLED": True}).test_client()
    text = assert_html_page(upload(client, astronaut_jpeg), 400)
    assert "CSRF token is missing" in text
    token = CSRF_FIELD.search(client.get("/app").get_data(as_text=True)).group(1)
    assert upload(client, astronaut_jpeg, csrf_token=token).status_code == 303
    # The JSON API authenticates with keys, not cookies: it needs no token.
    api = client.post("/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
    assert api.status_code == 200


def test_csrf_tokens_hold_across_workers_sharing_the_instance_folder(
    config, astronaut_jpeg, tmp_path, monkeypatch
):
    monkeypatch.setenv("FACEAPP_INSTANCE_PATH", str(tmp_path / "instance"))
    settings = {**config, "WTF_CSRF_ENABLED": True, "SECRET_KEY": None}
    first, second = (create_app(settings).test_client() for _ in range(2))
    token = CSRF_FIELD.search(first.get("/app").get_data(as_text=True)).group(1)
    second.set_cookie("session", first.get_cookie("session").value)
    assert upload(second, astronaut_jpeg, csrf_token=token).status_code == 303

    key_file = tmp_path / "instance" / "secret_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert instance_secret_key(str(tmp_path / "instance")) == key_file.read_text().strip()
    assert [p.name for p in key_file.parent.iterdir() if p.name.startswith(".secret")] == []


def test_upload_redirects_to_the_image_page(client, astronaut_jpeg):
    image_id = hashlib.sha256(astronaut_jpeg).hexdigest()
    assert page_of(client, astronaut_jpeg) == f"/app/images/{image_id}"
    text = assert_html_page(client.get("/app"), 200)  # now listed, with its thumbnail
    assert f'href="/app/images/{image_id}"' in text
    assert f'src="/app/images/{image_id}/thumbnail.jpg"' in text


def test_image_page_before_and_after_analyze(client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    text = assert_html_page(client.get(page), 200)
    validation = json.loads(element_text(text, "validation-json"))
    assert validation == {
        "image_id": page.rsplit("/", 1)[1],
        "valid": True,
        "errors": [],
        "warnings": [],
    }
    assert text.count('class="face-line"') == 1  # the one face, outlined
    assert re.search(r'<svg class="overlay" id="overlay" viewBox="0 0 512 512"', text)
    assert 'id="analysis-none"' in text and 'id="trace"' in text
    assert 'id="analyze-button"' in text

    answer = client.post(page, data={"labels": "an astronaut\n\n a clown \n"})
    assert answer.status_code == 303
    location = answer.headers["Location"]
    assert re.fullmatch(re.escape(page) + r"\?run=[A-Za-z0-9_-]{16,32}#analysis", location)
    text = assert_html_page(client.get(location), 200)
    for element_id in ("validation-json", "analysis-json", "analysis-yaml", "trace"):
        assert f'id="{element_id}"' in text
    analysis = json.loads(element_text(text, "analysis-json"))
    assert YAML(typ="safe", pure=True).load(element_text(text, "analysis-yaml")) == analysis
    face = analysis["faces"][0]
    assert set(face["labels"]) == {"an astronaut", "a clown"}
    # What the POST computed, as it computed it: not a read-back from the cache.
    assert analysis["cached"] is False and "encode" in analysis["timings_ms"]
    assert ">computed<" in text and "read from the cache" not in text
    bars = text.count('class="bar-fill"')
    labels = sum(len(a["scores"]) for a in face["attributes"].values()) + len(face["labels"])
    assert bars == labels and text.count('<tr class="win">') == len(face["attributes"]) + 1
    trace = text[text.index('id="trace"') :]
    for event in ("validated", "analyzed", "cache miss", "an astronaut · a clown"):
        assert event in trace
    assert "cache_hit" not in trace
    assert "Free-text labels" in text and ">an astronaut\na clown</textarea>" in text


def test_viewing_a_run_adds_no_trace_event(client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    run = client.post(page, data={"labels": "a hat", "wipe_cache": "1"}).headers["Location"]
    image_id = page.rsplit("/", 1)[1]
    before = client.get(f"/api/images/{image_id}/trace").get_json()["events"]
    for _ in range(3):  # reloads, back/forward
        assert_html_page(client.get(run), 200)
        assert_html_page(client.get(page), 200)
    assert client.get(f"/api/images/{image_id}/trace").get_json()["events"] == before
    assert [e["event"] for e in before] == ["validated", "wiped", "analyzed"]
    assert before[-1]["labels"] == ["a hat"] and before[-1]["include_embedding"] is False
    # A second Analyze with the same options is a real cache hit, and says so.
    again = client.post(page, data={"labels": "a hat"}).headers["Location"]
    assert again != run
    text = assert_html_page(client.get(again), 200)
    assert json.loads(element_text(text, "analysis-json"))["cached"] is True
    assert ">read from the cache<" in text
    text = assert_html_page(client.get(run), 200)  # the first run still shows what it did
    assert json.loads(element_text(text, "analysis-json"))["cached"] is False


def test_the_old_get_with_analyze_runs_nothing(app, client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    image_id = page.rsplit("/", 1)[1]
    before = client.get(f"/api/images/{image_id}/trace").get_json()["events"]
    text = assert_html_page(client.get(page + "?analyze=1&labels=a+hat&force=1"), 200)
    assert 'id="analysis-none"' in text
    assert client.get(f"/api/images/{image_id}/trace").get_json()["events"] == before
    with app.app_context():
        assert models.peek() is None  # a GET never loads or runs the model


def test_long_labels_never_reach_the_redirect_url(client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    labels = [f"{i} " + "ж" * 190 for i in range(11)]  # 11 Cyrillic labels of ~190 characters
    answer = client.post(page, data={"labels": "\n".join(labels)})
    assert answer.status_code == 303 and len(answer.headers["Location"]) < 200
    text = assert_html_page(client.get(answer.headers["Location"]), 200)
    assert set(json.loads(element_text(text, "analysis-json"))["faces"][0]["labels"]) == set(labels)


@pytest.mark.parametrize("run", ["A" * 16, "bad!", "x" * 100])
def test_an_unknown_or_dropped_run_is_a_page_that_offers_analyze(client, astronaut_jpeg, run):
    page = page_of(client, astronaut_jpeg)
    text = assert_html_page(client.get(f"{page}?run={run}"), 404)
    assert 'id="page-notice"' in text and "no longer stored" in text
    assert 'id="analyze-button"' in text


def test_a_wipe_drops_runs_and_the_page_says_so(client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    run = client.post(page, data={}).headers["Location"]
    client.post(page, data={"wipe_cache": "1"})
    text = assert_html_page(client.get(run), 404)
    assert "no longer stored" in text


def test_an_image_url_is_fetched_like_the_api_does(config, astronaut_jpeg, httpserver):
    httpserver.expect_request("/face.jpg").respond_with_data(
        astronaut_jpeg, content_type="image/jpeg"
    )
    client = create_app({**config, "URL_ALLOW_PRIVATE_NETWORKS": True}).test_client()
    answer = client.post("/app", data={"image_url": httpserver.url_for("/face.jpg")})
    assert answer.headers["Location"].endswith(hashlib.sha256(astronaut_jpeg).hexdigest())
    refused = (
        create_app(config).test_client().post("/app", data={"image_url": "http://127.0.0.1/x"})
    )
    text = assert_html_page(refused, 400)
    assert "url.forbidden" in text and 'value="http://127.0.0.1/x"' in text  # the form, refilled


def test_stored_image_and_thumbnail(client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    png = client.get(page + "/preview.jpg")
    # The stored preview: a JPEG since the store keeps the bytes as received (no PNG re-encode).
    assert png.status_code == 200 and png.mimetype == "image/jpeg"
    assert png.headers["Cache-Control"] == "no-store"  # image data is never cached
    assert Image.open(io.BytesIO(png.data)).size == (512, 512)
    thumb = client.get(page + "/thumbnail.jpg")
    assert thumb.mimetype == "image/jpeg"
    for answer in (png, thumb, client.get(page), client.get("/app"), client.get("/app/nothing")):
        assert answer.headers["Cache-Control"] == "no-store"  # photos of people stay uncached
    assert max(Image.open(io.BytesIO(thumb.data)).size) == 160


def test_a_corrupt_upload_reshows_the_form_with_the_message(client, astronaut_jpeg):
    text = assert_html_page(upload(client, astronaut_jpeg[: len(astronaut_jpeg) // 2]), 400)
    assert 'id="form-error"' in text and "image.corrupt" in text
    assert 'class="upload-form"' in text
    text = assert_html_page(client.post("/app", data={}), 400)
    assert "input.missing" in text and "No image was given" in text
    assert "image_base64" not in text  # the form has no such field


@pytest.mark.parametrize(
    "limits",
    [
        {"MAX_UPLOAD_BYTES": 1000},  # over the image limit: the service refuses it
        {"MAX_UPLOAD_BYTES": 1000, "MAX_CONTENT_LENGTH": 2000},  # over the body limit: Flask does
    ],
)
def test_an_oversized_upload_reshows_the_form(config, astronaut_jpeg, limits):
    client = create_app({**config, **limits}).test_client()
    text = assert_html_page(upload(client, astronaut_jpeg), 413)
    assert 'id="form-error"' in text and "image.too_large" in text and "1000" in text


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/app/images/" + "0" * 64, 404, "image_id.not_found"),
        ("/app/images/not-an-id", 400, "image_id.invalid"),
        ("/app/images/" + "A" * 64, 400, "image_id.invalid"),
        ("/app/images/" + "0" * 64 + "/preview.jpg", 404, "image_id.not_found"),
        ("/app/images/" + "0" * 64 + "/thumbnail.jpg", 404, "image_id.not_found"),
    ],
)
def test_unknown_and_malformed_ids_are_html_pages(client, path, status, code):
    text = assert_html_page(client.get(path), status)
    assert 'id="page-error"' in text and code in text


def test_analyze_of_an_unknown_or_malformed_id_is_an_html_page(client):
    assert "image_id.not_found" in assert_html_page(client.post("/app/images/" + "0" * 64), 404)
    assert "image_id.invalid" in assert_html_page(client.post("/app/images/bad"), 400)


def test_an_unexpected_error_is_a_page_without_details(client, astronaut_jpeg, monkeypatch):
    from faceapp import services

    page = page_of(client, astronaut_jpeg)

    def broken(image_id):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(services, "image_trace", broken)
    text = assert_html_page(client.get(page), 500)
    assert "internal" in text and "secret detail" not in text


def test_too_many_labels_reshow_the_page(client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    labels = "\n".join(f"label {i}" for i in range(33))
    text = assert_html_page(client.post(page, data={"labels": labels}), 400)
    assert "input.invalid" in text and 'id="validation-json"' in text


def test_model_not_ready_banner_and_503_on_analyze(config, astronaut_jpeg):
    app = create_app({**config, "MODEL_NAME": "openai/clip-vit-base-patch32"})
    client = app.test_client()
    text = assert_html_page(client.get("/app"), 200)
    banner = text[text.index('id="banner-model-not-ready"') :]
    assert "not loaded on this worker yet" in banner and "the first Analyze loads it" in banner
    assert 'id="banner-random-weights"' not in text
    page = page_of(client, astronaut_jpeg)
    text = assert_html_page(client.post(page, data={}), 503)
    assert "model.not_ready" in text and "is not in the models folder" in text
    assert 'id="validation-json"' in text  # the image page again, with the message
    banner = text[text.index('id="banner-model-not-ready"') :]
    # The banner never promises what does not happen: Analyze answers 503 until a retry.
    assert "failed to load" in banner and "POST /api/setup" in banner
    assert "loads the model first" not in text and "Analyze loads it" not in banner


def test_random_weights_banner_without_loading_the_model(app, client, astronaut_jpeg):
    text = assert_html_page(client.get("/app"), 200)
    assert 'id="banner-random-weights"' in text
    page = page_of(client, astronaut_jpeg)
    text = assert_html_page(client.get(page + "?run=" + "A" * 16), 404)
    with app.app_context():
        assert models.peek() is None  # rendering never loads the model
    client.post(page, data={})
    text = assert_html_page(client.get(page), 200)
    assert 'id="banner-random-weights"' in text and 'id="banner-model-not-ready"' not in text
    assert "random-clip-tiny" in text


def test_tester_disabled_means_no_pages(config, astronaut_jpeg):
    client = create_app({**config, "TESTER_ENABLED": False}).test_client()
    assert client.get("/app").status_code == 404
    assert client.get("/app/images/" + "0" * 64).status_code == 404
    answer = client.post("/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
    assert answer.status_code == 200


def test_a_photo_without_a_face_offers_force(client, coffee_jpeg):
    page = page_of(client, coffee_jpeg)
    text = assert_html_page(client.get(page), 200)
    assert "not valid" in text and 'id="validation-errors"' in text
    assert "face.none" in text and "No face was found in the image." in text
    text = assert_html_page(client.post(page, data={"labels": "a cup"}), 409)
    assert "image.not_valid" in text and 'id="force-button"' in text
    assert '<input type="hidden" name="labels" value="a cup">' in text
    forced = client.post(page, data={"labels": "a cup", "force": "1"})
    assert forced.status_code == 303 and "?run=" in forced.headers["Location"]
    text = assert_html_page(client.get(forced.headers["Location"]), 200)
    assert "Whole image" in text and 'id="analysis-json"' in text


def test_every_page_has_the_csp_and_nothing_inline(client, astronaut_jpeg, coffee_jpeg):
    page = page_of(client, astronaut_jpeg)
    coffee = page_of(client, coffee_jpeg)
    analyzed = client.post(page, data={"labels": "x", "include_embedding": "1"}).headers["Location"]
    responses = [
        client.get("/app"),
        upload(client, b"not an image"),
        client.get(page),
        client.get(analyzed),
        client.post(coffee, data={}),
        client.get("/app/images/nope"),
        client.get("/app/images/" + "0" * 64),
        client.get(page + "/preview.jpg"),
    ]
    for response in responses:
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        if response.mimetype == "text/html":
            text = response.get_data(as_text=True)
            assert not INLINE_SCRIPT.search(text), INLINE_SCRIPT.search(text).group(0)
            assert not INLINE_STYLE.search(text), INLINE_STYLE.search(text).group(0)
            assert not INLINE_HANDLER.search(text), INLINE_HANDLER.search(text).group(0)
    text = client.get(analyzed).get_data(as_text=True)
    analysis = json.loads(element_text(text, "analysis-json"))
    assert len(analysis["faces"][0]["embedding"]) > 0


# -- issue 8, items 9-12: truthful pages, no dead ends -------------------------------------------


def test_any_worker_shows_a_stored_run_without_its_model(config, astronaut_jpeg):
    worker_a = create_app(config).test_client()
    page = page_of(worker_a, astronaut_jpeg)
    run = worker_a.post(page, data={"labels": "a hat"}).headers["Location"]
    cold = create_app(config)  # a second worker sharing the store, its model never loaded
    text = assert_html_page(cold.test_client().get(run), 200)
    assert "a hat" in json.dumps(json.loads(element_text(text, "analysis-json")))
    assert 'id="banner-model-not-ready"' in text and "Reload" not in text
    with cold.app_context():
        assert models.peek() is None


def test_analyze_shows_that_it_is_working_without_inline_script(client, astronaut_jpeg):
    text = assert_html_page(client.get(page_of(client, astronaut_jpeg)), 200)
    assert re.search(r'<form class="analyze-form"[^>]*data-busy-form', text)
    assert 'data-busy-text="Analyzing…"' in text and 'id="analyze-busy"' in text


@pytest.mark.parametrize(
    "lines, line, words",
    [
        ([f"label {i}" for i in range(33)], 33, "at most 32"),
        (["a hat", "x" * 201, "a cap"], 2, "201 characters long"),
        (["a hat", "", "a cap", "  A Hat "], 4, "repeats line 1"),
    ],
)
def test_a_label_error_keeps_the_text_and_names_the_line(
    client, astronaut_jpeg, lines, line, words
):
    page = page_of(client, astronaut_jpeg)
    typed = "\n".join(lines)
    text = assert_html_page(client.post(page, data={"labels": typed, "force": "1"}), 400)
    error = re.search(r'<p class="field-error" id="labels-error"[^>]*>(.*?)</p>', text, re.S)
    assert error and f"line {line} " in error.group(1) and words in error.group(1)
    assert "input.invalid" in error.group(1)
    assert re.search(rf'data-error-line="{line}">' + re.escape(typed) + "</textarea>", text)
    assert re.search(r'name="force" value="1" checked', text)  # the flags are kept too


def test_duplicate_labels_are_refused_not_scored(client, astronaut_jpeg):
    page = page_of(client, astronaut_jpeg)
    assert client.post(page, data={"labels": "hat\nhat"}).status_code == 400
    assert client.post(page, data={"labels": "hat\ncap"}).status_code == 303


def test_an_expired_form_offers_the_way_back_with_a_fresh_one(config, astronaut_jpeg):
    app = create_app({**config, "WTF_CSRF_ENABLED": True})
    client = app.test_client()
    token = CSRF_FIELD.search(client.get("/app").get_data(as_text=True)).group(1)
    page = upload(client, astronaut_jpeg, csrf_token=token).headers["Location"]
    text = assert_html_page(client.post(page, data={"csrf_token": "expired", "labels": "x"}), 400)
    assert "Reload the page" not in text
    link = re.search(r'<a class="button primary" href="([^"]+)" id="back-link">', text)
    assert link and link.group(1) == page and "fresh form" in text
    fresh = assert_html_page(client.get(link.group(1)), 200)
    token = CSRF_FIELD.search(fresh).group(1)
    assert client.post(page, data={"csrf_token": token}).status_code == 303
    text = assert_html_page(client.post("/app", data={"csrf_token": "expired"}), 400)
    assert 'href="/app" id="back-link"' in text


def test_the_caption_names_the_latest_source_and_a_readable_size(
    config, client, astronaut_jpeg, httpserver
):
    page = page_of(client, astronaut_jpeg)
    text = assert_html_page(client.get(page), 200)
    assert re.search(r"\d+(\.\d)? KiB, last by file <span class=\"source-name\">photo.jpg", text)
    assert "bytes, by" not in text
    httpserver.expect_request("/face.jpg").respond_with_data(
        astronaut_jpeg, content_type="image/jpeg"
    )
    by_url = create_app({**config, "URL_ALLOW_PRIVATE_NETWORKS": True}).test_client()
    url = httpserver.url_for("/face.jpg") + "?token=secret"
    answer = by_url.post("/app", data={"image_url": f"  {url} \n"})  # pasted, with spaces
    assert answer.status_code == 303 and answer.headers["Location"] == page
    text = assert_html_page(client.get(page), 200)
    assert "last by url" in text and "/face.jpg" in text and "secret" not in text


def test_an_unknown_page_under_app_is_a_page(client):
    for path in ("/app/nothing", "/app/images/x/y/z"):
        text = assert_html_page(client.get(path), 404)
        assert "Not found" in text
    answer = client.get("/api/nothing")  # the API keeps its JSON
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "route.not_found"


def test_sizes_are_written_for_people(config, astronaut_jpeg):
    small = create_app({**config, "MAX_UPLOAD_BYTES": 10 * 1024 * 1024, "MAX_CONTENT_LENGTH": 1000})
    text = assert_html_page(upload(small.test_client(), astronaut_jpeg), 413)
    assert "10 MiB" in text and "10485760" not in text


def test_pixel_counts_are_written_for_people():
    from faceapp.decoding import _check_pixels
    from faceapp.errors import FaceappError

    with pytest.raises(FaceappError) as over:
        _check_pixels((8000, 6000), 40_000_000)
    assert over.value.message == (
        "The image is 8000x6000 pixels (48 MP); the largest accepted is 40 MP."
    )
    with pytest.raises(FaceappError) as just_over:  # rounded, both would read "40 MP"
        _check_pixels((40_001, 1000), 40_000_000)
    assert "40,001,000 pixels" in just_over.value.message
    assert "40,000,000 pixels" in just_over.value.message


def test_without_api_keys_the_sign_in_page_says_so_and_lets_anyone_on(client):
    text = assert_html_page(client.get("/app/login"), 200)
    assert "needs no key" in text and 'name="key"' not in text
    answer = client.post("/app/login", data={"key": "anything", "next": "/app/images/x"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/app/images/x"


def test_the_api_the_pages_and_the_jobs_pages_send_the_one_set_of_security_headers(
    client, astronaut_jpeg
):
    """One place sets them all (faceapp/security.py): the pages differ in Referrer-Policy only."""
    from faceapp.security import PAGE_HEADERS, SECURITY_HEADERS

    assert {**SECURITY_HEADERS, "Referrer-Policy": "same-origin"} == PAGE_HEADERS
    page = page_of(client, astronaut_jpeg)
    pages = [
        client.get("/app"),
        client.get(page),
        client.get(page + "/thumbnail.jpg"),
        client.get("/app/jobs"),
        client.get("/app/jobs/" + "0" * 32),  # 404, as a page
        client.get("/app/no-such-page"),  # no route matched: still the pages' headers
        client.get("/app/login"),
    ]
    for answer in pages:
        sent = {name: answer.headers.get(name) for name in PAGE_HEADERS}
        assert sent == PAGE_HEADERS, answer.request.path
        assert answer.headers["Cache-Control"] == "no-store", answer.request.path
    for answer in (client.get("/api/health"), client.get("/api/jobs/" + "0" * 32)):
        sent = {name: answer.headers.get(name) for name in SECURITY_HEADERS}
        assert sent == SECURITY_HEADERS, answer.request.path
        assert answer.headers["Cache-Control"] == "no-store", answer.request.path


def test_the_readme_names_the_referrer_policy_each_part_sends(client):
    """/api sends no-referrer; the pages send same-origin, which Flask-WTF's HTTPS check needs."""
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as fh:
        readme = " ".join(fh.read().split())
    api = client.get("/api/health").headers["Referrer-Policy"]
    pages = client.get("/app").headers["Referrer-Policy"]
    assert (api, pages) == ("no-referrer", "same-origin")
    assert f"`Referrer-Policy: {api}`, except the `/app` pages" in readme
    assert f"which send `Referrer-Policy: {pages}`: over HTTPS, Flask-WTF" in readme


@pytest.mark.parametrize(("size", "words"), [((8, 8), "bytes"), ((400, 300), "KiB")])
def test_the_image_caption_gives_the_size_as_the_other_pages_do(client, size, words):
    from faceapp.errors import human_bytes

    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, "PNG")
    data = buffer.getvalue()
    text = client.get(page_of(client, data)).get_data(as_text=True)
    assert f", {human_bytes(len(data))}, last by" in text and words in human_bytes(len(data))
    assert "Bytes" not in text and "kB" not in text


def test_a_validation_made_under_other_settings_says_so_and_validates_again(config, astronaut_jpeg):
    """The page of an image validated under other rules shows the old answer as such, with
    Validate again; that judges the stored image by the current rules (MIN_FACE_PX here)."""
    url = page_of(create_app(config).test_client(), astronaut_jpeg)
    image_id = url.rsplit("/", 1)[1]
    current = assert_html_page(create_app(config).test_client().get(url), 200)
    assert 'id="validation-stale"' not in current and "revalidate-button" not in current

    strict = create_app(dict(config, MIN_FACE_PX=4000)).test_client()
    text = assert_html_page(strict.get(url), 200)
    assert 'id="validation-stale"' in text and "under other validation settings" in text
    assert "badge-ok badge-big" in text  # the old answer, shown as it was judged
    assert f'action="/app/images/{image_id}/validate"' in text

    answer = strict.post(f"/app/images/{image_id}/validate")
    assert answer.status_code == 303 and answer.headers["Location"] == url
    text = assert_html_page(strict.get(url), 200)
    assert 'id="validation-stale"' not in text and "face.too_small" in text
    events = strict.get(f"/api/images/{image_id}/trace").get_json()["events"]
    assert [event["event"] for event in events] == ["validated", "wiped", "validated"]
    assert strict.post(f"/app/images/{image_id}/validate").status_code == 303
    again = strict.get(f"/api/images/{image_id}/trace").get_json()["events"]
    assert len(again) == 3  # current already: nothing redone
