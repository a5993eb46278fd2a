"""Login throttling: a fixed window per email and client address, counted in Redis."""

from __future__ import annotations

import logging

import redis

from models.errors import RateLimited
from settings import settings

log = logging.getLogger(__name__)


def check_login_rate(r: redis.Redis, email: str, client: str) -> None:
    """Raise RateLimited past LOGIN_ATTEMPTS_PER_MINUTE. If Redis is down the attempt is
    let through and the failure logged: availability of login beats throttling."""
    key = settings.redis_key("login", email.strip().lower(), client)
    try:
        pipe = r.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 60, nx=True)
        attempts = int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("login throttle unavailable, letting the attempt through: %s", exc)
        return
    if attempts > settings.login_attempts_per_minute:
        raise RateLimited()
