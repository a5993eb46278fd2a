"""The Celery app. Configured from `celeryconfig`; the tasks live in `workers.tasks`.

Its processes log as every other (`workers.logs`): Celery's `setup_logging` signal hands
the set-up to `configure_logging` (Celery then installs no handler of its own), and each task
runs in a log context of its own with its task id and the request id its message carries."""

from __future__ import annotations

import logging
from contextvars import Token
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging, task_postrun, task_prerun
from kombu.exceptions import KombuError

from settings import settings
from workers.backlog import PUBLISHED_HEADER, note_start
from workers.logs import REQUEST_ID_HEADER, LogIds, close_context, configure_logging, open_context

log = logging.getLogger(__name__)

app = Celery("dispatch")
app.config_from_object("celeryconfig")
app.conf.include = ["workers.tasks"]

_task_contexts: dict[str, Token[LogIds]] = {}


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    configure_logging(loglevel or "INFO")


@celeryd_init.connect
def _log_from_the_start(
    instance: Any = None, options: dict[str, Any] | None = None, **_: Any
) -> None:
    """A worker's lines before Celery sets its logging up (its warning when it runs as
    root) are log lines too. Its start-up banner is printed, not logged: under
    LOG_FORMAT=json it is left out, as by `celery worker --quiet`."""
    configure_logging((options or {}).get("loglevel") or "INFO")
    if settings.log_format == "json" and instance is not None:
        instance.quiet = True


@celeryd_init.connect
def _declare_every_queue(**_: Any) -> None:
    """On RabbitMQ each worker binds every queue's exchange to Celery's delay exchanges as it
    starts (native delayed delivery), which fails for an exchange nobody declared yet: a
    dispatch worker first on a new broker would log that delayed delivery is unavailable.
    So every worker first declares every queue, with its exchange and binding."""
    with app.connection_for_write() as connection:
        if connection.transport.driver_type != "amqp":
            return
        errors = (KombuError, OSError, *connection.connection_errors, *connection.channel_errors)
        try:
            connection.ensure_connection(max_retries=1)
            for queue in app.amqp.queues.values():
                queue(connection.default_channel).declare()
        except errors as exc:
            log.warning("queues not declared before delayed delivery's bindings: %s", exc)


@task_prerun.connect
def _open_task_context(task_id: str = "", task: Any = None, **_: Any) -> None:
    request_id = task.request.get(REQUEST_ID_HEADER) if task is not None else None
    _task_contexts[task_id] = open_context(task_id=task_id, request_id=request_id)


@task_prerun.connect
def _note_queue_wait(task: Any = None, **_: Any) -> None:
    """A first attempt's wait in its queue (a retry carries its first publish's time)."""
    if task is not None and not task.request.retries:
        queue = (task.request.delivery_info or {}).get("routing_key")
        if queue:
            note_start(queue, task.request.get(PUBLISHED_HEADER))


@task_postrun.connect
def _close_task_context(task_id: str = "", **_: Any) -> None:
    token = _task_contexts.pop(task_id, None)
    if token is not None:
        close_context(token)
