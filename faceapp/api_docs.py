"""Swagger UI at /api/docs, for trying requests in a browser, served offline.

Swagger UI's files come from the flask-swagger-ui package (its ``dist`` folder, a packaged copy
of npm's swagger-ui-dist), never from a CDN. The page has no inline script, so it runs under a
strict Content-Security-Policy: ``static/api-docs.js`` starts Swagger UI on ``/api/openapi.json``.
Neither the page nor the document needs a key; with API_KEYS set the operations do, so the page
takes one (kept in the tab's sessionStorage) and sends it with every request it makes. Until it
has one, the page explains the key above the operations. Validate and analyze come
with request examples that run as they are (faceapp/openapi.py, ``request_examples``).
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, abort, render_template, send_from_directory

from faceapp import access
from faceapp.security import SWAGGER_UI_POLICY

bp = Blueprint("api_docs", __name__, url_prefix="/api/docs")

ASSETS = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "VERSION"}


def swagger_ui_folder() -> str:
    """The packaged Swagger UI files (flask-swagger-ui's dist folder)."""
    import flask_swagger_ui

    return os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")


@bp.get("")
def page() -> Response:
    """The Swagger UI page for this service's OpenAPI document."""
    page = render_template("api_docs/index.html", keys_required=access.keys_required())
    response = Response(page)
    response.headers["Content-Security-Policy"] = SWAGGER_UI_POLICY
    return response


@bp.get("/<name>")
def asset(name: str) -> Response:
    """One of Swagger UI's own files (a fixed list; anything else is 404)."""
    if name not in ASSETS:
        abort(404)
    response = send_from_directory(swagger_ui_folder(), name, max_age=3600)
    if name in ("LICENSE", "VERSION"):
        response.mimetype = "text/plain"
    return response
