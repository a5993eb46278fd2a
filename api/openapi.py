"""The OpenAPI 3.1 document and its explorer, built by flask-openapi3 from the pydantic models
that validate each request: a view's `body`, `query`, `header` and `path` parameters are
both what is validated and what the document shows, so the two cannot drift apart.

`operation()` states, in the contract's terms, what a route answers and who may call it; the
explorer is Swagger UI, served from the files flask-openapi3-swagger ships, never a CDN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_openapi3_swagger
from flask import Blueprint, render_template_string
from flask_openapi3 import OpenAPI, Server
from flask_openapi3.models import Info
from flask_openapi3_swagger.templates import swagger_html_string
from pydantic import BaseModel

from api.errors import STATUS_BY_CODE
from api.schemas import ErrorBody
from api.validation import ROLES_EXTENSION, JsonBodyRequest, validation_failed

BEARER = "bearer"
DOCUMENT_URL = "openapi.json"
# Swagger UI's page refers to its files as `swagger/…`, relative to the page.
EXPLORER_FILES = Path(flask_openapi3_swagger.__file__).parent / "templates" / "swagger"


class DispatchAPI(OpenAPI):
    """The Flask app, with the document flask-openapi3 builds. Every request's JSON body is
    read the contract's way (JsonBodyRequest)."""

    request_class = JsonBodyRequest

    def generate_spec_json(self) -> None:
        """flask-openapi3 gives every operation that names no 422 a generic one (a list of
        its error model); ours answer a 422 only where they take input, and name it there
        (`operation(..., errors=("validation_error",))`), so the generic ones go."""
        super().generate_spec_json()
        for operations in self.spec_json["paths"].values():
            for op in operations.values():
                generic = op["responses"].get("422", {}).get("content", {})
                if generic.get("application/json", {}).get("schema", {}).get("type") == "array":
                    del op["responses"]["422"]


def dispatch_api(import_name: str) -> DispatchAPI:
    return DispatchAPI(
        import_name,
        info=Info(title="Dispatch API", version="1.0.0"),
        servers=[Server(url="/")],
        security_schemes={BEARER: {"type": "http", "scheme": "bearer"}},
        validation_error_model=ErrorBody,
        validation_error_callback=validation_failed,
        doc_ui=False,  # the document and the explorer are served by api.meta, under /api/v1
    )


def operation(
    summary: str,
    answers: dict[int, type[BaseModel] | None],
    errors: tuple[str, ...] = (),
    roles: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The route decorator's documentation: its `answers` by status, the error codes it
    answers in the one error shape, and who may call it: `roles` None for anyone, () for
    any signed-in user (a 401 without a token), else those roles (a 403 for the others)."""
    responses: dict[int, type[BaseModel] | None] = dict(answers)
    codes = [*errors, "unauthorized"] if roles is not None else list(errors)
    for code in codes:
        responses.setdefault(STATUS_BY_CODE[code], ErrorBody)
    doc: dict[str, Any] = {"summary": summary, "responses": responses}
    if roles is not None:
        doc["security"] = [{BEARER: []}]
        doc["openapi_extensions"] = {ROLES_EXTENSION: list(roles)}
    if roles:
        doc["description"] = "Allowed roles: " + ", ".join(roles) + "."
    return doc


def explorer_files(url_prefix: str) -> Blueprint:
    """Swagger UI's script, stylesheet and icon, at `url_prefix`/swagger/…"""
    return Blueprint(
        "explorer",
        __name__,
        static_folder=EXPLORER_FILES,
        static_url_path=f"{url_prefix}/swagger",
    )


def explorer_page() -> str:
    """Swagger UI's page (flask-openapi3-swagger's template), on the document at
    DOCUMENT_URL; no sign-in flow of its own (`oauth_config`): a token from register or
    login goes in its Authorize dialog."""
    page = render_template_string(
        swagger_html_string, doc_url=DOCUMENT_URL, swagger_config={}, oauth_config=None
    )
    return page.strip()
