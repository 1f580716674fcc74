"""API keys: who may call /api and the tester pages (API_KEYS), and who is an admin (ADMIN_KEYS).

Scripts send a key as ``Authorization: Bearer <key>`` or ``X-API-Key``, on /api and on the pages
alike. People sign in to the pages once (/app/login): the session then holds the key's id, a
hash that names the key without revealing it, never the key itself. /api never reads the session,
so a browser's cookie can never call the API for it (that is why /api needs no CSRF token).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from flask import Flask, current_app, g, has_request_context, request, session

from faceapp.errors import FaceappError
from faceapp.extension import Slot

PUBLIC_ENDPOINTS = {"api.health", "api.ready"}  # probes never need a key
# Nor does the API's own description (rate limited, unlike the probes): it holds no secret, and
# Swagger UI (/api/docs) and client generators need it before anyone has typed a key.
KEYLESS_ENDPOINTS = PUBLIC_ENDPOINTS | {"api.openapi_document"}
SESSION_KEY_ID = "key_id"  # the signed session cookie of the tester pages holds this
SESSION_ID = "sid"  # and the id of its sign-in, held in the store until sign-out
SLOT = Slot("faceapp.sign_ins", "faceapp.access.init_app(app, sign_ins)")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the id of the key it carries (None without a valid one), and its role."""

    key_id: str | None = None
    admin: bool = False
    sent_unknown_key: bool = False  # a key was sent, and it is not one this service accepts


def key_id(key: str) -> str:
    """A short, stable name of a key for traces, sessions and rate-limit counts; not the key."""
    return hashlib.sha256(b"faceapp-key\0" + key.encode()).hexdigest()[:20]


def presented_key() -> str | None:
    """The key this request carries (``Authorization: Bearer`` or ``X-API-Key``), if any."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def client_identity() -> str:
    """Whom a request counts against (rate limits, the inference queue's turns): its key when it
    carries a valid one, admin keys included, else its address."""
    caller = current_caller()
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    return f"addr:{request.remote_addr or '-'}"  # after ProxyFix: what the trusted proxy saw


def key_matches(key: str, accepted: Iterable[str]) -> bool:
    """Constant-time comparison against every accepted key (no early exit on a match)."""
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def keys_required() -> bool:
    """Whether this service needs a key (API_KEYS set) for /api and the pages."""
    return bool(current_app.config["API_KEYS"])


def sees_everything() -> bool:
    """Whether this request's caller sees every image, trace and tester run, and whose wipe
    drops them: an admin key, or anyone on a service without API_KEYS (all callers are one).
    Outside a request (the CLI, offline tools) it is the operator: everything."""
    if not has_request_context():
        return True
    return current_caller().admin or not keys_required()


def current_caller() -> Caller:
    """The caller of this request, worked out once per request."""
    if "caller" not in g:
        g.caller = _identify()
    return g.caller


def _identify() -> Caller:
    config = current_app.config
    admins, users = config["ADMIN_KEYS"], config["API_KEYS"]
    key = presented_key()
    if key is not None:
        if key_matches(key, admins):
            return Caller(key_id(key), admin=True)
        if key_matches(key, users):
            return Caller(key_id(key))
        return Caller(sent_unknown_key=True)
    if request.blueprint != "tester" or not config.get("SECRET_KEY"):
        return Caller()  # /api never takes a session cookie as a key
    signed_in = session.get(SESSION_KEY_ID)
    if not isinstance(signed_in, str) or not _session_held():
        return Caller()
    # The session names a key; it counts only while that key is still configured.
    if any(hmac.compare_digest(signed_in, key_id(k)) for k in admins):
        return Caller(signed_in, admin=True)
    if any(hmac.compare_digest(signed_in, key_id(k)) for k in users):
        return Caller(signed_in)
    return Caller()


class SignIns(Protocol):
    """Where sign-ins are held server-side (the store's backend)."""

    def put_session(self, session_id: str, seconds: float) -> None: ...
    def has_session(self, session_id: str) -> bool: ...
    def drop_session(self, session_id: str) -> None: ...


def init_app(app: Flask, sign_ins: Callable[[], SignIns]) -> None:
    """The tester pages hold their sign-ins in `sign_ins()` (faceapp/tester.py: the store)."""
    SLOT.register(app, sign_ins)


def _sign_ins() -> SignIns:
    return SLOT.get()()


def _session_held() -> bool:
    """Whether this browser's sign-in is still held server-side (not signed out, not expired).

    A cookie is only a signed claim: kept from before a sign-out, it would still be valid. The
    store holds each sign-in by a random id, and sign-out drops it there. While the store is
    down no sign-in can be checked: the pages ask to sign in again."""
    sid = session.get(SESSION_ID)
    if not isinstance(sid, str):
        return False
    try:
        return _sign_ins().has_session(sid)
    except ValueError:  # not the shape of a sign-in id (the store checks it): none
        return False
    except FaceappError as exc:
        if exc.code != "store.unavailable":
            raise
        return False


def sign_in(key: str) -> Caller:
    """Check a key typed into the login form and hold its id in the session (401 if unknown);
    the sign-in is held in the store for SESSION_MAX_AGE_SECONDS, or until sign-out."""
    g.pop("caller", None)
    config = current_app.config
    if key_matches(key, config["ADMIN_KEYS"]) or key_matches(key, config["API_KEYS"]):
        sid = secrets.token_urlsafe(24)
        _sign_ins().put_session(sid, float(config["SESSION_MAX_AGE_SECONDS"]))
        session.clear()  # a fresh session for the new identity
        session[SESSION_KEY_ID] = key_id(key)
        session[SESSION_ID] = sid
        return current_caller()
    raise FaceappError("auth.required", "The key typed is not one this service accepts.")


def sign_out() -> None:
    """End this browser's sign-in, in the store too: a copy of the cookie no longer works."""
    sid = session.get(SESSION_ID)
    if isinstance(sid, str):
        with contextlib.suppress(ValueError):  # not a sign-in id: nothing held for it
            _sign_ins().drop_session(sid)
    session.clear()
    g.pop("caller", None)


def check_api_key() -> None:
    """Before every /api request: when API_KEYS is set, a user or admin key is required."""
    if request.endpoint in KEYLESS_ENDPOINTS or not keys_required():
        return
    caller = current_caller()
    if caller.sent_unknown_key:
        raise FaceappError("auth.required", "The key sent is not one this service accepts.")
    if caller.key_id is None:
        raise FaceappError(
            "auth.required", "This API needs a key: send Authorization: Bearer <key>."
        )


def admin_required(view: Callable) -> Callable:
    """Decorate a view that only ADMIN_KEYS holders may call (refused when none are set)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not current_app.config["ADMIN_KEYS"]:
            raise FaceappError(
                "auth.forbidden",
                "Admin operations are disabled on this service: the operator sets ADMIN_KEYS.",
            )
        caller = current_caller()
        if caller.admin:
            return view(*args, **kwargs)
        if caller.key_id is not None:
            raise FaceappError("auth.forbidden", "This key may not run admin operations.")
        if caller.sent_unknown_key:
            raise FaceappError("auth.required", "The key sent is not one this service accepts.")
        raise FaceappError("auth.required", "This operation needs an admin key.")

    return wrapper
