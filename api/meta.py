"""Health, the OpenAPI document and its explorer (Swagger UI)."""

from __future__ import annotations

from typing import cast

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.openapi import DOCUMENT_URL, DispatchAPI, explorer_page, operation
from api.schemas import HealthAnswer

bp = APIBlueprint("meta", __name__, abp_tags=[Tag(name="meta")])


@bp.get("/health", **operation("Liveness: the web process answers", answers={200: HealthAnswer}))
def health() -> Response:
    return jsonify({"ok": True})


@bp.get(f"/{DOCUMENT_URL}", doc_ui=False)
def openapi() -> Response:
    return jsonify(cast(DispatchAPI, current_app).api_doc)


@bp.get("/docs", doc_ui=False)
def docs() -> Response:
    return Response(explorer_page(), mimetype="text/html")
