"""Dispatch's seams in aioapns: where to connect, the contract's headers exactly, and fixes for
aioapns's bugs."""

from __future__ import annotations

import asyncio
import json
import ssl
from functools import partial
from typing import Any

from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
)

from settings import settings
from workers.apns.provider_token import SharedProviderToken
from workers.apns.pushes import APPLE_HOSTS, Push

MAX_CONNECTIONS = 4  # per environment: one carries up to 1000 streams, more only under load
MAX_CONNECTION_ATTEMPTS = 2


class PushRequest(NotificationRequest):
    """aioapns's request, with an absolute `apns-expiration` (it only knows a relative TTL)."""

    __slots__ = ("expiration",)

    def __init__(self, push: Push) -> None:
        super().__init__(
            device_token=push.token,
            message=push.payload(),
            priority=push.priority,
            collapse_key=push.collapse_id,
            push_type=PushType(push.push_type),
        )
        self.expiration = int(push.expiration.timestamp()) if push.expiration else None


def _error_result(notification_id: str, status: str, body: bytes) -> NotificationResult:
    """An error answer; a body that is not Apple's JSON still ends the wait."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    return NotificationResult(
        notification_id, status, description=answer.get("reason"), timestamp=answer.get("timestamp")
    )


class DispatchProtocol(APNsTLSClientProtocol):
    """aioapns's TLS protocol with the contract's headers exactly, and its 4.0 bugs fixed:
    received DATA is acknowledged (it never was, so ~64 KiB of error bodies stalled a
    connection); an error answer is read when its stream ends, so a missing or non-JSON body
    cannot hang a send; answers and losses for sends already given up on (a caller's timeout)
    are skipped instead of raising InvalidStateError; finished streams are forgotten."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: dict[int, bytearray] = {}

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        stream_id = await self.free_channels.acquire()
        self.conn.send_headers(stream_id=stream_id, headers=self._headers(request))
        body = json.dumps(request.message, ensure_ascii=False, separators=(",", ":")).encode()
        self.conn.send_data(stream_id=stream_id, data=body, end_stream=True)
        self.flush()
        answer: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = answer
        self.request_streams[stream_id] = request.notification_id
        return await answer

    def _headers(self, request: NotificationRequest) -> list[tuple[str, str]]:
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", f"/3/device/{request.device_token}"),
            ("host", self.APNS_SERVER),
            ("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        optional = {
            "apns-push-type": request.push_type.value if request.push_type else None,
            "apns-priority": request.priority,
            "apns-collapse-id": request.collapse_key,
            "apns-expiration": getattr(request, "expiration", None),
        }
        headers += [(name, str(value)) for name, value in optional.items() if value is not None]
        if self.auth_provider is not None:
            headers.append(("authorization", self.auth_provider.get_header()))
        return headers

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        notification_id = headers.get(b"apns-id", b"").decode()
        status = headers.get(b":status", b"").decode()
        if status != "200":
            self.request_statuses[notification_id] = status  # answered at the stream's end
            return
        request = self.requests.pop(notification_id, None)
        if request is not None and not request.done():
            request.set_result(NotificationResult(notification_id, status))

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        self.conn.acknowledge_received_data(len(raw_data), stream_id)
        self.bodies.setdefault(stream_id, bytearray()).extend(raw_data)

    def on_stream_ended(self, stream_id: int) -> None:
        body = bytes(self.bodies.pop(stream_id, b""))
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            status = self.request_statuses.pop(notification_id, None)
            request = self.requests.pop(notification_id, None)
            if status is not None and request is not None and not request.done():
                request.set_result(_error_result(notification_id, status, body))
        super().on_stream_ended(stream_id)  # frees the stream's slot

    def connection_lost(self, exc: Exception | None) -> None:
        self.requests = {nid: fut for nid, fut in self.requests.items() if not fut.done()}
        self.bodies.clear()
        super().connection_lost(exc)


def _protocol_for(environment: str) -> type[APNsTLSClientProtocol]:
    host = settings.apns_host or APPLE_HOSTS[environment]
    return type(
        f"DispatchProtocol_{environment}",
        (DispatchProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": settings.apns_port},
    )


def _ssl_context() -> ssl.SSLContext:
    """The system's trust store, plus APNS_CA_FILE (a test server's CA) when set."""
    context = ssl.create_default_context()
    if settings.apns_ca_file:
        context.load_verify_locations(cafile=settings.apns_ca_file)
    context.set_alpn_protocols(["h2"])
    return context


class DispatchPool(APNsKeyConnectionPool):
    """aioapns's key pool, with our protocol class and the process's shared provider token.
    Create it on the running loop (aioapns binds the loop it finds)."""

    def __init__(self, environment: str, key: str, auth: SharedProviderToken) -> None:
        super().__init__(
            key=key,
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            topic=settings.apns_topic,
            max_connections=MAX_CONNECTIONS,
            max_connection_attempts=MAX_CONNECTION_ATTEMPTS,
            use_sandbox=environment == "sandbox",
            ssl_context=_ssl_context(),
        )
        self.protocol_class = _protocol_for(environment)
        self.auth = auth

    async def create_connection(self) -> APNsBaseClientProtocol:
        factory = partial(
            self.protocol_class,
            settings.apns_topic,
            self.loop,
            self.discard_connection,  # type: ignore[arg-type]  # aioapns types it NoReturn
            self.auth,
        )
        return await self._create_connection(factory)

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        if connection in self.connections:  # lost before the pool had added it
            super().discard_connection(connection)
