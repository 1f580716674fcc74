"""API keys: who may call /api (API_KEYS) and who may run admin operations (ADMIN_KEYS)."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Iterable

from flask import current_app, request

from faceapp.errors import FaceappError

PUBLIC_ENDPOINTS = {"api.health", "api.ready"}  # probes never need a key


def presented_key() -> str | None:
    """The key this request carries (``Authorization: Bearer`` or ``X-API-Key``), if any."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def key_matches(key: str, accepted: Iterable[str]) -> bool:
    """Constant-time comparison against every accepted key (no early exit on a match)."""
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def check_api_key() -> None:
    """Before every /api request: when API_KEYS is set, a user or admin key is required."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    accepted = current_app.config["API_KEYS"]
    if not accepted:
        return
    key = presented_key()
    if key is None:
        raise FaceappError(
            "auth.required", "This API needs a key: send Authorization: Bearer <key>."
        )
    if not key_matches(key, [*accepted, *current_app.config["ADMIN_KEYS"]]):
        raise FaceappError("auth.required", "The key sent is not one this service accepts.")


def admin_required(view: Callable) -> Callable:
    """Decorate a view that only ADMIN_KEYS holders may call (refused when none are set)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        admins = current_app.config["ADMIN_KEYS"]
        key = presented_key()
        if not admins:
            raise FaceappError(
                "auth.forbidden",
                "Admin operations are disabled on this service: the operator sets ADMIN_KEYS.",
            )
        if key is None:
            raise FaceappError("auth.required", "This operation needs an admin key.")
        if not key_matches(key, admins):
            if key_matches(key, current_app.config["API_KEYS"]):
                raise FaceappError("auth.forbidden", "This key may not run admin operations.")
            raise FaceappError("auth.required", "The key sent is not one this service accepts.")
        return view(*args, **kwargs)

    return wrapper
