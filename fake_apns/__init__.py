"""A real fake of Apple's push provider API (HTTP/2 over TLS) for tests and local development."""

from fake_apns.certs import Credentials, make_credentials
from fake_apns.server import Behaviour, FakeAPNs, ReceivedPush

__all__ = ["Behaviour", "Credentials", "FakeAPNs", "ReceivedPush", "make_credentials"]
