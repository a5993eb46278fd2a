"""The process's APNs sender: one asyncio loop in a daemon thread (re-created after a fork)
holding one aioapns connection pool per APNs environment, so the pushes of a fan-out are
multiplexed on long-lived HTTP/2 connections; `send_pushes` calls it from synchronous Celery
tasks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded

from settings import settings
from workers.apns.aioapns_pool import DispatchPool, PushRequest, StreamReset, encoded_payload
from workers.apns.provider_token import SharedProviderToken
from workers.apns.pushes import Push
from workers.apns.results import EXPIRED_PROVIDER_TOKEN, Outcome, PushResult, classify

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 100  # aioapns is fastest with 50–200 in flight; more only makes it poll
RESULT_GRACE_S = 5.0


def apns_enabled() -> bool:
    """Whether a key is configured; without one pushes are skipped (callers warn at start)."""
    return settings.apns_configured


def _apns_config() -> tuple[str | int, ...]:
    return (
        settings.apns_key_path,
        settings.apns_key_id,
        settings.apns_team_id,
        settings.apns_topic,
        settings.apns_host,
        settings.apns_port,
        settings.apns_ca_file,
    )


class Sender:
    """The process's loop thread, its pools and the bound on pushes in flight."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.config = _apns_config()
        self.key = Path(settings.apns_key_path).read_text()
        self.auth = SharedProviderToken(self.key)
        self.pools: dict[str, DispatchPool] = {}
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.id_prefix = str(uuid.uuid4())[:24]
        self.id_numbers = itertools.count()
        self.last_body: tuple[Push, bytes] | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="apns", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def pool(self, environment: str) -> DispatchPool:
        if environment not in self.pools:
            self.pools[environment] = DispatchPool(environment, self.key, self.auth)
        return self.pools[environment]

    async def send_all(self, pushes: Sequence[Push], timeout_s: float) -> list[PushResult]:
        """Every push answered, or given up on, by `timeout_s` from now. MAX_IN_FLIGHT
        senders take the pushes in turn (not a task and a timer for each push); a push not
        answered by the deadline, sent or still waiting, is a timeout."""
        deadline = self.loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.to_thread(self.auth.refresh)
        except TimeoutError:
            return [_result(push, None, "timeout") for push in pushes]
        answers: list[tuple[int | None, str | None]] = [(None, "timeout")] * len(pushes)
        queue = iter(enumerate(pushes))
        senders = [
            self._send_in_turn(queue, answers, deadline)
            for _ in range(min(MAX_IN_FLIGHT, len(pushes)))
        ]
        await asyncio.gather(*senders)
        return [_result(push, *answer) for push, answer in zip(pushes, answers, strict=True)]

    async def _send_in_turn(
        self,
        queue: Iterator[tuple[int, Push]],
        answers: list[tuple[int | None, str | None]],
        deadline: float,
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

    def _request(self, push: Push) -> PushRequest:
        """The push as aioapns sends it. Its `apns-id`: a canonical UUID unique to the push,
        this sender's random prefix and a count (cheaper than aioapns's uuid4 for each). Its
        body: encoded once for the pushes of a fan-out, which come in a row with the same
        title, body and data."""
        notification_id = f"{self.id_prefix}{next(self.id_numbers):012x}"
        last = self.last_body
        if last is None or not _same_payload(last[0], push):
            last = self.last_body = (push, encoded_payload(push))
        return PushRequest(push, last[1], notification_id)

    async def _attempt(self, push: Push) -> tuple[int | None, str | None]:
        try:
            result = await self.pool(push.environment).send_notification(self._request(push))
        except (ConnectionClosed, MaxAttemptsExceeded, StreamReset, OSError) as exc:
            return None, f"connection: {type(exc).__name__}"
        except Exception:
            # Not a known failure: logged in full, and retried rather than losing the batch.
            log.exception("APNs push to %s… failed unexpectedly", push.token[:8])
            return None, "error"
        return int(result.status), result.description

    def close(self) -> None:
        """Close the connections and the loop (at process shutdown, or new settings)."""
        asyncio.run_coroutine_threadsafe(self._close_pools(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _close_pools(self) -> None:
        for pool in self.pools.values():
            pool.close()
        give_up_at = self.loop.time() + 5
        while any(pool.connections for pool in self.pools.values()):
            if self.loop.time() > give_up_at:
                break
            await asyncio.sleep(0.01)  # let each connection_lost run
        await self.loop.shutdown_default_executor()


def _same_payload(sent: Push, push: Push) -> bool:
    return (sent.title, sent.body, sent.data) == (push.title, push.body, push.data)


def _result(push: Push, status: int | None, reason: str | None) -> PushResult:
    outcome = classify(status, reason)
    if outcome is Outcome.dropped:
        log.warning("APNs push to %s… dropped: %s %s", push.token[:8], status, reason)
    elif outcome is not Outcome.delivered:
        log.info("APNs push to %s… answered %s %s: %s", push.token[:8], status, reason, outcome)
    return PushResult(push, outcome, status, reason)


_sender: Sender | None = None
_sender_lock = threading.Lock()
_inherited: list[Sender] = []  # a parent's sender seen after fork: never used, never closed


def current_sender() -> Sender:
    global _sender
    with _sender_lock:
        if _sender is not None and _sender.pid != os.getpid():
            _inherited.append(_sender)  # its loop thread did not survive the fork
            _sender = None
        if _sender is not None and _sender.config != _apns_config():
            _sender.close()
            _sender = None
        if _sender is None:
            _sender = Sender()
        return _sender


def _after_fork_in_child() -> None:
    global _sender_lock
    _sender_lock = threading.Lock()  # it may have been held by a thread that is gone


os.register_at_fork(after_in_child=_after_fork_in_child)


def send_pushes(pushes: Sequence[Push], timeout_s: float = 15.0) -> list[PushResult]:
    """Send every push and wait for all answers, for at most `timeout_s` in all (a push not
    answered by then is a retry). One result per push, in order. Blocking; thread-safe.
    With no APNs key configured nothing is sent."""
    if not pushes:
        return []
    if not apns_enabled():
        return [PushResult(p, Outcome.dropped, None, "apns_not_configured") for p in pushes]
    sender = current_sender()
    future = asyncio.run_coroutine_threadsafe(sender.send_all(pushes, timeout_s), sender.loop)
    try:
        return future.result(timeout=timeout_s + RESULT_GRACE_S)
    except TimeoutError:
        future.cancel()
        log.error("APNs loop did not answer %d pushes within %.0f s", len(pushes), timeout_s)
        raise


def shutdown() -> None:
    """Close this process's APNs connections cleanly (worker shutdown, end of tests)."""
    global _sender
    with _sender_lock:
        if _sender is not None and _sender.pid == os.getpid():
            _sender.close()
        _sender = None
