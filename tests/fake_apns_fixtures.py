"""The fake APNs server for the test run, and the settings that point Dispatch at it."""

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


@pytest.fixture(scope="session")
def apns_env(apns_credentials: Credentials, fake_apns_server: FakeAPNs) -> dict[str, str]:
    """Environment for processes (workers) that push to the fake server."""
    return {
        "APNS_HOST": "127.0.0.1",
        "APNS_PORT": str(fake_apns_server.port),
        "APNS_CA_FILE": str(apns_credentials.ca_file),
        "APNS_KEY_PATH": str(apns_credentials.signing_key_file),
        "APNS_KEY_ID": apns_credentials.key_id,
        "APNS_TEAM_ID": apns_credentials.team_id,
        "APNS_TOPIC": apns_credentials.topic,
    }


@pytest.fixture
def apns_settings(apns_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's settings at the fake server."""
    for name, value in apns_env.items():
        field = name.lower()
        monkeypatch.setattr(settings, field, int(value) if field == "apns_port" else value)
