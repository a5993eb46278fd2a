"""The OpenAPI 3.1 document, generated from the same pydantic models that validate requests.

Each view declares its body, answers and auth with `@documented`; the document walks the
app's URL map, so an endpoint cannot exist without appearing in it."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.errors import STATUS_BY_CODE
from api.schemas import HEADERS, ErrorBody

F = TypeVar("F", bound=Callable[..., Any])

REF = "#/components/schemas/{model}"
# A URL rule's variables, `<name>` or `<converter(args):name>`, and the JSON type of each.
RULE_VARIABLE = re.compile(r"<(?:([^:<>()]+)(?:\([^<>]*\))?:)?([^<>]+)>")
PARAM_TYPES = {"int": "integer", "float": "number"}


@dataclass(frozen=True)
class EndpointDoc:
    summary: str
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    answers: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    roles: tuple[str, ...] | None = None  # None: no auth; (): any signed-in user
    headers: dict[str, str] = field(default_factory=dict)


def documented(doc: EndpointDoc) -> Callable[[F], F]:
    def attach(view: F) -> F:
        view.__openapi__ = doc  # type: ignore[attr-defined]
        return view

    return attach


def _models(app: Flask) -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {"ErrorBody": ErrorBody}
    for view in app.view_functions.values():
        doc: EndpointDoc | None = getattr(view, "__openapi__", None)
        if doc is None:
            continue
        for model in [doc.body, doc.query, *doc.answers.values()]:
            if model is not None:
                seen[model.__name__] = model
    return list(seen.values())


def _operation(doc: EndpointDoc, schemas: dict[Any, Any], rule: str) -> dict:
    op: dict[str, Any] = {"summary": doc.summary, "responses": {}}
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": PARAM_TYPES.get(converter, "string")},
        }
        for converter, name in RULE_VARIABLE.findall(rule)
    ]
    if doc.query is not None:
        for name, prop in doc.query.model_json_schema()["properties"].items():
            params.append({"name": name, "in": "query", "required": False, "schema": prop})
    for name, description in doc.headers.items():
        params.append(
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": description,
                "schema": HEADERS[name].json_schema(),  # what validated_header checks
            }
        )
    if params:
        op["parameters"] = params
    if doc.body is not None:
        op["requestBody"] = {
            "required": doc.body_required,
            "content": {"application/json": {"schema": schemas[(doc.body, "validation")]}},
        }
    for status, model in doc.answers.items():
        answer: dict[str, Any] = {"description": f"{status}"}
        if model is not None:
            answer["content"] = {"application/json": {"schema": schemas[(model, "serialization")]}}
        op["responses"][str(status)] = answer
    codes = list(doc.errors)
    if doc.body is not None or doc.query is not None:
        codes.append("validation_error")
    if doc.roles is not None:
        codes.append("unauthorized")
    for code in codes:
        op["responses"].setdefault(
            str(STATUS_BY_CODE[code]),
            {
                "description": code,
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}
                },
            },
        )
    if doc.roles is not None:
        op["security"] = [{"bearer": []}]
        if doc.roles:
            op["description"] = "Allowed roles: " + ", ".join(doc.roles) + "."
    return op


def openapi_document(app: Flask) -> dict[str, Any]:
    models = _models(app)
    pairs = [(m, mode) for m in models for mode in ("validation", "serialization")]
    schemas, defs = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        doc: EndpointDoc | None = getattr(app.view_functions[rule.endpoint], "__openapi__", None)
        if doc is None:
            continue
        path = RULE_VARIABLE.sub(r"{\2}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(doc, schemas, rule.rule)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dispatch API", "version": "1.0.0"},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def docs_page(document: dict[str, Any]) -> str:
    """A self-contained, browsable page of the document (no CDN, works offline)."""
    rows = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            answers = ", ".join(op["responses"])
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            rows.append(
                "<details><summary><code>{m} {p}</code> {s} <small>({a})</small></summary>"
                "<pre>{detail}</pre></details>".format(
                    m=method.upper(),
                    p=html.escape(path),
                    s=html.escape(op["summary"]),
                    a=answers,
                    detail=html.escape(json.dumps({"request": body, **op}, indent=2)),
                )
            )
    schemas = "".join(
        f"<details><summary><code>{html.escape(name)}</code></summary>"
        f"<pre>{html.escape(json.dumps(schema, indent=2))}</pre></details>"
        for name, schema in document["components"]["schemas"].items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Dispatch API</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto}"
        "summary{cursor:pointer;padding:.3rem 0}pre{background:#f4f4f4;padding:1rem;"
        "overflow:auto}</style></head><body><h1>Dispatch API v1</h1>"
        "<p>Machine-readable: <a href='openapi.json'>openapi.json</a>. Authenticate with "
        "<code>Authorization: Bearer &lt;token&gt;</code> from register or login.</p>"
        f"<h2>Endpoints</h2>{''.join(rows)}<h2>Schemas</h2>{schemas}</body></html>"
    )
