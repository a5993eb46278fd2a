"""`python -m workers.relay`: the outbox sweep, a process of its own (the Procfile's `relay`).

Every SWEEP_EVERY_S it re-drives the announcements and pushes that are overdue (their enqueue
was lost, or the worker holding them died) and expires the pending jobs past their expiry,
handing what it finds to the workers as tasks; every RECONCILE_EVERY_S (and at once when
Redis has lost it) it makes the index of dispatchable drivers agree with the database
(models.positions). A pass that finds nothing sends no task and logs nothing, so Flower's
task list and the log show the real work, not ~2,000 empty sweeps an hour.

An event is overdue only once it is older than RELAY_AFTER_S plus the time its queue's
tasks now wait before a worker starts them (workers.backlog): while the workers are behind,
its task is most likely still queued, and a copy behind it would only lengthen the queue.
An overdue event is handed out again only after a hold that doubles with each re-drive of it
(RELAY_HOLD_S, then 10, 20 … up to RELAY_MAX_HOLD_S): a backlog in a slow queue is not
multiplied by every pass, and a copy lost with a dying worker is soon sent again. Running
more than one relay is safe (the claims and the expiry's conditional UPDATE make each
finding one relay's). A pass that fails (PostgreSQL, Redis or the broker away) is logged as
an error and the next one tries again: nothing is lost, it waits in the outbox.
"""

from __future__ import annotations

import logging
import signal
import threading

from kombu.exceptions import OperationalError as BrokerUnavailable
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable

from models.db import redis_connection, session_scope
from models.job_events import overdue_push_event_ids, unannounced_events
from models.lifecycle import expire_due_jobs
from models.positions import RECONCILE_EVERY_S, reconcile_standing, standing_lost
from settings import settings
from workers.backlog import queue_waits
from workers.celery_app import app
from workers.enqueue import TASKS, announce, enqueue_push
from workers.logs import configure_logging
from workers.metrics import INDEX_REPAIRED, SWEEP_REDRIVEN, serve_scrapes

log = logging.getLogger(__name__)

RELAY_HOLD_S = 5  # short: a re-driven copy lost with a second dying worker is sent again soon
RELAY_MAX_HOLD_S = 60
# KEYS: the event's hold, its count of re-drives. ARGV: first hold s, longest hold s.
_CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local drives = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 10 * tonumber(ARGV[2]))
local hold = math.min(tonumber(ARGV[1]) * 2 ^ (drives - 1), tonumber(ARGV[2]))
redis.call('SET', KEYS[1], 1, 'EX', math.floor(hold))
return 1
"""
RELAY_BATCH = 500


def _queue_of(task: str) -> str:
    """The queue Celery routes `workers.tasks.<task>` to (celeryconfig's task_routes)."""
    return str(app.amqp.router.route({}, f"{TASKS}.{task}")["queue"].name)


ANNOUNCEMENT_QUEUE, PUSH_QUEUE = QUEUES = (_queue_of("notify_nearby"), _queue_of("send_push"))
SWEEP_EVERY_S = max(1.0, settings.relay_after_s / 2)
UNREACHABLE = (RedisError, BrokerUnavailable, DatabaseUnavailable, OSError)


def claim_relays(kind: str, event_ids: list[int]) -> list[int]:
    """The events this sweep may re-drive (one round trip for all): those whose hold has
    passed, each then held for twice as long as the last time."""
    pipe = redis_connection().pipeline(transaction=False)
    for event_id in event_ids:
        hold, drives = (settings.redis_key("relay", kind, event_id, part) for part in ("hold", "n"))
        pipe.eval(_CLAIM_SCRIPT, 2, hold, drives, RELAY_HOLD_S, RELAY_MAX_HOLD_S)
    claimed = pipe.execute() if event_ids else []
    return [event_id for event_id, took in zip(event_ids, claimed, strict=True) if took]


def overdue_announcements(queue_wait_s: float) -> list[tuple[int, str]]:
    """Unannounced events older than RELAY_AFTER_S plus the dispatch queue's wait (one still
    queued is not lost), claimed for this sweep."""
    with session_scope() as session:
        events = unannounced_events(session, settings.relay_after_s + queue_wait_s, RELAY_BATCH)
    claimed = set(claim_relays("announce", [event_id for event_id, _ in events]))
    return [(event_id, type_) for event_id, type_ in events if event_id in claimed]


def overdue_pushes(queue_wait_s: float) -> list[int]:
    """Events whose pushes were due longer ago than the push queue's wait, claimed."""
    with session_scope() as session:
        event_ids = overdue_push_event_ids(session, queue_wait_s, RELAY_BATCH)
    return claim_relays("push", list(event_ids))


def expire_jobs() -> int:
    """Expire the pending jobs past their offer time and hand their events to the workers."""
    with session_scope() as session:
        expired = [(event.id, event.type) for event in expire_due_jobs(session)]
    announce(expired)
    if expired:
        log.info("expired %d jobs past their offer time", len(expired))
    return len(expired)


def reconcile_index(force: bool = False) -> list[int]:
    """Reconcile the dispatchable drivers' index, when due: every RECONCILE_EVERY_S across
    all relays (a Redis claim), or at once when Redis has lost the set or `force`. Returns
    the drivers whose entry was wrong, logged: each is a write lost to an error or a race."""
    r = redis_connection()
    due = r.set(settings.redis_key("relay", "reconcile"), 1, nx=True, ex=int(RECONCILE_EVERY_S))
    if not (due or force or standing_lost(r)):
        return []
    wrong = reconcile_standing(r)
    INDEX_REPAIRED.inc(len(wrong))
    if wrong:
        log.warning("dispatchable index put right for %d drivers: %s", len(wrong), wrong[:20])
    return wrong


def sweep() -> None:
    """One pass: re-drive what is overdue and expire what is due (a task for each), logged
    only if anything."""
    waits = queue_waits(QUEUES)
    announcements = overdue_announcements(waits[ANNOUNCEMENT_QUEUE])
    announce(announcements)
    pushes = overdue_pushes(waits[PUSH_QUEUE])
    for event_id in pushes:
        enqueue_push(event_id)
    SWEEP_REDRIVEN.labels("announcement").inc(len(announcements))
    SWEEP_REDRIVEN.labels("push").inc(len(pushes))
    if announcements or pushes:
        log.warning("re-driving %d announcements and %d pushes", len(announcements), len(pushes))
    expire_jobs()
    reconcile_index()


def sweep_until(stopped: threading.Event, every_s: float = SWEEP_EVERY_S) -> None:
    while not stopped.is_set():
        try:
            sweep()
        except UNREACHABLE as exc:
            log.error("sweep failed (next in %.1f s): %s", every_s, exc)
        stopped.wait(every_s)


def main() -> None:
    configure_logging()
    if settings.metrics_port is not None:
        serve_scrapes(settings.bind_host, settings.metrics_port)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    log.info("relay: sweeping the outbox every %.1f s", SWEEP_EVERY_S)
    sweep_until(stopped)


if __name__ == "__main__":
    main()
