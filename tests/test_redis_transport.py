"""The Redis broker's transport (workers/redis_transport.py) and how tasks are published on it
(workers/enqueue.py): one client per channel, and a task on its queue's list even where no
worker ever declared the queue. The worker tests consume what these publish."""

import base64
import json

from models.db import redis_connection
from settings import settings
from workers.celery_app import app as celery_app
from workers.enqueue import enqueue
from workers.redis_transport import Transport


def test_a_channel_sends_its_commands_through_one_client_per_pool() -> None:
    with celery_app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool

        channel._disconnect_pools()  # what kombu does in a forked child, and on close
        renewed = channel._create_client()
        assert renewed is not first
        assert renewed.connection_pool is channel.pool
        assert renewed.ping()


def test_a_task_lands_on_its_queue_with_no_binding_declared() -> None:
    """As on a Redis restarted since the workers declared their queues (it keeps nothing on
    disk here): a task routed through its exchange would find no binding and be set aside
    as undeliverable; by its queue's name it is where a worker will look."""
    r = redis_connection()
    prefix = f"{settings.redis_prefix}:celery:"
    r.delete(f"{prefix}_kombu.binding.dispatch", f"{prefix}_kombu.binding.push")

    assert enqueue("notify_nearby", 7)
    assert enqueue("send_push", 8)

    [dispatch] = r.lrange(f"{prefix}dispatch", 0, -1)
    [push] = r.lrange(f"{prefix}push", 0, -1)
    for raw, task, event_id in ((dispatch, "notify_nearby", 7), (push, "send_push", 8)):
        message = json.loads(raw)
        assert message["headers"]["task"] == f"workers.tasks.{task}"
        assert message["headers"]["argsrepr"] == f"({event_id},)"
        assert message["headers"]["kwargsrepr"] == "{}"
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert (args, kwargs) == ([event_id], {})
