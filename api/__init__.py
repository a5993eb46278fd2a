"""The REST API: a Flask app factory with one blueprint per resource under /api/v1."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask

from api import auth, devices, drivers, jobs, meta
from api.errors import register_error_handlers
from settings import settings

API_PREFIX = "/api/v1"


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, **(overrides or {}))
    app.json.sort_keys = False  # type: ignore[attr-defined]  # answers keep the contract's order
    v1 = Blueprint("v1", __name__, url_prefix=API_PREFIX)
    for module in (auth, devices, drivers, jobs, meta):
        v1.register_blueprint(module.bp)
    app.register_blueprint(v1)
    register_error_handlers(app)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return app
