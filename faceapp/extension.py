"""One style for faceapp's Flask extensions, as flask-sqlalchemy-lite's ``_extension.py`` has it.

Each extension (the store, the model holder, the inference engine, metrics, the rate limiter,
jobs, the tester pages...) keeps its state for an app in ``app.extensions`` under one key,
through a :class:`Slot`:

- ``init_app(app)`` registers that state once; a second registration on the same app is a
  RuntimeError (it would replace the state the first one's hooks already hold);
- a use before ``init_app`` is a RuntimeError naming what to call, never a bare KeyError.

Nothing is kept on the extension object itself (never ``self.app = app``), so one object serves
any number of apps, as the tests make them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, has_app_context


@dataclass(frozen=True)
class Slot:
    """Where one extension keeps its state: ``app.extensions[key]``.

    `setup` is what a caller must have run, as the errors name it, e.g.
    ``"faceapp.store.store.init_app(app)"``.
    """

    key: str
    setup: str

    def check_free(self, app: Flask) -> None:
        """RuntimeError if `app` has this extension already (before an init_app does any work)."""
        if self.key in app.extensions:
            raise RuntimeError(
                f"{self.setup} was called twice for the same app: an extension is registered "
                "once per app (create_app does it)"
            )

    def register(self, app: Flask, state: Any) -> Any:
        """Keep `state` for `app`; refuse a second registration on the same app."""
        self.check_free(app)
        app.extensions[self.key] = state
        return state

    def get(self, app: Flask | None = None) -> Any:
        """The state registered for `app` (default: the current app); RuntimeError before."""
        target = app if app is not None else current_app
        try:
            return target.extensions[self.key]
        except KeyError:
            raise RuntimeError(
                f"{self.key} is used before it was registered: call {self.setup} first "
                "(create_app does it)"
            ) from None

    def registered(self, app: Flask | None = None) -> bool:
        """Whether `app` (default: the current app, if any) has this extension registered."""
        if app is None:
            if not has_app_context():
                return False
            app = current_app
        return self.key in app.extensions
