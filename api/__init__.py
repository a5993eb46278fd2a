"""The REST API: a Flask app factory with one blueprint per resource under /api/v1."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from flask_openapi3 import APIBlueprint

from api import auth, devices, drivers, jobs, meta, ops, pages
from api.errors import register_error_handlers
from api.monitoring import register_monitoring
from api.openapi import dispatch_api, explorer_files
from settings import settings
from workers.logs import configure_logging

API_PREFIX = "/api/v1"


def secure_headers(response: Response) -> Response:
    """On every answer, errors included: browsers must not sniff a JSON body into something
    they would run (`nosniff`), and no browser or proxy cache may keep an answer (answers
    carry bearer tokens, from register and login, and people's jobs and positions) unless
    the view chose its own `Cache-Control`."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    app = dispatch_api(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, **(overrides or {}))
    app.json.sort_keys = False  # type: ignore[attr-defined]  # answers keep the contract's order
    v1 = APIBlueprint("v1", __name__, url_prefix=API_PREFIX)
    for module in (auth, devices, drivers, jobs, meta, ops):
        v1.register_api(module.bp)
    app.register_api(v1)
    app.register_blueprint(explorer_files(API_PREFIX))
    app.register_blueprint(pages.bp)
    register_error_handlers(app)
    register_monitoring(app)
    app.after_request(secure_headers)
    configure_logging()
    return app
