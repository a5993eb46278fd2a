"""A thin APNs sender on a public API, measured against workers.apns in bench/push.py:
httpx with HTTP/2, one long-lived connection per APNs environment, the process's shared
provider token, and workers.apns's Push/PushResult, classification, in-flight bound, deadline
and ExpiredProviderToken re-sign, sending as workers.apns did before its callback-driven
queue: MAX_IN_FLIGHT coroutines take the pushes in turn, each awaiting its answer. Measured
and rejected: kept here only to re-measure."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Iterator, Sequence

import httpx

from settings import settings
from workers.apns.pushes import APPLE_HOSTS, Push
from workers.apns.results import EXPIRED_PROVIDER_TOKEN, PushResult
from workers.apns.sender import MAX_IN_FLIGHT, TIMED_OUT, Answer, Sender, push_result


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
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def send_all(self, pushes: Sequence[Push], timeout_s: float) -> list[PushResult]:
        """Every push answered, or given up on, by `timeout_s` from now. MAX_IN_FLIGHT
        senders take the pushes in turn; a push not answered by the deadline, sent or still
        waiting, is a timeout."""
        deadline = self.loop.time() + timeout_s
        if not await self._refreshed(deadline):
            return [push_result(push, None, "timeout") for push in pushes]
        answers: list[Answer] = [TIMED_OUT] * len(pushes)
        queue = iter(enumerate(pushes))
        senders = [
            self._send_in_turn(queue, answers, deadline)
            for _ in range(min(MAX_IN_FLIGHT, len(pushes)))
        ]
        await asyncio.gather(*senders)
        return [push_result(push, *answer) for push, answer in zip(pushes, answers, strict=True)]

    async def _send_in_turn(
        self, queue: Iterator[tuple[int, Push]], answers: list[Answer], deadline: float
    ) -> None:
        """Send the next push of `queue` until none is left or the deadline passes: one send
        each; after ExpiredProviderToken, one more with a freshly signed token."""
        try:
            async with asyncio.timeout_at(deadline):
                for index, push in queue:
                    async with self.in_flight:
                        answer = await self._attempt(push)
                        if answer == EXPIRED_PROVIDER_TOKEN:
                            await asyncio.to_thread(self.auth.refresh, True)
                            answer = await self._attempt(push)
                        answers[index] = answer
        except TimeoutError:
            pass  # the push in hand, and those never taken, keep their (None, "timeout")

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

    async def _attempt(self, push: Push) -> Answer:
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
