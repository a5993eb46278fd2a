"""A push to one device token: what Dispatch asks APNs to deliver."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aioapns.common import PushType

APPLE_HOSTS = {"production": "api.push.apple.com", "sandbox": "api.sandbox.push.apple.com"}


@dataclass(frozen=True)
class Push:
    token: str
    environment: str
    title: str
    body: str | None
    data: dict[str, Any] = field(default_factory=dict)
    push_type: str = "alert"
    priority: int | None = 10
    collapse_id: str | None = None
    expiration: datetime | None = None

    def __post_init__(self) -> None:
        """A bad environment or push type is a programming error: fail where it is made."""
        if self.environment not in APPLE_HOSTS:
            raise ValueError(f"unknown APNs environment {self.environment!r}")
        PushType(self.push_type)

    def payload(self) -> dict[str, Any]:
        alert: dict[str, str] = {"title": self.title}
        if self.body is not None:
            alert["body"] = self.body
        return {"aps": {"alert": alert, "sound": "default"}, **self.data}
