"""Only ``Authorization: Bearer <key>`` carries a key; another scheme never hides X-API-Key."""

from __future__ import annotations

import pytest

from faceapp import create_app
from tests.conftest import ADMIN


@pytest.fixture
def client(config):
    return create_app({**config, "API_KEYS": "user-key"}).test_client()


def status_and_code(client, headers: dict) -> tuple[int, str | None]:
    answer = client.get("/api/attributes", headers=headers)
    body = answer.get_json()
    return answer.status_code, body.get("error", {}).get("code")


@pytest.mark.parametrize(
    "authorization",
    ["Token user-key", "Basic user-key", "user-key", "Bearer", "Bearer  ", "Bearer-user-key"],
)
def test_a_key_under_another_scheme_is_no_key(client, authorization):
    assert status_and_code(client, {"Authorization": authorization}) == (401, "auth.required")


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Token other", "Bearer ", "Negotiate abc"]
)
def test_x_api_key_counts_beside_an_authorization_header_of_another_kind(client, authorization):
    headers = {"Authorization": authorization, "X-API-Key": "user-key"}
    assert status_and_code(client, headers) == (200, None)


@pytest.mark.parametrize("authorization", ["BEARER user-key", "Bearer  user-key "])
def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_key_do_not_count(
    client, authorization
):
    assert status_and_code(client, {"Authorization": authorization}) == (200, None)


# --- admin operations on a service whose API needs no key (API_KEYS empty) ----------------------


@pytest.fixture
def open_client(config):
    return create_app({**config, "API_KEYS": ""}).test_client()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"X-API-Key": " "}]
)
def test_admin_operations_still_need_the_admin_key_when_the_api_is_open(open_client, headers):
    answer = open_client.post("/api/cache/wipe", headers=headers)
    assert (answer.status_code, answer.get_json()["error"]["code"]) == (401, "auth.required")
    assert open_client.get("/api/attributes", headers=headers).status_code == 200
    assert open_client.post("/api/cache/wipe", headers=ADMIN).status_code == 200
