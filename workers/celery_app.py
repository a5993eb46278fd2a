"""The Celery app. Configured from `celeryconfig`; the tasks live in `workers.tasks`."""

from celery import Celery

app = Celery("dispatch")
app.config_from_object("celeryconfig")
app.conf.include = ["workers.tasks"]
