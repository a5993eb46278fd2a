"""Every endpoint's happy path as the contract states it, and its conflicts."""

from __future__ import annotations

import re
from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select, update

from models.db import redis_connection, session_scope, utcnow
from models.devices import DeviceToken
from models.job_events import JobEvent
from models.jobs import Job
from models.positions import drivers_near
from tests.contract import JOB_FIELDS
from tests.factories import ORIGIN, PASSWORD, Factory
from tests.stored import queued_tasks

UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_register_and_login(client: FlaskClient) -> None:
    body = {"role": "customer", "email": "Ana@Example.com", "password": PASSWORD, "name": "Ana"}
    created = client.post("/api/v1/auth/register", json=body)
    assert created.status_code == 201
    user = created.json["user"]
    assert user == {"id": user["id"], "role": "customer", "email": "ana@example.com", "name": "Ana"}
    assert isinstance(created.json["token"], str)

    again = client.post("/api/v1/auth/register", json={**body, "email": "ANA@example.com"})
    assert (again.status_code, again.json["error"]["code"]) == (409, "conflict")

    login = client.post(
        "/api/v1/auth/login", json={"email": "ana@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200 and login.json["user"] == user
    me = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {login.json['token']}"})
    assert me.status_code == 200 and me.json == {"jobs": []}


def test_login_refuses_wrong_passwords_and_throttles(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    wrong = client.post("/api/v1/auth/login", json={"email": customer.email, "password": "nope"})
    assert (wrong.status_code, wrong.json["error"]["code"]) == (401, "unauthorized")
    unknown = client.post("/api/v1/auth/login", json={"email": "who@x.io", "password": "nope"})
    assert unknown.status_code == 401
    statuses = [
        client.post(
            "/api/v1/auth/login", json={"email": customer.email, "password": "nope"}
        ).status_code
        for _ in range(12)
    ]
    assert statuses[-1] == 429 and 401 in statuses


def test_devices_register_move_and_delete(client: FlaskClient, factory: Factory) -> None:
    first, second = factory.customer(), factory.driver()
    body = {"token": "AB" * 32, "platform": "ios", "environment": "sandbox"}
    created = client.post("/api/v1/devices", json=body, headers=first.headers)
    assert created.status_code == 201
    assert created.json == {
        "token": "ab" * 32,
        "platform": "ios",
        "environment": "sandbox",
        "active": True,
    }
    assert client.post("/api/v1/devices", json=body, headers=first.headers).status_code == 200
    moved = client.post(
        "/api/v1/devices", json={**body, "environment": "production"}, headers=second.headers
    )
    assert moved.status_code == 200
    with session_scope() as session:
        [device] = session.scalars(select(DeviceToken))
        assert (device.user_id, device.environment) == (second.id, "production")
    gone = client.delete(f"/api/v1/devices/{'ab' * 32}", headers=second.headers)
    assert gone.status_code == 204 and gone.data == b""
    assert client.delete(f"/api/v1/devices/{'ab' * 32}", headers=second.headers).status_code == 404


def test_driver_availability_location_and_feed(client: FlaskClient, factory: Factory) -> None:
    driver = factory.driver(online=False, at=None)
    answer = client.put(
        "/api/v1/drivers/me/availability", json={"online": True}, headers=driver.headers
    )
    assert (answer.status_code, answer.json) == (200, {"online": True})
    moved = client.put(
        "/api/v1/drivers/me/location",
        json={"lat": ORIGIN[0], "lng": ORIGIN[1]},
        headers=driver.headers,
    )
    assert moved.status_code == 204 and moved.data == b""
    assert [c.driver_id for c in drivers_near(redis_connection(), *ORIGIN, 1, 60)] == [driver.id]

    customer = factory.customer()
    older, newer = factory.job(customer), factory.job(customer)
    factory.offer(older["id"])
    factory.offer(newer["id"])
    feed = client.get("/api/v1/drivers/me/offers", headers=driver.headers)
    assert [o["job"]["id"] for o in feed.json["offers"]] == [newer["id"], older["id"]]
    offer = feed.json["offers"][0]
    assert set(offer) == {"job", "distance_km", "offered_at"} and UTC_Z.match(offer["offered_at"])
    client.post(f"/api/v1/jobs/{older['id']}/cancel", headers=customer.headers)
    feed = client.get("/api/v1/drivers/me/offers", headers=driver.headers)
    assert [o["job"]["id"] for o in feed.json["offers"]] == [newer["id"]]


def test_job_shape_reads_and_lists(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer(name="Ana")
    body = {
        "pickup": {"lat": 38.7, "lng": -9.1, "address": "Rua Augusta 1"},
        "dropoff": {"lat": 38.75, "lng": -9.15},
        "notes": "blue van",
    }
    created = client.post("/api/v1/jobs", json=body, headers=customer.headers)
    assert created.status_code == 201
    job = created.json
    assert list(job) == list(JOB_FIELDS)
    assert job["status"] == "pending" and job["driver"] is None and job["accepted_at"] is None
    assert job["pickup"] == {"lat": 38.7, "lng": -9.1, "address": "Rua Augusta 1"}
    assert job["dropoff"] == {"lat": 38.75, "lng": -9.15, "address": None}
    assert job["customer"] == {"id": customer.id, "name": "Ana"}
    assert UTC_Z.match(job["created_at"]) and UTC_Z.match(job["expires_at"])

    assert client.get(f"/api/v1/jobs/{job['id']}", headers=customer.headers).json == job
    other = factory.job(customer)
    client.post(f"/api/v1/jobs/{other['id']}/cancel", headers=customer.headers)
    listed = client.get("/api/v1/jobs", headers=customer.headers).json["jobs"]
    assert [j["id"] for j in listed] == [other["id"], job["id"]]
    pending = client.get("/api/v1/jobs?status=pending", headers=customer.headers).json["jobs"]
    assert [j["id"] for j in pending] == [job["id"]]


def test_idempotency_key_returns_the_first_job(client: FlaskClient, factory: Factory) -> None:
    customer, other = factory.customer(), factory.customer()
    body = {"pickup": {"lat": 1.0, "lng": 2.0}}
    first = client.post(
        "/api/v1/jobs", json=body, headers={**customer.headers, "Idempotency-Key": "k1"}
    )
    again = client.post(
        "/api/v1/jobs",
        json={"pickup": {"lat": 5.0, "lng": 5.0}},
        headers={**customer.headers, "Idempotency-Key": "k1"},
    )
    theirs = client.post(
        "/api/v1/jobs", json=body, headers={**other.headers, "Idempotency-Key": "k1"}
    )
    assert (first.status_code, again.status_code, theirs.status_code) == (201, 200, 201)
    assert again.json == first.json and theirs.json["id"] != first.json["id"]


def test_accept_then_every_later_caller_gets_409(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    winner, late = factory.driver(name="Wes"), factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    won = client.post(f"/api/v1/jobs/{job['id']}/accept", headers=winner.headers)
    assert won.status_code == 200
    assert won.json["status"] == "accepted" and won.json["driver"] == {
        "id": winner.id,
        "name": "Wes",
    }
    assert UTC_Z.match(won.json["accepted_at"])
    lost = client.post(f"/api/v1/jobs/{job['id']}/accept", headers=late.headers)
    assert (lost.status_code, lost.json["error"]["code"]) == (409, "job_not_available")
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=winner.headers).status_code == 200

    second = factory.job(customer)
    factory.offer(second["id"])  # the winner is busy: offered to the other driver only
    busy = client.post(f"/api/v1/jobs/{second['id']}/accept", headers=winner.headers)
    assert busy.status_code == 404


def test_a_driver_on_a_job_cannot_accept_another(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver()
    first, second = factory.job(customer), factory.job(customer)
    factory.offer(first["id"])
    factory.offer(second["id"])
    assert (
        client.post(f"/api/v1/jobs/{first['id']}/accept", headers=driver.headers).status_code == 200
    )
    busy = client.post(f"/api/v1/jobs/{second['id']}/accept", headers=driver.headers)
    assert (busy.status_code, busy.json["error"]["code"]) == (409, "conflict")


def test_an_expired_job_cannot_be_accepted(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    with session_scope() as session:
        session.execute(update(Job).values(expires_at=utcnow() - timedelta(seconds=1)))
    late = client.post(f"/api/v1/jobs/{job['id']}/accept", headers=driver.headers)
    assert (late.status_code, late.json["error"]["code"]) == (409, "job_not_available")


def test_cancel_frees_the_driver_and_only_once(client: FlaskClient, factory: Factory) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    client.post(f"/api/v1/jobs/{job['id']}/accept", headers=driver.headers)
    cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=customer.headers)
    assert (cancelled.status_code, cancelled.json["status"]) == (200, "cancelled")
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=customer.headers)
    assert (again.status_code, again.json) == (200, cancelled.json)  # a retry
    removals = [t for t in queued_tasks() if t["task"] == "workers.tasks.notify_removed"]
    assert len(removals) == 1

    next_job = factory.job(customer)
    assert factory.offer(next_job["id"]) == [driver.id]  # free again, so eligible again
    taken = client.post(f"/api/v1/jobs/{next_job['id']}/accept", headers=driver.headers)
    assert taken.status_code == 200


def test_openapi_describes_every_endpoint(client: FlaskClient, app) -> None:
    document = client.get("/api/v1/openapi.json").json
    assert document["openapi"].startswith("3.")
    routes = {
        (re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1") and not rule.rule.endswith(("openapi.json", "docs"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routes == documented
    schemas = document["components"]["schemas"]
    for ops in document["paths"].values():
        for op in ops.values():
            ref = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "$ref" in ref.get("schema", {}):
                assert ref["schema"]["$ref"].split("/")[-1] in schemas
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    for path in document["paths"]:
        assert path in page.get_data(as_text=True)


def test_a_retried_accept_by_the_winner_announces_nothing_again(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    driver = factory.driver()
    job = factory.job(customer)
    factory.offer(job["id"])
    first = client.post(f"/api/v1/jobs/{job['id']}/accept", headers=driver.headers)
    again = client.post(f"/api/v1/jobs/{job['id']}/accept", headers=driver.headers)
    assert (first.status_code, again.status_code) == (200, 200) and again.json == first.json
    announced = [t for t in queued_tasks() if t["task"] == "workers.tasks.notify_accepted"]
    with session_scope() as session:
        [accepted] = session.scalars(
            select(JobEvent.id).where(JobEvent.job_id == job["id"], JobEvent.type == "accepted")
        )
    assert announced == [{"task": "workers.tasks.notify_accepted", "args": [accepted]}]
