"""One extension style (faceapp/extension.py, as flask-sqlalchemy-lite's): every extension
registers itself once per app, refuses a second registration, and a use before init_app says
what to call instead of failing on a missing key."""

from __future__ import annotations

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from faceapp import access, decoding, faces, metrics, request_log, security, tester
from faceapp.analysis import analyzers
from faceapp.engine import engine
from faceapp.extension import Slot
from faceapp.face_models import models
from faceapp.jobs import jobs
from faceapp.store import store

# Each extension's init_app, called again on an app create_app already set up.
SECOND_REGISTRATIONS = {
    "store": lambda app: store.init_app(app),
    "decoding": lambda app: decoding.init_app(app),
    "engine": lambda app: engine.init_app(app),
    "models": lambda app: models.init_app(app),
    "analyzers": lambda app: analyzers.init_app(app),
    "faces": lambda app: faces.init_app(app),
    "metrics": lambda app: metrics.init_app(app, store=store, models=models),
    "security": lambda app: security.init_app(app),
    "jobs": lambda app: jobs.init_app(app),
    "request_log": lambda app: request_log.init_app(app),
    "tester": lambda app: tester.init_app(app),
    "access": lambda app: access.init_app(app, lambda: store.backend),
}


@pytest.mark.parametrize("name", sorted(SECOND_REGISTRATIONS))
def test_a_second_registration_on_the_same_app_is_refused(app, name):
    before = dict(app.extensions)
    with pytest.raises(RuntimeError, match=r"init_app\(app.*\) was called twice for the same app"):
        SECOND_REGISTRATIONS[name](app)
    assert app.extensions == before  # the first registration's state is kept as it was


def test_a_second_registration_is_refused_before_any_work(config):
    """Refused before it does anything: a second ProxyFix would believe one hop too many."""
    from faceapp import create_app

    app = create_app({**config, "TRUSTED_PROXY_HOPS": 1})
    proxy_fix = app.wsgi_app
    with pytest.raises(RuntimeError, match="twice"):
        security.init_app(app)
    assert app.wsgi_app is proxy_fix and not isinstance(proxy_fix.app, ProxyFix)


# A use of each extension before its init_app, and the call the error must name.
USES_BEFORE_INIT = {
    "store": (lambda app: store.backend, "faceapp.store.store.init_app(app)"),
    "decoding": (decoding.budget_for, "faceapp.decoding.init_app(app)"),
    "engine": (lambda app: engine.get(), "faceapp.engine.engine.init_app(app)"),
    "models": (lambda app: models.get(), "faceapp.face_models.models.init_app(app)"),
    "analyzers": (lambda app: analyzers.attribute_set(), "analyzers.init_app(app)"),
    "faces": (lambda app: faces.detector(), "faceapp.faces.init_app(app)"),
    "metrics": (
        lambda app: metrics.add_scrape_collector(app, list),
        "faceapp.metrics.init_app(app, store=..., models=...)",
    ),
    "security": (lambda app: security.retry_after_seconds(), "faceapp.security.init_app(app)"),
    "jobs": (jobs.available, "faceapp.jobs.jobs.init_app(app)"),
    "access": (lambda app: access.SLOT.get(app), "faceapp.access.init_app(app, sign_ins)"),
}


@pytest.mark.parametrize("name", sorted(USES_BEFORE_INIT))
def test_a_use_before_init_app_names_what_to_call(name):
    use, setup = USES_BEFORE_INIT[name]
    bare = Flask("bare")
    with bare.app_context(), pytest.raises(RuntimeError) as raised:
        use(bare)
    message = str(raised.value)
    assert "used before it was registered" in message and setup in message


def test_metrics_hooks_stay_quiet_when_metrics_are_off(config):
    """Off is a registration too (so a second one is refused), and the hooks do nothing."""
    from faceapp import create_app

    app = create_app({**config, "METRICS_ENABLED": False})
    assert metrics.SLOT.get(app) is None
    with app.app_context():
        metrics.count_evicted(3)
        metrics.add_scrape_collector(app, list)
    with pytest.raises(RuntimeError, match="twice"):
        metrics.init_app(app, store=store, models=models)


def test_a_slot_keeps_one_state_per_app():
    slot = Slot("faceapp.example", "faceapp.example.init_app(app)")
    first, second = Flask("first"), Flask("second")
    slot.register(first, "one")
    slot.register(second, "two")
    assert (slot.get(first), slot.get(second)) == ("one", "two")
    with first.app_context():
        assert slot.get() == "one" and slot.registered()
    assert not slot.registered()  # no app at all: nothing is registered
