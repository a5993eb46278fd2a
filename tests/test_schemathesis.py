"""Schemathesis against the served OpenAPI document, through a real gunicorn, with every
check it has (`--checks all`) and every phase (examples, coverage, fuzzing, stateful): no
server error, every answer in its documented status and shape, data the document admits
is accepted and data it refuses is refused, a 405 carries `Allow`, auth is never ignored.

Two runs, side by side: the driver-only operations (the document says "Allowed roles:
driver.") with a driver's token, every other one with a customer's, so the cases reach the
handlers rather than stop at a 403. Jobs of that customer, offered to that driver, exist
beforehand and are drawn for half the `job_id`s. (One run with a token per operation
would chain a customer's new job into a driver's accept in the stateful phase, but a job
is offered asynchronously, by the dispatch worker, so that accept is rightly a 404, which
Schemathesis reports as a created resource not found.) What the cases write stays in this
run's database and Redis prefix.

Each run uses one Schemathesis worker: with several threads, Hypothesis' `ast.parse`
trips CPython 3.11.7's "AST constructor recursion depth mismatch" (fixed in later 3.11s).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import Factory, HttpClient
from tests.processes import BIN, start_web

pytestmark = pytest.mark.slow

# Cases per operation and phase: enough for every operation's shapes and errors, bounded
# so that the runs take under a minute. The seed is fixed, so that a failure reproduces
# with the same cases; both may be changed for a deeper search.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "30"))
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "9"))
DRIVER_ONLY = '/description == "Allowed roles: driver."'
JOB_IDS = (1, 2, 3, 4, 5)
THROTTLES = (  # generous: the cases all come from 127.0.0.1
    "REGISTRATIONS_PER_ADDRESS_PER_MINUTE",
    "LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE",
    "LOGIN_ATTEMPTS_PER_MINUTE",
)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[int]:
    process, port = start_web(tmp_path, {name: "100000" for name in THROTTLES})
    try:
        yield port
    finally:
        process.stop()


def _config(token: str) -> str:
    """schemathesis.toml for one run: its bearer token, and the jobs that exist drawn for
    half the `job_id` path parameters (TOML strings are JSON strings)."""
    return "\n".join(
        [
            "[headers]",
            f"Authorization = {json.dumps('Bearer ' + token)}",
            "[dictionaries.jobs]",
            f"values = {json.dumps(list(JOB_IDS))}",
            "[parameters]",
            '"path.job_id" = { dictionary = "jobs", probability = 0.5 }',
            "",
        ]
    )


def _schemathesis(port: int, config: Path, selection: list[str]) -> subprocess.Popen[bytes]:
    report = config.with_suffix(".txt").open("wb")
    try:
        return subprocess.Popen(
            [
                str(BIN / "st"),
                "--config-file",
                str(config),
                "run",
                f"http://127.0.0.1:{port}/api/v1/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                str(SEED),
                "--generation-database",
                "none",
                "--workers",
                "1",
                "--output-sanitize",
                "false",
                "--no-color",
                *selection,
            ],
            cwd=config.parent,
            stdout=report,
            stderr=subprocess.STDOUT,
        )
    finally:
        report.close()  # the child holds its own copy


def test_schemathesis_finds_nothing_against_the_served_document(web: int, tmp_path: Path) -> None:
    http = HttpClient(f"http://127.0.0.1:{web}")
    try:
        factory = Factory(http)
        customer, driver = factory.customer(), factory.driver()
        for job_id in JOB_IDS:  # the customer's, offered to the driver
            assert factory.job(customer)["id"] == job_id
            assert factory.offer(job_id) == [driver.id]
    finally:
        http.close()
    runs = {
        "customer": (customer.token, ["--exclude-by", DRIVER_ONLY]),
        "driver": (driver.token, ["--include-by", DRIVER_ONLY]),
    }
    started = {}
    for role, (token, selection) in runs.items():
        config = tmp_path / role / "schemathesis.toml"
        config.parent.mkdir()
        config.write_text(_config(token))
        started[role] = (_schemathesis(web, config, selection), config.with_suffix(".txt"))
    for process, _ in started.values():
        process.wait(timeout=300)
    for role, (process, report) in started.items():
        text = report.read_text()
        assert process.returncode == 0, f"schemathesis, as the {role}, found problems:\n{text}"
        assert "Tested: 0" not in text, text
