"""The fake APNs server for the test run, and the settings that point Dispatch at it.

A pytest plugin: one server (real HTTP/2 over TLS on a free loopback port) for the session;
`fake_apns` hands it to a test up, empty and with no per-token behaviour."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_apns import Credentials, FakeAPNs, make_credentials
from settings import settings


@pytest.fixture(scope="session")
def apns_credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(Path(tmp_path_factory.mktemp("fake-apns")))


@pytest.fixture(scope="session")
def fake_apns_server(apns_credentials: Credentials) -> Iterator[FakeAPNs]:
    server = FakeAPNs(apns_credentials).start()
    yield server
    server.stop()


@pytest.fixture
def fake_apns(fake_apns_server: FakeAPNs) -> Iterator[FakeAPNs]:
    """The server, up, with nothing received and no per-token behaviour."""
    fake_apns_server.up()
    fake_apns_server.clear()
    yield fake_apns_server
    fake_apns_server.up()
    fake_apns_server.wait_idle()  # a delayed answer must not land in the next test
    fake_apns_server.clear()


@pytest.fixture(scope="session")
def apns_env(apns_credentials: Credentials, fake_apns_server: FakeAPNs) -> dict[str, str]:
    """Environment for processes (workers) that push to the fake server."""
    return apns_credentials.environment(fake_apns_server.port)


@pytest.fixture
def apns_settings(apns_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's settings at the fake server."""
    for name, value in apns_env.items():
        field = name.lower()
        monkeypatch.setattr(settings, field, int(value) if field == "apns_port" else value)
