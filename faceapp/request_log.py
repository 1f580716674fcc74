"""Request ids and log lines that carry them (and the image_id when a request has one)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, has_request_context, request

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOG_FORMAT = (
    "%(asctime)s %(levelname)s [%(process)d] %(name)s "
    "rid=%(request_id)s img=%(image_id)s %(message)s"
)


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` and ``image_id`` to every record ('-' outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        in_request = has_request_context()
        record.request_id = g.get("request_id", "-") if in_request else "-"
        record.image_id = (g.get("image_id") or "-")[:12] if in_request else "-"
        return True


def configure_logging(app: Flask) -> None:
    """Send faceapp's logs to stderr with the request context, once per process."""
    logger = logging.getLogger("faceapp")
    if not any(getattr(h, "_faceapp", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler._faceapp = True
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(RequestContextFilter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(app.config.get("LOG_LEVEL", "INFO"))


def init_request_ids(app: Flask) -> None:
    """Give every request an id (the client's if sane) and echo it in ``X-Request-ID``."""
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
        access.info("%s %s %s %.1fms", request.method, request.path, response.status_code, elapsed)
        return response
