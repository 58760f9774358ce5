"""The cloud app's web layer: dashboard pages, the JSON API under /api/v1, and event streams.

    app = create_app()                                  # config/cloud.yaml (or $FAB_CLOUD_CONFIG)
    app = create_app({"TESTING": True, "CLOUD_CONFIG": cfg, "DATABASE": db})

``test_config`` overrides Flask settings; its special keys: ``CLOUD_CONFIG`` (a
CloudConfig, else loaded from file), ``BACKEND`` (a cloud_app.backend.Backend to use,
closed by its owner), ``DATABASE`` (a cloud_app.db.Database to share, else one is made
from the config's URL), ``MIGRATE`` (apply the migrations and sync the fleet at start;
default True when the app makes its own database).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask, redirect, url_for
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response

from cloud_app.config import CloudConfig, load_config
from cloud_app.db import Database
from cloud_app.backend import Backend
from cloud_app.web import api, auth, pages
from cloud_app.web import api_admin, api_fleet, api_models, api_tasks, openapi, pages_admin, pages_forms, sse  # noqa: F401,E501  (their routes)
from cloud_app.web.errors import register_error_handlers
from cloud_app.web.state import WebState, register_session

log = logging.getLogger(__name__)

csrf = CSRFProtect()


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The Flask application (Flask tutorial style)."""
    app = Flask(__name__.rsplit(".", 1)[0], template_folder="templates", static_folder="static")
    overrides = dict(test_config or {})
    cfg: CloudConfig = overrides.pop("CLOUD_CONFIG", None) or load_config()
    backend: Backend | None = overrides.pop("BACKEND", None)
    db: Database | None = overrides.pop("DATABASE", None)
    migrate = bool(overrides.pop("MIGRATE", db is None))
    owned = backend is None
    if backend is None:
        backend = Backend(cfg, role="web", migrate=migrate, db=db)
    cfg = backend.config

    app.config.update(
        SECRET_KEY=overrides.get("SECRET_KEY") or os.environ.get(cfg.web.secret_key_env) or _ephemeral_key(cfg),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_CHECK_DEFAULT=False,     # checked in auth.check_csrf: not for bearer-token API calls
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
        EVENT_POLL_S=cfg.web.event_poll_s,
        EVENT_KEEPALIVE_S=float(cfg.web.options.get("keepalive_s", 15.0)),
        EVENT_MAX_S=float(cfg.web.options.get("stream_max_s", 300.0)),
    )
    app.config.update(overrides)
    app.extensions["fab"] = WebState(backend=backend, owned=owned)

    csrf.init_app(app)
    app.before_request(api.reject_nul)
    auth.init_app(app)          # before register_session: its teardown (a token's last use) runs after the close
    register_session(app)
    register_error_handlers(app)
    # api_*, sse and openapi put their routes on api.bp when imported, pages_* theirs on pages.bp
    for bp in (auth.bp, pages.bp, api.bp):
        app.register_blueprint(bp)

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("pages.fleet"))

    log.info("web app ready (database %s)", backend.db.engine.url.render_as_string(hide_password=True))
    return app


def _ephemeral_key(cfg: CloudConfig) -> str:
    log.warning("$%s is not set: sessions will not survive a restart", cfg.web.secret_key_env)
    return secrets.token_hex(32)


def close_app(app: Flask) -> None:
    """Close the back end the app made (its queue, bus client, and database unless shared)."""
    state: WebState = app.extensions["fab"]
    if state.owned:
        state.backend.close()
