"""The APNs provider token (an ES256 JWT), signed by one process and shared through Redis, so
that many worker processes never trip Apple's TooManyProviderTokenUpdates."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jwt
import redis
from aioapns.connection import AuthorizationHeaderProvider

from models.db import redis_connection
from settings import settings

log = logging.getLogger(__name__)

TOKEN_REUSE_S = 40 * 60  # a shared token is re-signed after 40 min: inside Apple's 20–60 min
TOKEN_MIN_AGE_FOR_RESIGN_S = 20 * 60  # Apple answers TooManyProviderTokenUpdates below this
TOKEN_LOCK_WAIT_S = 2.0  # how long a process waits for another to sign
TOKEN_LOCK_TTL_S = 10  # a signer that dies holding the lock holds it no longer than this


def _sign(key: str, issued_at: int) -> str:
    return jwt.encode(
        {"iss": settings.apns_team_id, "iat": issued_at},
        key,
        algorithm="ES256",
        headers={"kid": settings.apns_key_id},
    )


def _parse_shared(raw: Any) -> tuple[int, str] | None:
    """Redis holds the shared token as `<iat>:<jwt>`."""
    issued_at, _, token = str(raw or "").partition(":")
    if not issued_at.isdigit() or not token:
        return None
    return int(issued_at), token


class SharedProviderToken(AuthorizationHeaderProvider):
    """The `authorization` header for every connection of this process.

    aioapns asks for the header on the event loop for every request, so `get_header` only
    returns the token held; `refresh` (blocking, run in a thread) keeps it young enough. The
    token lives in Redis; a process reuses it while it is younger than TOKEN_REUSE_S, and one
    process (holding a short lock) signs the next. After ExpiredProviderToken (`rejected`) it
    is replaced, but only if at least 20 minutes old: Apple refuses faster updates."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.issued_at = 0
        self.token = ""
        self._lock = threading.Lock()

    def get_header(self) -> str:
        return f"bearer {self.token}"

    def refresh(self, rejected: bool = False) -> None:
        with self._lock:
            now = time.time()
            if not self._too_old(now - self.issued_at, rejected):
                return
            try:
                self.issued_at, self.token = self._shared(now, rejected)
            except redis.RedisError as exc:
                log.warning("APNs provider token not shared (Redis: %s); signing locally", exc)
                self.issued_at, self.token = self._signed(now)

    @staticmethod
    def _too_old(age_s: float, rejected: bool) -> bool:
        return age_s >= (TOKEN_MIN_AGE_FOR_RESIGN_S if rejected else TOKEN_REUSE_S)

    def _signed(self, now: float) -> tuple[int, str]:
        return int(now), _sign(self.key, int(now))

    def _shared(self, now: float, rejected: bool) -> tuple[int, str]:
        """The shared token if young enough; else one process signs the next under a Redis
        lock while the others wait for it, up to TOKEN_LOCK_WAIT_S, then read it."""
        r = redis_connection()
        key = settings.redis_key("apns", "provider_token")
        shared = self._young_shared(r.get(key), now, rejected)
        if shared is not None:
            return shared
        lock = r.lock(
            settings.redis_key("apns", "provider_token", "lock"),
            timeout=TOKEN_LOCK_TTL_S,
            sleep=0.05,
            blocking_timeout=TOKEN_LOCK_WAIT_S,
            raise_on_release_error=False,  # held past its TTL: another may hold it now
        )
        if not lock.acquire():
            shared = self._young_shared(r.get(key), now, rejected)
            if shared is not None:
                return shared
            log.warning("APNs provider token lock held too long; signing locally")
            return self._signed(now)
        try:
            shared = self._young_shared(r.get(key), now, rejected)  # signed while we waited
            if shared is not None:
                return shared
            signed = self._signed(now)
            r.set(key, f"{signed[0]}:{signed[1]}", ex=60 * 60)
            return signed
        finally:
            lock.release()

    def _young_shared(self, raw: Any, now: float, rejected: bool) -> tuple[int, str] | None:
        shared = _parse_shared(raw)
        if shared is None or self._too_old(now - shared[0], rejected):
            return None
        return shared
