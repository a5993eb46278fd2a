"""Data and domain rules. Knows nothing of Flask, Celery or Socket.IO."""

from models import accounts, devices, job_events, jobs, offers  # noqa: F401  (register every table on Base.metadata)
from models.db import Base

metadata = Base.metadata
