"""Signing in to the tester pages and what surrounds it (issue 19): a fresh session per identity,
no redirect away from /app after it, the recent list's cap, and no rate-limit headers on
ordinary answers."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from faceapp import create_app
from faceapp.errors import FaceappError
from faceapp.store.files import FileStore
from tests.test_tester_access import recent_ids, sign_in

USER = {"X-API-Key": "user-key"}


@pytest.fixture
def keyed(config):
    return create_app({**config, "API_KEYS": "user-key"})


def test_signing_in_starts_a_fresh_session(keyed):
    """Nothing put in a session before sign-in (by the page, or planted by someone who handed
    the browser its cookie) survives into the signed-in session."""
    client = keyed.test_client()
    with client.session_transaction() as session:
        session["planted"] = "before sign-in"
    assert sign_in(client, "user-key").status_code == 303
    with client.session_transaction() as session:
        assert "planted" not in session
        assert set(session) == {"key_id", "sid"}  # who, and the server-side sign-in's id


def test_a_store_error_other_than_an_outage_is_not_taken_for_a_sign_out(keyed, monkeypatch):
    """An outage asks to sign in again; any other error checking a sign-in is that error, not
    a quiet sign-out that would hide it."""
    client = keyed.test_client()
    assert sign_in(client, "user-key").status_code == 303

    def broken(self, session_id):
        raise FaceappError("internal", "the sign-ins cannot be read")

    monkeypatch.setattr(FileStore, "has_session", broken)
    with pytest.raises(FaceappError, match="the sign-ins cannot be read"):
        client.get("/app")  # the pages' error handler meets it again: Flask's own 500


@pytest.mark.parametrize(
    "target",
    [
        "/app\\..\\api\\attributes",  # browsers read a backslash as a slash: /api/attributes
        "/app\\\\evil.example",
        "/app/..\\..\\evil",
    ],
)
def test_a_next_under_app_with_a_backslash_is_not_followed(keyed, target):
    answer = sign_in(keyed.test_client(), "user-key", target)
    assert answer.status_code == 303 and answer.headers["Location"] == "/app"


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 80), (shade, 255 - shade, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_recent_list_shows_at_most_24_images(client):
    for shade in range(25):
        image = {"file": (io.BytesIO(_png(shade)), f"{shade}.png")}
        assert client.post("/api/validate", data=image).status_code == 200
    assert len(recent_ids(client)) == 24


def test_ordinary_answers_carry_no_rate_limit_headers(keyed):
    client = keyed.test_client()
    answers = [
        client.get("/api/attributes", headers=USER),
        client.get("/app", headers=USER),
        client.get("/api/nope", headers=USER),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404]
    for answer in answers:
        names = [name.lower() for name in answer.headers.keys()]
        assert not [n for n in names if re.match(r"x-ratelimit|retry-after", n)], names


def test_an_admin_signed_in_through_the_form_sees_every_upload(keyed, astronaut_jpeg):
    image = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    image_id = keyed.test_client().post("/api/validate", headers=USER, data=image).get_json()
    client = keyed.test_client()
    assert sign_in(client, "admin-key").status_code == 303
    assert recent_ids(client) == [image_id["image_id"]]  # a user key's upload: admins see all


def test_the_image_page_shows_when_each_event_happened(client, astronaut_jpeg):
    answer = client.post("/app", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")})
    page = answer.headers["Location"]
    events = client.get(f"/api{page.removeprefix('/app')}/trace").get_json()["events"]
    text = client.get(page).get_data(as_text=True)
    for event in events:
        shown = event["time"].replace("T", " ").replace("Z", "")
        assert f'<time datetime="{event["time"]}">{shown}</time>' in text
