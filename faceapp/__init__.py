"""faceapp: face detection and CLIP zero-shot face attributes over HTTP.

This module is the app factory, the top of the package's imports: it imports the rest (inside
:func:`create_app`, so that importing faceapp costs nothing), and no module of the package
imports it back (tests/test_architecture.py checks that). The version lives in
faceapp/version.py and is re-exported here.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from faceapp.version import __version__

__all__ = ["PROJECT_ROOT", "__version__", "create_app"]

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask application (Flask's app-factory pattern)."""
    from faceapp import config

    # templates/ and static/ sit at the project root (the design card's layout), not inside the
    # package, so Flask must be told where they are.
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=config.instance_path(PROJECT_ROOT),
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
    )
    try:
        config.load_config(app, test_config)
    except config.SettingError as exc:
        if test_config is not None:
            raise
        # `flask run`, the CLI, a bare WSGI server: one line naming the key, no traceback.
        raise SystemExit(f"Error: {exc}") from None
    if app.config["MAX_FORM_PARTS"] is None:  # derived from what the multipart schemas accept
        from faceapp.schemas import form_parts_allowed

        app.config["MAX_FORM_PARTS"] = form_parts_allowed()
    os.makedirs(app.instance_path, exist_ok=True)

    register_logging(app)
    register_error_handlers(app)
    register_extensions(app)
    register_blueprints(app)
    register_commands(app)
    return app


def register_logging(app: Flask) -> None:
    """Log lines that carry the request's id, and an X-Request-ID on every answer."""
    from faceapp import request_log

    request_log.init_app(app)


def register_error_handlers(app: Flask) -> None:
    """Every failure answered in the JSON envelope, never a traceback (faceapp/errors.py)."""
    from faceapp import errors

    errors.register_error_handlers(app)


def register_extensions(app: Flask) -> None:
    from faceapp import decoding, faces, metrics, security, versioning
    from faceapp.analysis import analyzers
    from faceapp.engine import engine
    from faceapp.face_models import models
    from faceapp.jobs import jobs
    from faceapp.store import store

    security.init_app(app)
    store.init_app(app)
    decoding.init_app(app)  # the worker's decode memory budget
    engine.init_app(app)  # the inference thread: every torch call of a worker runs on it
    models.init_app(app)  # the CLIP model, loaded and warmed on that thread
    analyzers.init_app(app)  # the attribute set now; its label embeddings once the model is ready
    faces.init_app(app)  # the face detector: YuNet, or Haar standing in (and saying so)
    metrics.init_app(app, store=store, models=models)  # reads the store; hooks model readiness
    versioning.init_app(app)
    jobs.init_app(app)  # the Celery app and job records, when there is a Redis


def register_blueprints(app: Flask) -> None:
    from faceapp import api, api_docs
    from faceapp.jobs import api as jobs_api

    app.register_blueprint(api.bp)
    app.register_blueprint(jobs_api.bp)  # /api/jobs
    app.register_blueprint(api_docs.bp)  # Swagger UI at /api/docs
    if app.config["TESTER_ENABLED"]:  # otherwise /app does not exist at all (404)
        from faceapp import tester
        from faceapp.jobs import pages  # noqa: F401 - adds the Jobs page to the tester's blueprint

        tester.init_app(app)


def register_commands(app: Flask) -> None:
    from faceapp import cli
    from faceapp.batch.cli import batch_command
    from faceapp.eval.cli import eval_command
    from faceapp.jobs.worker import worker_command

    app.cli.add_command(cli.models_cli)
    app.cli.add_command(eval_command)
    app.cli.add_command(batch_command)
    app.cli.add_command(worker_command)
