"""Sign-in and sign-up throttling (Flask-Limiter on Redis), and the answers given when a limit
or the bound on password hashes (models.accounts.HashingSlots) says no.

Limits, each a moving window shared by every web process through Redis (keys under
`REDIS_PREFIX:throttle:`):
- login: `LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE` per client address, however many emails it
  tries, and `LOGIN_ATTEMPTS_PER_MINUTE` per (email, address);
- register: `REGISTRATIONS_PER_ADDRESS_PER_MINUTE` per client address.
A refusal is the contract's 429 `rate_limited` with `Retry-After`, answered before any
password is hashed. A body that fails validation is not counted (it is a 422 that hashes
nothing), so bad input leaves nothing behind.

The client address is the socket's peer. `X-Forwarded-For` is anyone's to write, so it is
read only behind proxies the deployment names: with `TRUSTED_PROXY_HOPS=N`, the address is
the N-th entry from the right (the one the outermost trusted proxy saw), werkzeug ProxyFix's
rule. Set it to the number of proxies that append to the header (1 behind one load
balancer), never more.

If Redis fails, the limiter fails open to per-process limits: each web process counts in its
own memory (the same limits, so N processes let up to N times as much through), logs the
fallback once, and probes Redis again at growing intervals (1 s up to 32 s) until it answers.
Not closed: a Redis outage must not lock every user out of signing in, and nothing else in
login or registration needs Redis. Not wide open: the throttle still holds per process, and
the bound on hashes keeps each process's CPU and request threads for the rest of the API.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from flask import Blueprint, Flask, Response, request
from flask.blueprints import BlueprintSetupState
from flask_limiter import Limiter, RateLimitExceeded
from pydantic import BaseModel, ValidationError
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from werkzeug.exceptions import HTTPException

from api.errors import RequestInvalid, error_response
from api.schemas import LoginBody, RegisterBody
from api.validation import validated_body
from models.accounts import PasswordHashingBusy, normalize_email
from settings import settings

P = ParamSpec("P")
R = TypeVar("R")

THROTTLED = "Too many attempts; try again later."
_WINDOW = "minute"


def client_address() -> str:
    """Whom to count a request against: the socket's peer, or behind `TRUSTED_PROXY_HOPS`
    proxies the address the outermost of them saw."""
    hops = settings.trusted_proxy_hops
    if hops:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",")]
        if len(forwarded) >= hops and forwarded[-hops]:
            return forwarded[-hops]
    return request.remote_addr or "unknown"


def _fails_validation(body: type[BaseModel]) -> Callable[[], bool]:
    """Whether the request's body fails validation: such a request is answered 422 (or 413)
    without hashing anything, so it is neither counted nor refused, and leaves nothing
    behind in Redis. (The limiter may check before flask-openapi3 validates the body.)"""

    def fails() -> bool:
        try:
            validated_body(body)
        except (RequestInvalid, ValidationError, HTTPException):
            return True
        return False

    return fails


def _address_and_email() -> str:
    """The (address, email) a login counts against, the email hashed so that no address
    book builds up in Redis keys. Only called for a valid body (see `_fails_validation`)."""
    try:
        email = normalize_email(validated_body(LoginBody).email)
    # Never raise: the limiter would blame Redis.
    except (RequestInvalid, ValidationError, HTTPException):
        email = ""
    digest = hashlib.sha256(email.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{client_address()}/{digest}"


_storage_options: dict[str, Any] = {
    "key_prefix": settings.redis_key("throttle"),
    "socket_connect_timeout": 0.5,
    "socket_timeout": 1,
    # Fail over to the in-memory fallback at once, not after redis-py's ten retries.
    "retry": Retry(NoBackoff(), 0),
}
limiter = Limiter(
    client_address,
    storage_uri=settings.redis_url,
    storage_options=_storage_options,
    strategy="moving-window",
    in_memory_fallback_enabled=True,
)


def limit_logins(view: Callable[P, R]) -> Callable[P, R]:
    fails_validation = _fails_validation(LoginBody)
    per_address = limiter.limit(
        f"{settings.login_attempts_per_address_per_minute}/{_WINDOW}",
        exempt_when=fails_validation,
        error_message=THROTTLED,
    )
    per_email = limiter.limit(
        f"{settings.login_attempts_per_minute}/{_WINDOW}",
        key_func=_address_and_email,
        exempt_when=fails_validation,
        error_message=THROTTLED,
    )
    return per_address(per_email(view))


def limit_registrations(view: Callable[P, R]) -> Callable[P, R]:
    per_address = limiter.limit(
        f"{settings.registrations_per_address_per_minute}/{_WINDOW}",
        exempt_when=_fails_validation(RegisterBody),
        error_message=THROTTLED,
    )
    return per_address(view)


def throttle_blueprint(bp: Blueprint) -> None:
    """Put the limited views of `bp` under the limiter: it is initialised on the app that
    registers `bp`, and refusals (a limit, or every hashing slot busy) are answered in the
    contract's error shape with `Retry-After`."""

    def limit_on_app(state: BlueprintSetupState) -> None:
        assert isinstance(state.app, Flask)
        _init_without_hooks(state.app)

    bp.record_once(limit_on_app)
    bp.register_error_handler(RateLimitExceeded, _rate_limited)
    bp.register_error_handler(PasswordHashingBusy, _hashing_busy)


def _init_without_hooks(app: Flask) -> None:
    """`limiter.init_app`, less the hooks it adds to every request of the app. Each limit
    here is a view's decorator (`limit_logins`, `limit_registrations`), which Flask-Limiter
    checks in the view's own wrapper; the hooks serve default, application and blueprint
    limits and rate-limit headers, none of which the API has, and cost every request of
    the API about 0.15 ms (and, with Redis down, a probe of it) for nothing."""
    hooks: tuple[dict[Any, list[Any]], ...] = (
        app.before_request_funcs,
        app.after_request_funcs,
        app.teardown_request_funcs,
    )
    kept = [list(funcs.get(None, ())) for funcs in hooks]
    limiter.init_app(app)
    for funcs, app_wide in zip(hooks, kept, strict=True):
        funcs[None] = app_wide


def _rate_limited(exc: RateLimitExceeded) -> Response:
    answer = error_response("rate_limited", THROTTLED)
    answer.headers["Retry-After"] = str(_seconds_until_allowed())
    return answer


def _seconds_until_allowed() -> int:
    """When the breached limit lets the next attempt in: the oldest attempt in its moving
    window leaves it then (its whole window if the store cannot say)."""
    breached = limiter.current_limit
    if breached is None:
        return 60
    try:
        reset_at = breached.window.reset_time
    except RedisError:
        return breached.limit.get_expiry()
    return max(1, math.ceil(reset_at - time.time()))


def _hashing_busy(exc: PasswordHashingBusy) -> Response:
    answer = error_response(exc.code, exc.message)
    answer.headers["Retry-After"] = str(exc.retry_after_s)
    return answer
