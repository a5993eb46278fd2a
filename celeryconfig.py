"""Celery configuration, read by `workers.celery_app` (one place for every Celery setting).

Celery's `config_from_object` takes every public name of this module as a setting, and
`celery inspect conf` and Flower show them (masking only names that look secret, and the
password of `broker_url`): so the imports here are private names, and only plain values are
public. A public `settings` would put the whole Settings object, SECRET_KEY and every URL
with its password, into the app's conf.
"""

from kombu import Exchange as _Exchange
from kombu import Queue as _Queue

from settings import settings as _settings

broker_url = _settings.broker_url
broker_transport_options = {
    # Longer than any retry countdown, so a delayed late-acked task is not redelivered early.
    "visibility_timeout": 3600,
    "global_keyprefix": f"{_settings.redis_prefix}:celery:",
    "socket_connect_timeout": _settings.broker_publish_timeout_s,
    # A publisher whose broker is down fails within about a second instead of retrying
    # for many: the web request must not hang (the relay's sweep re-drives what was not published).
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "connect_retries_timeout": _settings.broker_publish_timeout_s * 2,
    "socket_timeout": 5,
}
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
    _Queue("dispatch", _Exchange("dispatch", type="direct"), routing_key="dispatch"),
    _Queue("push", _Exchange("push", type="direct"), routing_key="push"),
)
task_routes = {
    "workers.tasks.send_push": {"queue": "push", "exchange": "push", "routing_key": "push"},
    "workers.tasks.*": {"queue": "dispatch"},
}

timezone = "UTC"
