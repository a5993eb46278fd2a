"""Publishing tasks from the web process: by name, after commit, never blocking a request.

If the broker is down the publish fails fast and is logged with the job id; the job is
already committed, and the beat task `redispatch_undispatched` picks it up later.
"""

from __future__ import annotations

import logging

from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from models.db import after_commit
from workers.celery_app import app

log = logging.getLogger(__name__)

TASKS = "workers.tasks"


def enqueue(task: str, job_id: int) -> bool:
    """Publish `workers.tasks.<task>(job_id)` once. Not commit-safe: callers with an open
    transaction use `enqueue_after_commit`. Returns whether the broker took it."""
    try:
        app.send_task(f"{TASKS}.{task}", args=(job_id,), retry=False)
    except (KombuError, RedisError, OSError) as exc:
        log.error("could not enqueue %s for job %s (beat will retry): %s", task, job_id, exc)
        return False
    return True


def enqueue_after_commit(session: Session, task: str, job_id: int) -> None:
    after_commit(session, lambda: enqueue(task, job_id))
