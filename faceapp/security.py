"""What faceapp does for exposure: security headers, the client's address, and rate limits.

- Every answer (API and pages) carries a strict Content-Security-Policy (unless a view set its
  own), nosniff, DENY framing and no referrer (the /app pages: same-origin, PAGE_HEADERS says
  why); /api and /app answers are ``Cache-Control: no-store``. Every header is set here.
- ``TRUSTED_PROXY_HOPS`` proxies are believed about the client's address (ProxyFix); with 0 the
  client is the socket peer and X-Forwarded-For is ignored.
- /api and the tester pages are rate limited (``RATELIMIT``): per key for a request with a valid
  key (admin keys too, with or without API_KEYS), else per client address. Failed key checks
  are limited per address on their own (``AUTH_FAILURE_LIMIT``). The
  health and ready probes and /static are not limited. The counts live in Redis when the store
  does (so every worker and instance shares them).
- The tester's session cookie is ``Secure`` whenever the request came over HTTPS (directly, or
  through a trusted proxy that said so), ``HttpOnly`` and ``SameSite=Lax``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, request
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse, parse_many
from werkzeug.middleware.proxy_fix import ProxyFix

from faceapp import metrics
from faceapp.access import PUBLIC_ENDPOINTS, client_identity, current_caller, presented_key
from faceapp.errors import SHOWS_PATHS_KEY, FaceappError, error_response
from faceapp.extension import Slot

log = logging.getLogger(__name__)

SLOT = Slot("faceapp.security", "faceapp.security.init_app(app)")

# Nothing inline and nothing from elsewhere: the pages have no inline script, style or style="".
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: The /app pages (the tester and its Jobs pages) differ in one header. Not the API's no-referrer:
#: over HTTPS, Flask-WTF refuses a form post whose Referer is missing or from another origin
#: (WTF_CSRF_SSL_STRICT), so the pages must send their own; other sites still learn nothing.
PAGE_HEADERS = {**SECURITY_HEADERS, "Referrer-Policy": "same-origin"}
#: Swagger UI (/api/docs): its own icons are data: URLs in its stylesheet; nothing else is
#: loosened.
SWAGGER_UI_POLICY = (
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)


@dataclass(frozen=True)
class _Limits:
    limiter: Limiter  # RATELIMIT, per key or address
    failed_keys: Any  # AUTH_FAILURE_LIMIT, per address (a `limits` rate item)


def init_app(app: Flask) -> None:
    """Install the proxy handling, the rate limiter and the security headers on `app`."""
    SLOT.check_free(app)  # a second ProxyFix would believe one proxy hop too many
    hops = int(app.config["TRUSTED_PROXY_HOPS"])
    if hops > 0:
        # Only the address and scheme: nginx sets Host itself, and a forwarded Host or prefix
        # the proxy did not strip would let clients choose them.
        app.wsgi_app = ProxyFix(
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0
        )
    limiter = init_rate_limits(app)
    SLOT.register(app, _Limits(limiter, init_failed_key_limit(app)))
    app.extensions[SHOWS_PATHS_KEY] = lambda: current_caller().admin  # server paths: admins
    app.session_interface = ProxyAwareSessionInterface()
    app.after_request(add_security_headers)


class ProxyAwareSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, marked Secure whenever the request itself was HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def add_security_headers(response: Response) -> Response:
    """Set the security headers a view has not set itself (Swagger UI sets its own CSP); /api and
    /app answers are not cached (the pages show photos of people)."""
    page = _under(request.path, "/app")
    for name, value in (PAGE_HEADERS if page else SECURITY_HEADERS).items():
        response.headers.setdefault(name, value)
    if (page or is_api_request()) and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


def is_api_request() -> bool:
    return _under(request.path, "/api")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def rate_limit_storage_uri(config) -> str:
    """RATELIMIT_STORAGE_URI, else the store's Redis when STORE_URL is redis://, else memory."""
    if config.get("RATELIMIT_STORAGE_URI"):
        return str(config["RATELIMIT_STORAGE_URI"])
    store_url = str(config.get("STORE_URL") or "")
    if store_url.startswith(("redis://", "rediss://")):
        return store_url
    if store_url.startswith("unix://"):  # a Redis socket (faceapp/store/); limits' spelling
        return "redis+" + store_url
    return "memory://"  # named explicitly: Flask-Limiter warns when it has to pick it itself


def _not_limited() -> bool:
    """/api and /app are limited, never the probes (a load balancer polls them) nor /static."""
    limited = is_api_request() or _under(request.path, "/app")
    return not limited or request.endpoint in PUBLIC_ENDPOINTS


def rate_limit_identity() -> str:
    """Whom a request counts against: the key it carries (admin keys too, with or without
    API_KEYS), else its address (after ProxyFix: the peer, or what the proxy saw)."""
    return client_identity()


