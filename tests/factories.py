"""Test data made through the public API, the way the apps make it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import requests
from flask.testing import FlaskClient

from models.db import redis_connection, session_scope
from models.jobs import Job
from models.offers import offer_round
from tests.contract import bearer

_serial = itertools.count(1)
PASSWORD = "correct horse battery"

# A point in Lisbon and points at known great-circle distances north of it (1° lat ≈ 111.2 km).
ORIGIN = (38.7223, -9.1393)


def north_of(origin: tuple[float, float], km: float) -> tuple[float, float]:
    return origin[0] + km / 111.195, origin[1]


@dataclass
class Account:
    id: int
    role: str
    email: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


class Factory:
    def __init__(self, client: FlaskClient | HttpClient) -> None:
        self.client = client

    def account(self, role: str, name: str | None = None) -> Account:
        n = next(_serial)
        body = {
            "role": role,
            "email": f"{role}{n}@example.com",
            "password": PASSWORD,
            "name": name or f"{role.title()} {n}",
        }
        answer = self.client.post("/api/v1/auth/register", json=body)
        assert answer.status_code == 201, answer.json
        user = answer.json["user"]
        return Account(user["id"], role, user["email"], user["name"], answer.json["token"])

    def customer(self, name: str | None = None) -> Account:
        return self.account("customer", name)

    def driver(
        self, at: tuple[float, float] | None = ORIGIN, online: bool = True, name: str | None = None
    ) -> Account:
        driver = self.account("driver", name)
        if online:
            answer = self.client.put(
                "/api/v1/drivers/me/availability", json={"online": True}, headers=driver.headers
            )
            assert answer.status_code == 200, answer.json
        if at is not None:
            answer = self.client.put(
                "/api/v1/drivers/me/location",
                json={"lat": at[0], "lng": at[1]},
                headers=driver.headers,
            )
            assert answer.status_code == 204, answer.json
        return driver

    def device(self, account: Account, environment: str = "production") -> str:
        """Register a fresh APNs token for the account; returns the token."""
        token = f"{next(_serial):064x}"
        answer = self.client.post(
            "/api/v1/devices",
            json={"token": token, "platform": "ios", "environment": environment},
            headers=account.headers,
        )
        assert answer.status_code == 201, answer.json
        return token

    def job(
        self,
        customer: Account,
        at: tuple[float, float] = ORIGIN,
        address: str | None = None,
        **extra: Any,
    ) -> dict:
        pickup: dict[str, Any] = {"lat": at[0], "lng": at[1]}
        if address is not None:
            pickup["address"] = address
        body = {"pickup": pickup, **extra}
        answer = self.client.post("/api/v1/jobs", json=body, headers=customer.headers)
        assert answer.status_code == 201, answer.json
        return answer.json

    def offer(self, job_id: int) -> list[int]:
        """Make the offers the dispatch task would make (its I/O left out); returns the
        drivers offered the job now."""
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            offered = offer_round(session, redis_connection(), job)
            return offered.event.data["drivers"] if offered is not None else []


@dataclass
class Answer:
    status_code: int
    json: Any


class HttpClient:
    """The Flask test client's calling convention over real HTTP, so `Factory` can make data
    through a running gunicorn as well."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        kwargs.setdefault("timeout", 10)
        response = self.session.request(method, self.base_url + path, **kwargs)
        body = response.json() if response.content else None
        return Answer(response.status_code, body)

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Answer:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Answer:
        return self.request("PUT", path, **kwargs)

    def close(self) -> None:
        self.session.close()
