"""Celery configuration, read by `workers.celery_app` (one place for every Celery setting).

Celery's `config_from_object` takes every public name of this module as a setting, and
`celery inspect conf` and Flower show them (masking only names that look secret, and the
password of `broker_url`): so the imports here are private names, and only plain values are
public. A public `settings` would put the whole Settings object, SECRET_KEY and every URL
with its password, into the app's conf.

Two brokers, chosen by the scheme of `CELERY_BROKER_URL` (README, "Which broker"): Redis
(`REDIS_URL`, the default) or RabbitMQ (`amqp://`). Both carry the same queues, exchanges and
routing keys; what differs is below, each part with its why.
"""

from kombu import Exchange as _Exchange
from kombu import Queue as _Queue

from settings import settings as _settings

broker_url = _settings.broker_url

# A publisher whose broker is down fails within about a second instead of retrying for
# many: the web request must not hang (the relay's sweep re-drives what was not published).
_FAIL_FAST = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "connect_retries_timeout": _settings.broker_publish_timeout_s * 2,
}
if _settings.broker_is_rabbitmq:
    broker_transport_options = {
        **_FAIL_FAST,
        # Each publish waits for the broker's ack: without it a broker in a memory or disk
        # alarm, or a connection that died unnoticed, loses the task silently.
        "confirm_publish": True,
    }
    # The TCP connect and the AMQP handshake, which Redis's socket_connect_timeout bounds there.
    broker_connection_timeout = _settings.broker_publish_timeout_s
    # Quorum queues: replicated across a cluster's nodes, and on disk. They take no global
    # QoS (Celery then sets each consumer's prefetch), so countdown and ETA tasks are held
    # in the broker's delay queues (Celery's native delayed delivery, declared by each
    # worker at start) rather than in a worker's memory; that needs topic exchanges.
    task_default_queue_type = "quorum"
    task_default_exchange_type = "topic"
    _EXCHANGE_TYPE = "topic"
    _QUEUE_ARGUMENTS: dict[str, str] | None = {"x-queue-type": "quorum"}
else:
    broker_transport_options = {
        **_FAIL_FAST,
        # Longer than any retry countdown, so a delayed late-acked task is not redelivered
        # early; it is also how long a dead worker's unacked tasks wait before Redis gives
        # them back (the relay's sweep re-drives them long before).
        "visibility_timeout": 3600,
        "global_keyprefix": f"{_settings.redis_prefix}:celery:",
        "socket_connect_timeout": _settings.broker_publish_timeout_s,
        "socket_timeout": 5,
    }
    if broker_url.startswith("redis://"):
        # kombu's Redis transport, but one Redis client per channel for its commands instead
        # of a new one for every publish and acknowledgement (workers/redis_transport.py).
        # Not for rediss:// (kombu reads TLS from the scheme's own transport name).
        broker_transport = "workers.redis_transport:Transport"
    _EXCHANGE_TYPE = "direct"
    _QUEUE_ARGUMENTS = None
broker_connection_retry_on_startup = True
result_backend = None
task_ignore_result = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 4
# No task-sent event: it is a second publish with every task (0.35 ms of each request that
# enqueues); Flower follows tasks from the workers' received/started/succeeded events, and an
# announcement never received shows as an unannounced job_events row, which the sweep re-drives.
task_send_sent_event = False
worker_send_task_events = True

task_default_queue = "dispatch"
task_default_exchange = "dispatch"
task_default_routing_key = "dispatch"
# Each queue on its own exchange and key, so a push task can only ever land in `push`.
task_queues = (
    _Queue(
        "dispatch",
        _Exchange("dispatch", type=_EXCHANGE_TYPE),
        routing_key="dispatch",
        queue_arguments=_QUEUE_ARGUMENTS,
    ),
    _Queue(
        "push",
        _Exchange("push", type=_EXCHANGE_TYPE),
        routing_key="push",
        queue_arguments=_QUEUE_ARGUMENTS,
    ),
)
# A task names only its queue: Celery takes the queue's exchange and key from task_queues
# (RabbitMQ), or, for a direct exchange (Redis), puts the task onto the queue by name, which
# needs no binding looked up or declared first (workers.enqueue.DECLARE).
task_routes = {
    "workers.tasks.send_push": {"queue": "push"},
    "workers.tasks.*": {"queue": "dispatch"},
}

timezone = "UTC"
