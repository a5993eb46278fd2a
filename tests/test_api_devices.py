"""APNs device tokens: register (201 new, 200 again), move between users, forget."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from models.db import session_scope
from models.devices import DeviceToken
from tests.contract import API, assert_error
from tests.factories import Account, Factory
from tests.stored import db_rows

TOKEN = "0123456789ABCDEF" * 4  # 32 bytes, as Apple sends them today
STORED = TOKEN.lower()


def _register(
    client: FlaskClient, who: Account, token: str = TOKEN, environment: str = "production"
) -> TestResponse:
    body = {"token": token, "platform": "ios", "environment": environment}
    return client.post(f"{API}/devices", json=body, headers=who.headers)


def _remove(client: FlaskClient, who: Account, token: str = STORED) -> TestResponse:
    return client.delete(f"{API}/devices/{token}", headers=who.headers)


def _devices() -> list[dict[str, Any]]:
    with session_scope() as session:
        return [
            {
                "user_id": d.user_id,
                "token": d.token,
                "environment": d.environment,
                "active": d.active,
            }
            for d in session.scalars(select(DeviceToken).order_by(DeviceToken.id))
        ]


@pytest.mark.parametrize("role", ["customer", "driver"])
@pytest.mark.parametrize("environment", ["production", "sandbox"])
def test_a_new_token_is_201(
    client: FlaskClient, factory: Factory, role: str, environment: str
) -> None:
    user = factory.account(role)
    answer = _register(client, user, environment=environment)
    assert answer.status_code == 201 and answer.mimetype == "application/json"
    assert answer.get_json() == {
        "token": STORED,
        "platform": "ios",
        "environment": environment,
        "active": True,
    }
    assert _devices() == [
        {"user_id": user.id, "token": STORED, "environment": environment, "active": True}
    ]


def test_registering_again_is_200_and_updates_the_one_row(
    client: FlaskClient, factory: Factory
) -> None:
    customer = factory.customer()
    assert _register(client, customer, environment="sandbox").status_code == 201
    again = _register(client, customer, token=STORED, environment="production")
    assert again.status_code == 200
    assert again.get_json() == {
        "token": STORED,
        "platform": "ios",
        "environment": "production",
        "active": True,
    }
    assert _devices() == [
        {"user_id": customer.id, "token": STORED, "environment": "production", "active": True}
    ]


def test_registering_a_token_apns_rejected_makes_it_active_again(
    client: FlaskClient, factory: Factory
) -> None:
    driver = factory.driver()
    _register(client, driver)
    with session_scope() as session:
        session.execute(update(DeviceToken).values(active=False, last_apns_reason="Unregistered"))
    again = _register(client, driver)
    assert (again.status_code, again.get_json()["active"]) == (200, True)
    assert [d["active"] for d in _devices()] == [True]


def test_a_token_registered_by_another_user_moves_to_the_caller(
    client: FlaskClient, factory: Factory
) -> None:
    previous, current = factory.customer(), factory.driver()
    assert _register(client, previous).status_code == 201
    moved = _register(client, current, environment="sandbox")
    assert moved.status_code == 200
    assert moved.get_json() == {
        "token": STORED,
        "platform": "ios",
        "environment": "sandbox",
        "active": True,
    }
    assert _devices() == [
        {"user_id": current.id, "token": STORED, "environment": "sandbox", "active": True}
    ]
    assert_error(_remove(client, previous), 404, "not_found")  # no longer theirs
    assert len(_devices()) == 1


@pytest.mark.parametrize("spelled", [STORED, STORED.upper()])
def test_delete_is_204_then_404(client: FlaskClient, factory: Factory, spelled: str) -> None:
    customer = factory.customer()
    kept = factory.device(customer)  # another token of theirs stays
    _register(client, customer)
    gone = _remove(client, customer, spelled)
    assert (gone.status_code, gone.get_data()) == (204, b"")
    assert [d["token"] for d in _devices()] == [kept]
    assert_error(_remove(client, customer, spelled), 404, "not_found")


def test_someone_elses_token_is_404_and_stays(client: FlaskClient, factory: Factory) -> None:
    owner, stranger = factory.customer(), factory.driver()
    _register(client, owner)
    before = db_rows()
    error = assert_error(_remove(client, stranger), 404, "not_found")
    assert STORED not in error["message"] and str(owner.id) not in error["message"]
    assert db_rows() == before


@pytest.mark.parametrize(
    "token", ["ab" * 31 + "a", "zz" * 32, "ab" * 4, "ab" * 101, "%00" + "ab" * 32, "not%20hex"]
)
def test_deleting_a_token_that_cannot_exist_is_404(
    client: FlaskClient, factory: Factory, token: str
) -> None:
    customer = factory.customer()
    factory.device(customer)
    before = db_rows()
    assert_error(_remove(client, customer, token), 404, "not_found")
    assert db_rows() == before
