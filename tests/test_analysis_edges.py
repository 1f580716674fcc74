"""The analyzer as a Flask extension: given the app at construction, never used with a model
it was not built for, and an analysis of no regions answers no faces."""

from __future__ import annotations

import copy

import pytest
from flask import Flask

from faceapp import analysis, face_models
from faceapp.attributes import load_attribute_set
from tests.conftest import ADMIN


@pytest.fixture
def ready(app, client):
    """The app with its model loaded (the ready hook has built the analyzer)."""
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    return app


def test_the_extension_takes_the_app_at_construction(tmp_path):
    app = Flask(__name__)
    app.config["MODELS_DIR"] = str(tmp_path / "models")
    face_models.ModelHolder(app)
    extension = analysis.Analyzers(app)
    with app.app_context():
        assert extension.attribute_set().names() == load_attribute_set().names()
        assert extension.peek() is None  # set up, the model not loaded yet


def test_an_analyzer_is_never_used_with_a_model_it_was_not_built_for(ready):
    slot = ready.extensions[analysis.EXTENSION_KEY]
    built = slot.analyzer
    with ready.app_context():
        assert analysis.analyzer() is built
        stale = copy.copy(built)
        stale.model = copy.copy(built.model)  # built for other weights than the loaded ones
        slot.analyzer = stale
        with pytest.raises(RuntimeError, match="never built"):
            analysis.analyzer()
        slot.analyzer = None
        with pytest.raises(RuntimeError, match="never built"):
            analysis.analyzer()


def test_analysing_no_regions_answers_no_faces_and_runs_no_job(ready, monkeypatch):
    with ready.app_context():
        scorer = analysis.analyzer()

        def no_job(*args, **kwargs):
            raise AssertionError("a job was queued for nothing")

        monkeypatch.setattr(scorer.engine, "encode", no_job)
        assert scorer.analyze([], [], ["expression"], ["a smiling face"], True) == ([], None)
