"""Holding a task inside a worker, and seeing it held: the job's announcement lock (a
PostgreSQL advisory lock every notify_* task takes first), the id the next job will get, and
the tasks a worker's log shows it received. For the tests that kill a worker mid-task."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from models.job_events import ANNOUNCEMENT_LOCK_CLASS
from tests.processes import Process


def next_job_id() -> int:
    """The id the next job will get (this run's database has no other writer)."""
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_get_serial_sequence('jobs', 'id')")
            [sequence] = cur.fetchone()
            cur.execute(f"SELECT last_value, is_called FROM {sequence}")
            last_value, is_called = cur.fetchone()
    finally:
        conn.close()
    return int(last_value) + 1 if is_called else int(last_value)


@contextmanager
def announcements_held(job_id: int) -> Iterator[None]:
    """Hold the job's announcement lock, which every notify_* task takes before it reads
    the event: the task waits on it, inside the worker, until the block ends."""
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s, %s)", (ANNOUNCEMENT_LOCK_CLASS, job_id))
        yield
    finally:
        conn.close()  # releases it


def announcement_waiting(job_id: int) -> bool:
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND classid = %s::oid AND objid = %s::oid AND objsubid = 2",
                (ANNOUNCEMENT_LOCK_CLASS, job_id),
            )
            [waiting] = cur.fetchone()
    finally:
        conn.close()
    return bool(waiting)


def tasks_received(process: Process, task: str) -> int:
    """How many `task` messages the worker's log shows it received."""
    return sum(
        1
        for line in process.log().splitlines()
        if f"workers.tasks.{task}[" in line and line.endswith("received")
    )
