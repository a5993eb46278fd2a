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
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from aioapns.connection import NoAvailableStreamIDError
from aioapns.exceptions import ConnectionClosed

from settings import settings
from workers.apns.aioapns_pool import (
    CONNECT_RETRY_S,
    MAX_CONNECTION_ATTEMPTS,
    DispatchPool,
    PushFields,
    encoded_payload,
    push_fields,
)
from workers.apns.provider_token import SharedProviderToken
from workers.apns.pushes import Push
from workers.apns.results import EXPIRED_PROVIDER_TOKEN, Outcome, PushResult, classify

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 100  # aioapns is fastest with 50–200 in flight; more only makes it poll
RESULT_GRACE_S = 5.0

Answer = tuple[int | None, str | None]  # status and reason; no status: no answer came
TIMED_OUT: Answer = (None, "timeout")


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
    """The process's loop thread and its provider token, under whichever way of sending
    (PoolSender, the process's own; bench/push_httpx.py's, to measure against)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.config = _apns_config()
        self.key = Path(settings.apns_key_path).read_text()
        self.auth = SharedProviderToken(self.key)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="apns", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _refreshed(self, deadline: float) -> bool:
        """The provider token young enough to send with, by `deadline`."""
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.to_thread(self.auth.refresh)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Close the connections and the loop (at process shutdown, or new settings)."""
        asyncio.run_coroutine_threadsafe(self._close_pools(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _close_pools(self) -> None:
        await self.loop.shutdown_default_executor()


class _FanOut:
    """The pushes of one `send_all`: their answers so far, how many are not answered yet, how
    many are in flight, and the future its caller awaits."""

    __slots__ = ("answers", "unanswered", "in_flight", "over", "done")

    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self.answers: list[Answer] = [TIMED_OUT] * count
        self.unanswered = count
        self.in_flight = 0
        self.over = False  # answered, or given up on at the deadline
        self.done = done

    def answer(self, index: int, status: int | None, reason: str | None) -> None:
        self.answers[index] = (status, reason)
        self.unanswered -= 1
        if not self.unanswered and not self.done.done():
            self.done.set_result(None)


class _Send:
    """A push on its way: in its environment's queue, or on a stream waiting for its answer
    (it is the `Waiting` its connection tells)."""

    __slots__ = ("sender", "fan_out", "index", "push", "payload", "attempts", "re_signed")

    def __init__(
        self,
        sender: PoolSender,
        fan_out: _FanOut,
        index: int,
        push: Push,
        payload: tuple[bytes, PushFields],
    ) -> None:
        self.sender = sender
        self.fan_out = fan_out
        self.index = index
        self.push = push
        self.payload = payload
        self.attempts = 0  # connections it was lost on, or found none
        self.re_signed = False

    def answered(self, status: int, reason: str | None) -> None:
        self.sender.answered(self, status, reason)

    def failed(self, error: Exception) -> None:
        self.sender.failed(self, error)


class PoolSender(Sender):
    """The process's sender, on aioapns's pools (one per APNs environment), driven by
    callbacks: the pushes of every fan-out wait in their environment's queue, and whenever a
    stream is free (a connection opened, an answer came) and fewer than MAX_IN_FLIGHT are in
    flight, the next is framed and written at once (`_pump`). No coroutine, future or
    semaphore for each push: one future for each fan-out, done when all its pushes are
    answered or failed.

    The same rules as every push awaiting aioapns's pool: a push is tried on up to
    MAX_CONNECTION_ATTEMPTS connections (one lost under it, or none to be had, is an attempt;
    the next waits CONNECT_RETRY_S after a failure to connect); after ExpiredProviderToken it
    is sent once more with a freshly signed token; a push not answered by its fan-out's
    deadline is a timeout, and its slot in flight is free at once."""

    def __init__(self) -> None:
        super().__init__()
        self.pools: dict[str, DispatchPool] = {}
        self.queues: dict[str, deque[_Send]] = {}
        self.sending = 0  # pushes in flight, of fan-outs not over
        self.re_signing: list[_Send] = []
        self.re_sign: asyncio.Task[None] | None = None
        self.id_prefix = str(uuid.uuid4())[:24]
        self.id_numbers = itertools.count()
        self.last_payload: tuple[tuple[object, ...], tuple[bytes, PushFields]] | None = None

    def pool(self, environment: str) -> DispatchPool:
        if environment not in self.pools:
            self.pools[environment] = DispatchPool(
                environment, self.key, self.auth, self._pump, self._unreachable
            )
            self.queues[environment] = deque()
        return self.pools[environment]

    async def send_all(self, pushes: Sequence[Push], timeout_s: float) -> list[PushResult]:
        """Every push answered, or given up on, by `timeout_s` from now; a push not answered
        by the deadline, sent or still queued, is a timeout."""
        deadline = self.loop.time() + timeout_s
        if not await self._refreshed(deadline):
            return [push_result(push, None, "timeout") for push in pushes]
        fan_out = _FanOut(len(pushes), self.loop.create_future())
        for index, push in enumerate(pushes):
            self.pool(push.environment)
            send = _Send(self, fan_out, index, push, self._payload(push))
            self.queues[push.environment].append(send)
        self._pump()
        try:
            async with asyncio.timeout_at(deadline):
                await fan_out.done
        except TimeoutError:
            pass  # what is unanswered keeps its (None, "timeout")
        finally:
            self._give_up(fan_out)
        answers = fan_out.answers
        return [push_result(push, *answer) for push, answer in zip(pushes, answers, strict=True)]

    def _payload(self, push: Push) -> tuple[bytes, PushFields]:
        """The push's body and shared headers: encoded once for the pushes of a fan-out, which
        come in a row with the same title, body, data and headers."""
        key: tuple[object, ...] = (push.title, push.body, push.data, push.push_type)
        key += (push.priority, push.collapse_id, push.expiration)
        last = self.last_payload
        if last is None or last[0] != key:
            last = self.last_payload = (key, (encoded_payload(push), push_fields(push)))
        return last[1]

    def _apns_id(self) -> bytes:
        """A canonical UUID unique to the push: this sender's random prefix and a count
        (cheaper than a uuid4 for each)."""
        return f"{self.id_prefix}{next(self.id_numbers):012x}".encode()

    def _pump(self) -> None:
        """The queued pushes onto free streams while fewer than MAX_IN_FLIGHT are in flight;
        with no free stream, one more connection is opened (when it is, this runs again)."""
        for environment, queue in self.queues.items():
            if queue and self.sending < MAX_IN_FLIGHT:
                self._pump_queue(self.pools[environment], queue)

    def _pump_queue(self, pool: DispatchPool, queue: deque[_Send]) -> None:
        connection = None
        while queue and self.sending < MAX_IN_FLIGHT:
            send = queue.popleft()
            fan_out = send.fan_out
            if fan_out.over:
                continue
            if connection is None or connection.is_busy:
                connection = pool.free_connection()
                if connection is None:
                    queue.appendleft(send)
                    pool.open_connection(retry=send.attempts > 0)
                    return
            try:
                connection.send_push(send, send.push.token, self._apns_id(), *send.payload)
            except NoAvailableStreamIDError:
                connection.close()
                self._retry(send, queue)
                continue
            except ConnectionClosed:
                self._retry(send, queue)
                continue
            except Exception:
                # Not a known failure: logged in full, and retried rather than losing the batch.
                log.exception("APNs push to %s… failed unexpectedly", send.push.token[:8])
                fan_out.answer(send.index, None, "error")
                continue
            self.sending += 1
            fan_out.in_flight += 1

    def _retry(self, send: _Send, queue: deque[_Send]) -> None:
        """Back to the head of its queue for another connection, or MaxAttemptsExceeded."""
        send.attempts += 1
        if send.attempts < MAX_CONNECTION_ATTEMPTS:
            queue.appendleft(send)
            return
        token, attempts = send.push.token[:8], MAX_CONNECTION_ATTEMPTS
        log.error("APNs push to %s…: no answer after %d attempts", token, attempts)
        send.fan_out.answer(send.index, None, "connection: MaxAttemptsExceeded")

    def answered(self, send: _Send, status: int, reason: str | None) -> None:
        fan_out = send.fan_out
        if not fan_out.over:
            self.sending -= 1
            fan_out.in_flight -= 1
            if (status, reason) == EXPIRED_PROVIDER_TOKEN and not send.re_signed:
                self._re_sign(send)
            else:
                fan_out.answer(send.index, status, reason)
        self._pump()

    def failed(self, send: _Send, error: Exception) -> None:
        fan_out = send.fan_out
        if not fan_out.over:
            self.sending -= 1
            fan_out.in_flight -= 1
            if isinstance(error, ConnectionClosed):
                self._retry(send, self.queues[send.push.environment])
            else:
                fan_out.answer(send.index, None, f"connection: {type(error).__name__}")
        self._pump()

    def _unreachable(self, pool: DispatchPool) -> None:
        """No connection could be opened: an attempt for each push waiting for one; the next
        after CONNECT_RETRY_S."""
        queue = self.queues[pool.environment]
        waiting = [send for send in queue if not send.fan_out.over]
        queue.clear()
        for send in waiting:
            self._retry(send, queue)
        queue.reverse()  # `_retry` put each back at the head
        self.loop.call_later(CONNECT_RETRY_S, self._pump)

    def _re_sign(self, send: _Send) -> None:
        """Sent again once the provider token is re-signed (one thread for all that wait)."""
        send.re_signed = True
        self.re_signing.append(send)
        if self.re_sign is None:
            self.re_sign = self.loop.create_task(self._re_signed())

    async def _re_signed(self) -> None:
        try:
            await asyncio.to_thread(self.auth.refresh, True)
        except Exception:
            log.exception("APNs provider token not re-signed; the pushes go with the old one")
        finally:
            sends, self.re_signing, self.re_sign = self.re_signing, [], None
            for send in reversed(sends):
                self.queues[send.push.environment].appendleft(send)
            self._pump()

    def _give_up(self, fan_out: _FanOut) -> None:
        """A fan-out answered or past its deadline: its pushes still in flight free their
        slots, and those still queued are skipped."""
        if fan_out.over:
            return
        fan_out.over = True
        if fan_out.in_flight:
            self.sending -= fan_out.in_flight
            fan_out.in_flight = 0
            self._pump()

    async def _close_pools(self) -> None:
        for pool in self.pools.values():
            pool.close()
        give_up_at = self.loop.time() + 5
        while any(pool.connections for pool in self.pools.values()):
            if self.loop.time() > give_up_at:
                break
            await asyncio.sleep(0.01)  # let each connection_lost run
        await super()._close_pools()


def push_result(push: Push, status: int | None, reason: str | None) -> PushResult:
    """The push's outcome from its answer (or none), logged unless delivered."""
    outcome = classify(status, reason)
    if outcome is Outcome.dropped:
        log.warning("APNs push to %s… dropped: %s %s", push.token[:8], status, reason)
    elif outcome is not Outcome.delivered:
        log.info("APNs push to %s… answered %s %s: %s", push.token[:8], status, reason, outcome)
    return PushResult(push, outcome, status, reason)


_sender: PoolSender | None = None
_sender_lock = threading.Lock()
_inherited: list[Sender] = []  # a parent's sender seen after fork: never used, never closed


def current_sender() -> PoolSender:
    global _sender
    with _sender_lock:
        if _sender is not None and _sender.pid != os.getpid():
            _inherited.append(_sender)  # its loop thread did not survive the fork
            _sender = None
        if _sender is not None and _sender.config != _apns_config():
            _sender.close()
            _sender = None
        if _sender is None:
            _sender = PoolSender()
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
