"""The served OpenAPI document describes every REST endpoint the app routes, as the contract
states them, and the docs page shows every path."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.contract import API, JOB_FIELDS

# The document, its explorer's page and the explorer's files.
HIDDEN = {f"{API}/openapi.json", f"{API}/docs", f"{API}/swagger/<path:filename>"}
SCHEMA_REF = re.compile(r"^#/components/schemas/[^/]+$")
JOB_KEYS = set(JOB_FIELDS)
# The contract's table: (method, path) -> (its success statuses, error codes it names).
CONTRACT = {
    ("post", "/auth/register"): ({"201"}, {"409", "422"}),
    ("post", "/auth/login"): ({"200"}, {"401", "422", "429"}),
    ("post", "/devices"): ({"200", "201"}, {"401", "422"}),
    ("delete", "/devices/{token}"): ({"204"}, {"401", "404"}),
    ("put", "/drivers/me/availability"): ({"200"}, {"401", "403", "422"}),
    ("put", "/drivers/me/location"): ({"204"}, {"401", "403", "422"}),
    ("get", "/drivers/me/offers"): ({"200"}, {"401", "403"}),
    ("post", "/jobs"): ({"201"}, {"401", "403", "422"}),
    ("get", "/jobs/{job_id}"): ({"200"}, {"401", "404"}),
    ("get", "/jobs"): ({"200"}, {"401", "403", "422"}),
    ("post", "/jobs/{job_id}/accept"): ({"200"}, {"401", "403", "404", "409"}),
    ("post", "/jobs/{job_id}/cancel"): ({"200"}, {"401", "403", "404", "409", "422"}),
    # v1.1
    ("post", "/jobs/{job_id}/arrive"): ({"200"}, {"401", "403", "404", "409"}),
    ("post", "/jobs/{job_id}/start"): ({"200"}, {"401", "403", "404", "409"}),
    ("post", "/jobs/{job_id}/complete"): ({"200"}, {"401", "403", "404", "409"}),
    ("post", "/jobs/{job_id}/release"): ({"200"}, {"401", "403", "404", "409"}),
    ("post", "/jobs/{job_id}/decline"): ({"204"}, {"401", "403", "404", "409"}),
    ("get", "/jobs/{job_id}/events"): ({"200"}, {"401", "404"}),
    ("get", "/drivers/me"): ({"200"}, {"401", "403"}),
    ("get", "/drivers/me/jobs"): ({"200"}, {"401", "403", "422"}),
}
# Who may call each endpoint with a role ("Allowed roles: …" in its description).
ROLES = {
    ("post", "/jobs/{job_id}/accept"): "driver",
    ("post", "/jobs/{job_id}/arrive"): "driver",
    ("post", "/jobs/{job_id}/start"): "driver",
    ("post", "/jobs/{job_id}/complete"): "driver",
    ("post", "/jobs/{job_id}/release"): "driver",
    ("post", "/jobs/{job_id}/decline"): "driver",
    ("post", "/jobs/{job_id}/cancel"): "customer",
    ("get", "/drivers/me"): "driver",
    ("get", "/drivers/me/jobs"): "driver",
    ("get", "/drivers/me/offers"): "driver",
    ("get", "/jobs"): "customer",
    ("post", "/jobs"): "customer",
}
# The steps of a job's life: each answers the Job.
STEPS = ("accept", "arrive", "start", "complete", "release", "cancel")
# (method, path) -> (the body's properties, the required ones)
BODIES = {
    ("post", "/auth/register"): ({"role", "email", "password", "name"},) * 2,
    ("post", "/auth/login"): ({"email", "password"},) * 2,
    ("post", "/devices"): ({"token", "platform", "environment"},) * 2,
    ("put", "/drivers/me/availability"): ({"online"},) * 2,
    ("put", "/drivers/me/location"): ({"lat", "lng"},) * 2,
    ("post", "/jobs"): ({"pickup", "dropoff", "notes"}, {"pickup"}),
    ("post", "/jobs/{job_id}/cancel"): ({"reason"}, set()),
}
OPTIONAL_BODIES = {("post", "/jobs/{job_id}/cancel")}


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    answer = client.get(f"{API}/openapi.json")  # no token needed
    assert (answer.status_code, answer.mimetype) == (200, "application/json")
    body: dict[str, Any] = answer.get_json()
    return body


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op for path, ops in document["paths"].items() for method, op in ops.items()
    }


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve at {part!r}"
        node = node[part]
    assert isinstance(node, dict)
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A component schema, reached through the `$ref` every body and answer uses."""
    assert set(schema) == {"$ref"} and SCHEMA_REF.match(schema["$ref"]), schema
    return _resolve(document, schema["$ref"])


