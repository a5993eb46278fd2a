"""A thin APNs sender on a public API, measured against workers.apns in bench/push.py:
httpx with HTTP/2, one long-lived connection per APNs environment, the process's shared
provider token, and workers.apns's Push/PushResult, classification, in-flight bound, deadline
and ExpiredProviderToken re-sign (it is workers.apns.sender.Sender with only the transport
swapped). Measured and rejected: kept here only to re-measure."""

from __future__ import annotations

import json
import ssl
import uuid

import httpx

from settings import settings
from workers.apns.pushes import APPLE_HOSTS, Push
from workers.apns.sender import Sender


def _ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.apns_ca_file:
        context.load_verify_locations(cafile=settings.apns_ca_file)
    return context


class HttpxSender(Sender):
    """workers.apns's sender with aioapns's pools replaced by one httpx client."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: dict[str, httpx.AsyncClient] = {}

    def client(self, environment: str) -> httpx.AsyncClient:
        if environment not in self.clients:
            host = settings.apns_host or APPLE_HOSTS[environment]
            self.clients[environment] = httpx.AsyncClient(
                http1=False,
                http2=True,
                verify=_ssl_context(),
                base_url=f"https://{host}:{settings.apns_port}",
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=None,  # the sender's deadline bounds every send
            )
        return self.clients[environment]

    async def _attempt(self, push: Push) -> tuple[int | None, str | None]:
        body = json.dumps(push.payload(), ensure_ascii=False, separators=(",", ":")).encode()
        try:
            answer = await self.client(push.environment).post(
                f"/3/device/{push.token}", content=body, headers=self._headers(push)
            )
        except httpx.TransportError as exc:
            return None, f"connection: {type(exc).__name__}"
        if answer.status_code == 200:
            return 200, None
        try:
            reason = answer.json().get("reason")
        except (ValueError, AttributeError):
            reason = None
        return answer.status_code, reason

    def _headers(self, push: Push) -> dict[str, str]:
        optional = {
            "apns-push-type": push.push_type,
            "apns-priority": push.priority,
            "apns-collapse-id": push.collapse_id,
            "apns-expiration": int(push.expiration.timestamp()) if push.expiration else None,
        }
        return {
            "apns-id": str(uuid.uuid4()),
            "apns-topic": settings.apns_topic,
            "authorization": self.auth.get_header(),
            **{name: str(value) for name, value in optional.items() if value is not None},
        }

    async def _close_pools(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        await self.loop.shutdown_default_executor()
