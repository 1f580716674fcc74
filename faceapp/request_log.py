"""Request ids, and log lines that carry them (and the image_id when a request has one).

Nothing a client sends can forge a log line: every faceapp log message and every field of
gunicorn's access log has its control characters escaped (a newline becomes ``\\n``), and keys
never reach a log in clear (gunicorn's Basic-auth user name, key-like query parameters and the
key headers are redacted).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import unquote

from flask import Flask, g, has_request_context, request
from gunicorn.glogging import Logger as GunicornLogger

from faceapp.extension import Slot

SLOT = Slot("faceapp.request_log", "faceapp.request_log.init_app(app)")
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOG_FORMAT = (
    "%(asctime)s %(levelname)s [%(process)d] %(name)s "
    "rid=%(request_id)s img=%(image_id)s %(message)s"
)
# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and direction overrides a
# terminal or log viewer would act on.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Query parameters whose values are never logged (a key sent where no key belongs is still one).
_SECRET_PARAM = re.compile(
    r"key|token|secret|pass|auth|session|sig|bearer|credential", re.IGNORECASE
)
_QUERY_SEPARATOR = re.compile(r"([&;])")  # `;` too: some servers split on it (x=1;apikey=...)
REDACTED = "[redacted]"
_SECRET_HEADERS = {"authorization", "x-api-key", "cookie", "proxy-authorization"}


def escape_controls(text: str) -> str:
    """`text` with each control character written as an escape (``\\n``, ``\\x00``, ``\\u2028``)."""

    def escaped(match: re.Match) -> str:
        char = match.group()
        if char in _NAMED:
            return _NAMED[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROLS.sub(escaped, text)


def redact_query(query: str) -> str:
    """A raw query string with the values of key-like parameters replaced by ``[redacted]``."""
    parts = []
    for part in _QUERY_SEPARATOR.split(query):  # separators are kept, at the odd places
        name, sep, _ = part.partition("=")
        if sep and _SECRET_PARAM.search(unquote(name)):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return "".join(parts)


def redact_uri(uri: str) -> str:
    """A request target with its query string redacted (see :func:`redact_query`)."""
    path, sep, query = uri.partition("?")
    return path + sep + redact_query(query) if sep else path


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in the message; a traceback after it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class AccessLogger(GunicornLogger):
    """gunicorn's logger (``logger_class`` in gunicorn.conf.py) with a safe access log."""

    def atoms(self, resp, req, environ, request_time) -> dict:
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["u"] = "-"  # the Basic-auth user name: faceapp has none, a misplaced key would be it
        atoms["r"] = "{} {} {}".format(
            environ.get("REQUEST_METHOD", "-"),
            redact_uri(environ.get("RAW_URI", "")),
            environ.get("SERVER_PROTOCOL", "-"),
        )
        atoms["q"] = redact_query(environ.get("QUERY_STRING") or "")
        # A page that sent its key in its own URL passes it on in the Referer.
        atoms["f"] = redact_uri(environ.get("HTTP_REFERER", "-"))
        for name in list(atoms):
            atoms[name] = _redacted_atom(name, atoms[name])
        return {
            name: escape_controls(value) if isinstance(value, str) else value
            for name, value in atoms.items()
        }


def _redacted_atom(name: str, value):
    """A ``{header}i`` or ``{environ}e`` atom a custom access_log_format might use, redacted."""
    if not isinstance(value, str) or not name.startswith("{"):
        return value
    field = name[1:-2].lower().replace("-", "_").removeprefix("http_")
    if field.replace("_", "-") in _SECRET_HEADERS:
        return REDACTED
    if field in ("referer", "raw_uri", "request_uri"):
        return redact_uri(value)
    if field == "query_string":
        return redact_query(value)
    return value


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` and ``image_id`` to every record ('-' outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        in_request = has_request_context()
        record.request_id = g.get("request_id", "-") if in_request else "-"
        record.image_id = (g.get("image_id") or "-")[:12] if in_request else "-"
        return True


def init_app(app: Flask) -> None:
    """faceapp's log lines with the request context, and an id for every request (once per app)."""
    SLOT.check_free(app)  # twice, every answer would be logged twice
    configure_logging(app)
    SLOT.register(app, init_request_ids(app))


def configure_logging(app: Flask) -> None:
    """Send faceapp's logs to stderr with the request context, once per process."""
    logger = logging.getLogger("faceapp")
    if not any(getattr(h, "_faceapp", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler._faceapp = True
        handler.setFormatter(EscapingFormatter(LOG_FORMAT))
        handler.addFilter(RequestContextFilter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(app.config.get("LOG_LEVEL", "INFO"))


#: The WSGI environ key set on a request that did work (see :func:`count_as_work`).
WORK_ENVIRON_KEY = "faceapp.did_work"


def count_as_work() -> None:
    """Mark this request as one that did work (stored, validated or analysed an image): only
    these count toward gunicorn's MAX_REQUESTS (gunicorn.conf.py's post_request)."""
    if has_request_context():
        request.environ[WORK_ENVIRON_KEY] = True


def did_work(environ: dict) -> bool:
    """Whether the request of this WSGI environ did work (:func:`count_as_work`)."""
    return bool(environ.get(WORK_ENVIRON_KEY))


def init_request_ids(app: Flask) -> logging.Logger:
    """Give every request an id (the client's if sane) and echo it in ``X-Request-ID``; returns
    the logger of the one line each answer gets."""
    access = logging.getLogger("faceapp.access")

    @app.before_request
    def _assign_request_id() -> None:
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if _SANE_REQUEST_ID.match(sent) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _echo_request_id(response):
        rid = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = rid
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        # The path is escaped twice over: here (a log handler of the operator's own might not
        # be ours) and by EscapingFormatter.
        path = escape_controls(request.path)
        method = escape_controls(request.method)
        access.info("%s %s %s %.1fms", method, path, response.status_code, elapsed)
        return response

    return access
