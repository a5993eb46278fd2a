"""What APNs answered for one push, and what that means for its token."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from workers.apns.pushes import Push

DEAD_TOKEN_REASONS = {
    410: frozenset({"Unregistered", "ExpiredToken"}),
    400: frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"}),
}
EXPIRED_PROVIDER_TOKEN = (403, "ExpiredProviderToken")


class Outcome(StrEnum):
    delivered = "delivered"
    retry = "retry"
    token_dead = "token_dead"
    dropped = "dropped"


@dataclass(frozen=True)
class PushResult:
    """APNs's answer to one push: `status` and `reason` as Apple sent them (None: none came)."""

    push: Push
    outcome: Outcome
    status: int | None
    reason: str | None


def classify(status: int | None, reason: str | None) -> Outcome:
    """What a token's answer means: delivered, retry later, token dead, or drop.
    `status` None is no answer at all (timeout, connection failure)."""
    if status == 200:
        return Outcome.delivered
    if status is None or status == 429 or status >= 500:
        return Outcome.retry
    if reason in DEAD_TOKEN_REASONS.get(status, frozenset()):
        return Outcome.token_dead
    if (status, reason) == EXPIRED_PROVIDER_TOKEN:
        return Outcome.retry  # send_pushes already re-signed and retried once
    return Outcome.dropped