def init_rate_limits(app: Flask) -> Limiter:
    """One Limiter per app (it keeps per-app state), answering breaches as ``rate.limited``."""
    rate = str(app.config["RATELIMIT"])
    try:
        parse_many(rate)  # a typo fails the start, not every request
    except ValueError as exc:
        raise ValueError(f"RATELIMIT {rate!r} is not a rate such as '120 per minute'") from exc
    limiter = Limiter(
        rate_limit_identity,
        application_limits=[rate],
        application_limits_exempt_when=_not_limited,
        storage_uri=rate_limit_storage_uri(app.config),
        key_prefix="faceapp",
        # Count unrouted /api paths (404, 405) too; Flask-Limiter skips requests without one.
        request_identifier=lambda: request.endpoint or "unrouted",
        headers_enabled=False,  # it would put Retry-After on every answer; 429s get their own
        # The counts live in the store's Redis by default: while it is down, count in this
        # worker's memory instead, and never turn a limiter error into a 500.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )  # RATELIMIT_ENABLED (and Flask-Limiter's other RATELIMIT_* keys) it reads from app.config
    limiter.init_app(app)
    # Flask-Limiter raises its own 429; answer it in the envelope with Retry-After (errors.py
    # would give the envelope but has no way to know when the window ends).
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    return limiter


# -- failed key checks ---------------------------------------------------------------------------


def init_failed_key_limit(app: Flask) -> Any:
    """Count failed key checks per address (AUTH_FAILURE_LIMIT); over it, every request of that
    address that carries a key is 429 until the window ends, whether the key is right or not,
    so guessing learns nothing more. Returns the limit."""
    try:
        limit = parse(str(app.config["AUTH_FAILURE_LIMIT"]))
    except ValueError:
        raise ValueError(
            f"AUTH_FAILURE_LIMIT {app.config['AUTH_FAILURE_LIMIT']!r} is not a rate such as "
            "'10 per minute'"
        ) from None
    app.before_request(refuse_key_guessing)
    app.after_request(count_failed_key_check)
    return limit


def _checks_a_key() -> bool:
    """A request that carries a key (header or sign-in form) to a route that checks it, while
    limits are on (RATELIMIT_ENABLED=false turns this limit off with the others)."""
    if not current_app.config["RATELIMIT_ENABLED"] or request.endpoint in PUBLIC_ENDPOINTS:
        return False
    return presented_key() is not None or (
        request.endpoint == "tester.login" and request.method == "POST"
    )


def _failure_window() -> tuple[Any, str]:
    limiter: Limiter = SLOT.get().limiter
    return limiter.limiter, f"addr:{request.remote_addr or '-'}"


def refuse_key_guessing() -> None:
    """Before a key is checked: 429 once this address has had too many failed checks."""
    if not _checks_a_key():
        return
    limit = SLOT.get().failed_keys
    strategy, address = _failure_window()
    try:
        if strategy.test(limit, "failed-keys", address):
            return
        reset, _ = strategy.get_window_stats(limit, "failed-keys", address)
    except Exception:  # noqa: BLE001 - the counts' Redis is down: check keys as usual
        log.warning("failed-key counts unavailable; not limiting key checks")
        return
    wait = max(1, math.ceil(reset - time.time()))
    error = FaceappError(
        "rate.limited",
        f"Too many failed key checks from this address (the limit is {limit}); "
        f"retry after {wait} s.",
    )
    error.retry_after = wait
    metrics.count_rate_limited()
    raise error


def count_failed_key_check(response: Response) -> Response:
    """After a 401 to a request that carried a key (or the sign-in form): one failure more."""
    if response.status_code == 401 and _checks_a_key():
        strategy, address = _failure_window()
        try:
            strategy.hit(SLOT.get().failed_keys, "failed-keys", address)
        except Exception:  # noqa: BLE001 - as in refuse_key_guessing
            log.warning("failed-key counts unavailable; this failure is not counted")
    return response


def retry_after_seconds() -> int:
    """How long the client of a 429 should wait: until the breached window ends."""
    limiter: Limiter = SLOT.get().limiter
    current = limiter.current_limit
    return max(1, math.ceil(current.reset_at - time.time())) if current else 60


def rate_limited_message(exc: RateLimitExceeded, wait: int) -> str:
    """The words of a 429, for the API's envelope and the tester's page alike."""
    who = "key" if _by_key() else "client"
    limit = exc.description
    return f"Too many requests from this {who} (the limit is {limit}); retry after {wait} s."


def _rate_limited(exc: RateLimitExceeded) -> Response:
    wait = retry_after_seconds()
    response = error_response(FaceappError("rate.limited", rate_limited_message(exc, wait)))
    response.headers["Retry-After"] = str(wait)
    metrics.count_rate_limited()
    return response


def _by_key() -> bool:
    return current_caller().key_id is not None