def _json_schema(document: dict[str, Any], holder: dict[str, Any]) -> dict[str, Any]:
    return _schema(document, holder["content"]["application/json"]["schema"])


def test_the_document_is_openapi_3(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.\d+\.\d+", document["openapi"])
    assert isinstance(document["info"]["title"], str) and document["info"]["title"]
    assert isinstance(document["info"]["version"], str) and document["info"]["version"]
    assert document["paths"] and document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }


def test_every_route_is_documented_with_every_method(app: Flask, document: dict[str, Any]) -> None:
    routed = {
        (method.lower(), re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(f"{API}/") and rule.rule not in HIDDEN
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = set(_operations(document))
    assert documented == routed
    contract = {(method, API + path) for method, path in CONTRACT}
    assert contract <= documented


def test_path_parameters_match_each_path(document: dict[str, Any]) -> None:
    for (method, path), op in _operations(document).items():
        in_path = re.findall(r"{([^}]+)}", path)
        declared = [p for p in op.get("parameters", []) if p["in"] == "path"]
        assert [p["name"] for p in declared] == in_path, (method, path)
        assert all(p["required"] is True for p in declared)
        expected = {"job_id": "integer", "driver_id": "integer", "token": "string"}
        assert {p["name"]: p["schema"]["type"] for p in declared} == {
            name: expected[name] for name in in_path
        }


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = _refs(document)
    assert refs
    for ref in refs:
        _resolve(document, ref)


@pytest.mark.parametrize(("method", "path"), list(CONTRACT))
def test_each_operation_answers_as_the_contract_says(
    document: dict[str, Any], method: str, path: str
) -> None:
    op = document["paths"][API + path][method]
    assert isinstance(op["summary"], str) and op["summary"]
    successes, errors = CONTRACT[(method, path)]
    assert successes | errors <= set(op["responses"])
    error_body = document["components"]["schemas"]["ErrorBody"]
    for status in errors:
        assert _json_schema(document, op["responses"][status]) == error_body, status
    for status in successes - {"204"}:
        assert list(op["responses"][status]["content"]) == ["application/json"], status
    if "204" in successes:
        assert "content" not in op["responses"]["204"]  # no body
    signed_in = path not in ("/auth/register", "/auth/login")
    assert (op.get("security") == [{"bearer": []}]) is signed_in


def test_every_error_answer_is_the_one_error_shape(document: dict[str, Any]) -> None:
    """No operation documents an error in another shape (such as a library's own 422)."""
    error_body = document["components"]["schemas"]["ErrorBody"]
    for key, op in _operations(document).items():
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                assert _json_schema(document, answer) == error_body, (key, status)


@pytest.mark.parametrize(("method", "path"), list(BODIES))
def test_each_request_body_resolves_to_its_component(
    document: dict[str, Any], method: str, path: str
) -> None:
    body = document["paths"][API + path][method]["requestBody"]
    assert body["required"] is ((method, path) not in OPTIONAL_BODIES)
    assert list(body["content"]) == ["application/json"]
    schema = _json_schema(document, body)
    properties, required = BODIES[(method, path)]
    assert set(schema["properties"]) == properties
    assert set(schema.get("required", [])) == required
    assert schema["additionalProperties"] is False  # unknown fields are refused


def test_only_the_endpoints_with_a_body_declare_one(document: dict[str, Any]) -> None:
    with_body = {key for key, op in _operations(document).items() if "requestBody" in op}
    assert with_body == {(method, API + path) for method, path in BODIES}


def test_the_enums_and_ranges_are_the_contracts(document: dict[str, Any]) -> None:
    ops = document["paths"]

    def body(path: str, method: str) -> dict[str, Any]:
        return _json_schema(document, ops[API + path][method]["requestBody"])["properties"]

    assert body("/auth/register", "post")["role"]["enum"] == ["customer", "driver"]
    device = body("/devices", "post")
    assert (device["platform"]["const"], device["environment"]["enum"]) == (
        "ios",
        ["production", "sandbox"],
    )
    location = body("/drivers/me/location", "put")
    assert (location["lat"]["minimum"], location["lat"]["maximum"]) == (-90, 90)
    assert (location["lng"]["minimum"], location["lng"]["maximum"]) == (-180, 180)
    assert body("/drivers/me/availability", "put")["online"]["type"] == "boolean"

    [status] = [p for p in ops[f"{API}/jobs"]["get"]["parameters"] if p["in"] == "query"]
    assert status["name"] == "status"
    statuses = ["pending", "accepted", "arrived", "in_progress", "completed", "cancelled"]
    assert [*statuses, "expired"] in [option.get("enum") for option in status["schema"]["anyOf"]]
    [key] = [p for p in ops[f"{API}/jobs"]["post"]["parameters"] if p["in"] == "header"]
    assert (key["name"], key["schema"]["maxLength"]) == ("Idempotency-Key", 255)


def test_the_answers_have_the_contracts_shapes(document: dict[str, Any]) -> None:
    ops = document["paths"]

    def answer(path: str, method: str, status: str) -> dict[str, Any]:
        return _json_schema(document, ops[API + path][method]["responses"][status])

    auth = answer("/auth/register", "post", "201")
    assert set(auth["properties"]) == {"user", "token"}
    assert set(_schema(document, auth["properties"]["user"])["properties"]) == {
        "id",
        "role",
        "email",
        "name",
    }
    job = answer("/jobs/{job_id}", "get", "200")
    assert set(job["properties"]) == JOB_KEYS
    assert answer("/jobs", "post", "201") == job
    offers = answer("/drivers/me/offers", "get", "200")
    offer = _schema(document, offers["properties"]["offers"]["items"])
    assert set(offer["properties"]) == {"job", "distance_km", "offered_at"}
    assert _schema(document, offer["properties"]["job"]) == job
    error = _schema(document, document["components"]["schemas"]["ErrorBody"]["properties"]["error"])
    assert set(error["properties"]) == {"code", "message", "fields"}
    assert set(error["required"]) == {"code", "message"}


def _nullable(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The component behind `anyOf: [{$ref}, {type: null}]`: a shape or null."""
    ref, null = schema["anyOf"]
    assert null == {"type": "null"}, schema
    return _schema(document, ref)


def test_every_step_answers_the_job(document: dict[str, Any]) -> None:
    ops = document["paths"]
    job = _json_schema(document, ops[f"{API}/jobs/{{job_id}}"]["get"]["responses"]["200"])
    for step in STEPS:
        answer = ops[f"{API}/jobs/{{job_id}}/{step}"]["post"]["responses"]["200"]
        assert _json_schema(document, answer) == job, step
    for step in ("arrive", "start", "complete", "release", "decline"):
        assert "requestBody" not in ops[f"{API}/jobs/{{job_id}}/{step}"]["post"], step


def test_the_job_has_the_v1_1_fields(document: dict[str, Any]) -> None:
    job = _json_schema(
        document, document["paths"][f"{API}/jobs/{{job_id}}"]["get"]["responses"]["200"]
    )
    assert list(job["properties"]) == list(JOB_FIELDS)
    assert set(job["required"]) == JOB_KEYS  # null is written out, never left out
    statuses = [
        "pending",
        "accepted",
        "arrived",
        "in_progress",
        "completed",
        "cancelled",
        "expired",
    ]
    assert job["properties"]["status"]["enum"] == statuses
    for stamp in ("arrived_at", "started_at", "completed_at", "cancelled_at"):
        types = [option.get("type") for option in job["properties"][stamp]["anyOf"]]
        assert types == ["string", "null"], stamp
    assert job["properties"]["cancelled_by"]["enum"] == ["customer", None]
    location = _nullable(document, job["properties"]["driver_location"])
    assert list(location["properties"]) == ["lat", "lng", "at"]
    assert set(location["required"]) == {"lat", "lng", "at"}


def test_the_v1_1_answers_have_the_contracts_shapes(document: dict[str, Any]) -> None:
    ops = document["paths"]

    def answer(path: str) -> dict[str, Any]:
        return _json_schema(document, ops[API + path]["get"]["responses"]["200"])

    job = answer("/jobs/{job_id}")
    me = answer("/drivers/me")
    assert list(me["properties"]) == ["id", "name", "online", "approved", "current_job"]
    assert _nullable(document, me["properties"]["current_job"]) == job
    held = answer("/drivers/me/jobs")
    assert list(held["properties"]) == ["jobs"]
    assert _schema(document, held["properties"]["jobs"]["items"]) == job

    events = answer("/jobs/{job_id}/events")
    assert list(events["properties"]) == ["events"]
    event = _schema(document, events["properties"]["events"]["items"])
    assert list(event["properties"]) == ["type", "at", "actor", "count", "reason"]
    assert event["properties"]["type"]["enum"] == [
        "created",
        "offered",
        "accepted",
        "arrived",
        "started",
        "completed",
        "released",
        "declined",
        "cancelled",
        "expired",
    ]
    actor = _nullable(document, event["properties"]["actor"])
    assert set(actor["properties"]) == {"id", "role"} == set(actor["required"])


def test_drivers_jobs_filter_by_the_same_statuses_as_jobs(document: dict[str, Any]) -> None:
    ops = document["paths"]

    def query(path: str) -> list[dict[str, Any]]:
        return [p for p in ops[API + path]["get"]["parameters"] if p["in"] == "query"]

    [status] = query("/drivers/me/jobs")
    assert status["name"] == "status" and status["required"] is False
    assert query("/drivers/me/jobs") == query("/jobs")


@pytest.mark.parametrize(("method", "path"), list(ROLES))
def test_each_endpoint_for_one_role_names_it(
    document: dict[str, Any], method: str, path: str
) -> None:
    op = document["paths"][API + path][method]
    assert op["description"] == f"Allowed roles: {ROLES[(method, path)]}."


def test_the_docs_page_is_an_explorer_of_the_document_loaded_from_this_server_only(
    client: FlaskClient,
) -> None:
    """Swagger UI, from the files a Python package ships: every script, stylesheet and icon
    the page names is served here, and the page names no other host (no CDN)."""
    page = client.get(f"{API}/docs")
    assert (page.status_code, page.mimetype) == (200, "text/html")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"
    text = page.get_data(as_text=True)
    assert text.lower().startswith("<!doctype html>")
    assert re.findall(r"https?://", text) == []  # nothing from another host
    assert "SwaggerUIBundle" in text
    assert re.search(r'new URL\("openapi\.json"', text)  # the document beside the page
    assets = re.findall(r'(?:src|href)="([^"]+)"', text)
    kinds = {asset.rsplit(".", 1)[-1] for asset in assets}
    assert {"js", "css"} <= kinds, assets
    for asset in assets:
        with client.get(urljoin(f"{API}/docs", asset)) as answer:  # a file: close it
            assert answer.status_code == 200, asset
            assert answer.headers["X-Content-Type-Options"] == "nosniff", asset
            assert len(answer.get_data()) > 0, asset
    document = client.get(urljoin(f"{API}/docs", "openapi.json"))
    assert (document.status_code, document.mimetype) == (200, "application/json")
