"""Correlated logs (workers.logs): the formatter and the filter alone, then a job followed by
its id through the JSON logs of real processes (gunicorn, the dispatch and push workers, a
gateway), from its POST through its tasks and its push, all under the POST's request id."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from api.monitoring import request_id_of
from fake_apns import FakeAPNs
from tests.factories import Factory, HttpClient
from tests.processes import (
    Process,
    start_gateway,
    start_web,
    start_workers,
    wait_until,
)
from tests.sockets import Listeners
from workers.logs import ContextFilter, JsonFormatter, bind_job, close_context, open_context

JSON_LOGS = {"LOG_FORMAT": "json"}


def _record(**extra: Any) -> logging.LogRecord:
    try:
        raise ValueError("no such driver")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "workers.dispatch", logging.WARNING, __file__, 1, "job %s: %s", (42, "a\nb"), exc_info
    )
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_one_object_a_line() -> None:
    record = _record(request_id="req-1", job_id=42, rooms=3, color_message="\x1b[1mjob\x1b[0m")
    record.created = 1_700_000_000.25

    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry)[:6] == ["time", "level", "logger", "message", "process", "pid"]
    assert entry["time"] == "2023-11-14T22:13:20.250Z"
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "WARNING",
        "workers.dispatch",
        "job 42: a\nb",
    )
    assert entry["process"] == "MainProcess" and isinstance(entry["pid"], int)
    assert (entry["request_id"], entry["job_id"], entry["rooms"]) == ("req-1", 42, 3)
    assert "task_id" not in entry and "color_message" not in entry
    assert entry["exception"].startswith("Traceback")
    assert entry["exception"].endswith("ValueError: no such driver")


def test_context_filter_puts_the_context_ids_on_each_record() -> None:
    token = open_context(request_id="req-1", task_id="task-1", job_id=None)
    try:
        bind_job(42, 7)
        record, explicit = _record(), _record(job_id=43)
        assert ContextFilter().filter(record) and ContextFilter().filter(explicit)
    finally:
        close_context(token)
    after = _record()
    ContextFilter().filter(after)

    ids = ("request_id", "task_id", "job_id", "event_id", "user_id")
    assert {name: getattr(record, name, None) for name in ids} == {
        "request_id": "req-1",
        "task_id": "task-1",
        "job_id": 42,
        "event_id": 7,
        "user_id": None,
    }
    assert explicit.job_id == 43  # type: ignore[attr-defined]  # what the call said wins
    assert not any(hasattr(after, name) for name in ids)  # the context closed


def test_a_request_keeps_a_plain_request_id_and_gets_one_for_any_other() -> None:
    assert request_id_of("lb-1f0c.2:a_b") == "lb-1f0c.2:a_b"
    for sent in (None, "", "a" * 129, "two words", 'x"}, "job_id": 1', "a\nb"):
        made = request_id_of(sent)
        assert made != sent and re.fullmatch(r"[0-9a-f]{32}", made)


@pytest.fixture
def stack(
    tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]
) -> Iterator[tuple[dict[str, Process], int, int]]:
    logs = tmp_path_factory.mktemp("logs")
    env = {**apns_env, **JSON_LOGS}
    started: list[Process] = []
    try:
        web, api_port = start_web(logs, env)
        started.append(web)
        started.extend(start_workers(logs, env))
        gateway, gateway_port = start_gateway(logs, env)
        started.append(gateway)
        yield {p.name: p for p in started}, api_port, gateway_port
    finally:
        for process in reversed(started):
            process.stop()


def _entries(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's log, each of which must be one JSON object."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name} line {number} is not JSON: {line!r}")
    return entries


def _about(process: Process, job_id: int) -> list[dict[str, Any]]:
    """`grep -E '"job_id": 42[,}]'` over the process's log, each line parsed."""
    found = re.compile(f'"job_id": {job_id}[,}}]')
    return [json.loads(line) for line in process.log().splitlines() if found.search(line)]


def _succeeded(process: Process, task: str, job_id: int) -> bool:
    """Whether the log shows the task succeeded for the job (Celery's own line, from inside
    the task's context)."""
    return any(
        e["message"].startswith(f"Task workers.tasks.{task}[") and " succeeded in " in e["message"]
        for e in _about(process, job_id)
    )


def test_one_grep_follows_a_job_from_its_post_to_its_push(
    stack: tuple[dict[str, Process], int, int], fake_apns: FakeAPNs
) -> None:
    processes, api_port, gateway_port = stack
    api = f"http://127.0.0.1:{api_port}"
    http = HttpClient(api)
    listeners = Listeners()
    try:
        factory = Factory(http)
        customer, driver = factory.customer(), factory.driver()
        phone = factory.device(driver)
        listeners.open(gateway_port, driver.token)
        request_id = f"lb-{uuid.uuid4()}"

        answer = requests.post(
            f"{api}/api/v1/jobs",
            json={"pickup": {"lat": 38.7223, "lng": -9.1393}},
            headers={**customer.headers, "X-Request-ID": request_id},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["X-Request-ID"] == request_id
        job_id = answer.json()["id"]
        wait_until(lambda: fake_apns.received(phone), 20, "the offer's push")
        wait_until(
            lambda: (
                _succeeded(processes["worker"], "notify_nearby", job_id)
                and _succeeded(processes["pushworker"], "send_push", job_id)
            ),
            20,
            "notify_nearby and send_push to succeed",
        )
    finally:
        listeners.close()
        http.close()
    # Every line while they run (stopping, a Celery worker prints its shutdown, unlogged).
    lines = {name: _entries(process.log_path) for name, process in processes.items()}

    [post] = [e for e in _about(processes["web"], job_id) if e.get("route") == "/api/v1/jobs"]
    assert (post["method"], post["status"], post["request_id"]) == ("POST", 201, request_id)

    tasks = _about(processes["worker"], job_id)
    assert {e.get("request_id") for e in tasks} == {request_id}
    assert all(e.get("task_id") for e in tasks)
    messages = [e["message"] for e in tasks]
    assert "job:new emitted to 1 rooms" in messages
    assert f"job {job_id} offered to 1 drivers" in messages
    assert _succeeded(processes["worker"], "notify_nearby", job_id)

    pushes = _about(processes["pushworker"], job_id)
    assert {e.get("request_id") for e in pushes} == {request_id}
    assert "job:new pushes sent: 1 delivered" in [e["message"] for e in pushes]
    assert _succeeded(processes["pushworker"], "send_push", job_id)

    [connected] = [e for e in lines["gateway"] if f"driver {driver.id} connected" in e["message"]]
    assert connected["user_id"] == driver.id
