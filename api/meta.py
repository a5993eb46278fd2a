"""Health, the OpenAPI document and its browsable page."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from api.openapi import EndpointDoc, docs_page, documented, openapi_document
from api.schemas import HealthAnswer

bp = Blueprint("meta", __name__)


@bp.get("/health")
@documented(EndpointDoc("Liveness: the web process answers", answers={200: HealthAnswer}))
def health() -> Response:
    return jsonify({"ok": True})


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(current_app))


@bp.get("/docs")
def docs() -> Response:
    return Response(docs_page(openapi_document(current_app)), mimetype="text/html")
