"""The outbox sweep: which announcements and pushes are overdue, each handed out at most
once per RELAY_HOLD_S so that a backlog is not multiplied by every beat tick."""

from __future__ import annotations

from models.db import redis_connection, session_scope
from models.job_events import overdue_push_event_ids, unannounced_events
from settings import settings

RELAY_HOLD_S = 5  # short: a re-driven copy lost with a second dying worker is sent again soon
RELAY_BATCH = 500


def _claim_relay(kind: str, event_id: int) -> bool:
    """Take this event's relay for RELAY_HOLD_S; False when a sweep took it lately."""
    key = settings.redis_key("relay", kind, event_id)
    return bool(redis_connection().set(key, 1, nx=True, ex=RELAY_HOLD_S))


def overdue_announcements() -> list[tuple[int, str]]:
    with session_scope() as session:
        events = unannounced_events(session, settings.relay_after_s, RELAY_BATCH)
    return [(event_id, type_) for event_id, type_ in events if _claim_relay("announce", event_id)]


def overdue_pushes() -> list[int]:
    with session_scope() as session:
        event_ids = overdue_push_event_ids(session, RELAY_BATCH)
    return [event_id for event_id in event_ids if _claim_relay("push", event_id)]
