"""Secrets stay secret, and nothing starts on a forgeable secret: real processes.

A worker, the relay, gunicorn and Flower run with a unique SECRET_KEY, a password inside
DATABASE_URL (local PostgreSQL trusts, so it still connects), a Redis of this test's own that
demands a password, and a unique Flower password; `celery inspect conf`, Flower's API and
pages, error answers and every log must show none of them. Web, worker, relay, gateway, Flower
and the `dispatch` CLI refuse to start without a real SECRET_KEY outside development
(`bin/run-stack`'s development secret: tests/test_run_stack.py). Flower needs its password on every
path, /metrics and /healthcheck included; API answers carry `nosniff`, and token answers
`no-store`.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url

from settings import DEV_SECRET_KEY, PROJECT_ROOT, InsecureSecretKey, Settings
from tests.factories import PASSWORD
from tests.processes import (
    BIN,
    PrivateRedis,
    Process,
    free_port,
    port_open,
    start_relay,
    start_web,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.slow

REFUSAL = "SECRET_KEY must be set to a real secret"


def _secret(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def _without(*names: str) -> dict[str, str]:
    """This run's environment minus `names`: a process started on it sees them unset."""
    return {key: value for key, value in os.environ.items() if key not in names}


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own that demands a password."""
    with PrivateRedis(tmp_path, password=_secret("redis-pw")) as server:
        yield server


def _assert_none_shown(secrets: dict[str, str], where: str, text: str) -> None:
    shown = [name for name, value in secrets.items() if value in text]
    assert not shown, f"{where} shows {shown}"


def _worker_name(worker: Process) -> str:
    found = re.search(r"(\S+@\S+) ready\.", worker.log())
    assert found, worker.log()
    return found.group(1)


def test_no_secret_in_inspect_conf_flower_error_answers_or_logs(
    tmp_path: Path, locked_redis: PrivateRedis
) -> None:
    flower_user, flower_password = "operator", _secret("flower-pw")
    database_password = _secret("db-pw")
    database_url = make_url(os.environ["DATABASE_URL"]).set(password=database_password)
    secrets = {
        "SECRET_KEY": _secret("secret-key"),
        "the Flower password": flower_password,
        "the DATABASE_URL password": database_password,
        "the REDIS_URL password": locked_redis.password,
    }
    env = {
        "SECRET_KEY": secrets["SECRET_KEY"],
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "REDIS_URL": locked_redis.url,
        "FLOWER_BASIC_AUTH": f"{flower_user}:{flower_password}",
    }
    worker = start_worker(tmp_path, env)
    relay = start_relay(tmp_path, env)
    web, web_port = start_web(tmp_path, env)
    flower_port = free_port()
    flower = Process(
        "flower",
        [
            str(BIN / "celery"),
            "-A",
            "workers.celery_app",
            "flower",
            "--address=127.0.0.1",
            f"--port={flower_port}",
            f"--basic-auth={flower_user}:{flower_password}",
        ],
        tmp_path,
        env,
    )
    http = requests.Session()
    http.auth = (flower_user, flower_password)
    try:
        name = _worker_name(worker)
        inspected = subprocess.run(
            [str(BIN / "celery"), "-A", "workers.celery_app", "inspect", "conf", "--json"]
            + ["--destination", name, "--timeout", "10"],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert inspected.returncode == 0, inspected.stderr
        assert '"task_serializer": "json"' in inspected.stdout, inspected.stdout
        _assert_none_shown(secrets, "celery inspect conf", inspected.stdout + inspected.stderr)

        wait_until(lambda: port_open(flower_port) or not flower.alive(), 30, "Flower to listen")
        flower_url = f"http://127.0.0.1:{flower_port}"

        def worker_listed_with_conf() -> str:
            answer = http.get(f"{flower_url}/api/workers?refresh=true", timeout=10)
            listed = answer.json() if answer.status_code == 200 else {}
            return answer.text if listed.get(name, {}).get("conf") else ""

        wait_until(worker_listed_with_conf, 30, "Flower to list the worker with its conf")
        pages = {
            "/api/workers?refresh=true": worker_listed_with_conf(),
            f"/worker/{name}": http.get(f"{flower_url}/worker/{name}", timeout=10).text,
            "/broker": http.get(f"{flower_url}/broker", timeout=10).text,
        }
        assert "task_serializer" in pages[f"/worker/{name}"]
        for page, text in pages.items():
            _assert_none_shown(secrets, f"Flower {page}", text)

        api = f"http://127.0.0.1:{web_port}/api/v1"
        answers = [
            requests.get(f"{api}/health", timeout=10),
            requests.get(f"{api}/no-such-thing", timeout=10),
            requests.get(f"{api}/jobs", headers={"Authorization": "Bearer forged"}, timeout=10),
            requests.post(f"{api}/auth/login", data=b"{not json", timeout=10),
        ]
        assert [answer.status_code for answer in answers] == [200, 404, 401, 422]
        for answer in answers:
            _assert_none_shown(secrets, f"the answer to {answer.url}", answer.text)
    finally:
        http.close()
        for process in (flower, web, relay, worker):
            process.stop()
    for process in (worker, relay, web, flower):
        _assert_none_shown(secrets, f"the {process.name} log", process.log())


def _start_commands(tmp_path: Path) -> dict[str, list[str]]:
    return {
        "web": [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{free_port()}",
            "--workers",
            "1",
            "--no-control-socket",
            "api:create_app()",
        ],
        "worker": [str(BIN / "celery"), "-A", "workers.celery_app", "worker", "--concurrency=1"],
        "relay": [str(BIN / "python"), "-m", "workers.relay"],
        "gateway": [str(BIN / "python"), "-m", "realtime"],
        "flower": [str(BIN / "python"), "-m", "workers.flower"],
        "cli": [str(BIN / "dispatch"), "migrate"],
    }


@pytest.mark.parametrize("kind", ["web", "worker", "relay", "gateway", "flower", "cli"])
@pytest.mark.parametrize("secret", ["unset", "public default"])
def test_no_process_starts_on_a_forgeable_secret(tmp_path: Path, kind: str, secret: str) -> None:
    env = _without("SECRET_KEY", "DISPATCH_ENV")
    if secret == "public default":
        env["SECRET_KEY"] = DEV_SECRET_KEY
    env.update(
        REDIS_PREFIX=f"refused-{uuid.uuid4().hex[:8]}",  # a worker that did start takes nothing
        REALTIME_PORT=str(free_port()),
        FLOWER_PORT=str(free_port()),
        FLOWER_BASIC_AUTH="operator:flower-password",
    )
    process = Process(
        kind, _start_commands(tmp_path)[kind], tmp_path, env, inherit_environment=False
    )
    try:
        wait_until(lambda: not process.alive(), 60, f"{kind} to refuse to start")
        assert process.popen.returncode != 0
        assert REFUSAL in process.log(), process.log()
    finally:
        process.stop()


def test_development_runs_without_a_secret(tmp_path: Path) -> None:
    """`DISPATCH_ENV=development` (what `make run` sets) starts on the public default."""
    env = _without("SECRET_KEY")
    env["DISPATCH_ENV"] = "development"
    port = free_port()
    argv = _start_commands(tmp_path)["web"]
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    process = Process("web", argv, tmp_path, env, inherit_environment=False)
    try:
        wait_until(lambda: port_open(port) or not process.alive(), 30, "gunicorn to listen")
        answer = requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10)
        assert answer.status_code == 200, process.log()
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("environment", "secret_key"),
    [
        ("production", ""),
        ("production", DEV_SECRET_KEY),
        ("production", "short-secret"),
    ],
)
def test_settings_refuse_a_forgeable_secret_outside_development(
    environment: str, secret_key: str
) -> None:
    with pytest.raises(InsecureSecretKey, match=REFUSAL):
        Settings(DISPATCH_ENV=environment, SECRET_KEY=secret_key)


def test_settings_accept_a_real_secret_or_development() -> None:
    real = "a-real-secret-" + uuid.uuid4().hex
    assert Settings(DISPATCH_ENV="production", SECRET_KEY=real).secret_key == real
    assert Settings(DISPATCH_ENV="development", SECRET_KEY="").secret_key == DEV_SECRET_KEY
    assert real not in repr(Settings(DISPATCH_ENV="production", SECRET_KEY=real))


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[tuple[Process, str, tuple[str, str]]]:
    """Flower as the Procfile runs it (`python -m workers.flower`), on a free port."""
    credentials = ("operator", _secret("flower-pw"))
    port = free_port()
    process = Process(
        "flower",
        [str(BIN / "python"), "-m", "workers.flower"],
        tmp_path,
        {"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": ":".join(credentials)},
    )
    wait_until(lambda: port_open(port) or not process.alive(), 30, "Flower to listen")
    assert process.alive(), process.log()
    yield process, f"http://127.0.0.1:{port}", credentials
    process.stop()


def test_flower_asks_for_its_password_on_every_path(
    flower: tuple[Process, str, tuple[str, str]],
) -> None:
    process, url, credentials = flower
    for path in ("/metrics", "/healthcheck", "/api/workers", "/workers", "/tasks", "/broker"):
        refused = requests.get(url + path, timeout=10, allow_redirects=False)
        assert refused.status_code == 401, (path, refused.status_code)
        wrong = requests.get(url + path, auth=("operator", "wrong"), timeout=10)
        assert wrong.status_code == 401, (path, wrong.status_code)
    assert requests.get(url + "/healthcheck", auth=credentials, timeout=10).text == "OK"
    metrics = requests.get(url + "/metrics", auth=credentials, timeout=10)
    assert metrics.status_code == 200 and "flower_events_total" in metrics.text
    # The password reaches Flower through its environment, not its command line (which
    # `ps` shows every user of the machine).
    command_line = Path(f"/proc/{process.popen.pid}/cmdline").read_bytes().decode()
    assert credentials[1] not in command_line
    _assert_none_shown({"the Flower password": credentials[1]}, "the flower log", process.log())


def test_flower_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    process = Process(
        "flower",
        [str(BIN / "python"), "-m", "workers.flower"],
        tmp_path,
        {"FLOWER_PORT": str(free_port()), "FLOWER_BASIC_AUTH": ""},
    )
    try:
        wait_until(lambda: not process.alive(), 30, "Flower to refuse to start")
        assert process.popen.returncode != 0
        assert "FLOWER_BASIC_AUTH" in process.log(), process.log()
    finally:
        process.stop()


def test_api_answers_say_nosniff_and_token_answers_no_store(tmp_path: Path) -> None:
    web, port = start_web(tmp_path)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        account = {"role": "customer", "email": "sec@example.com", "password": PASSWORD}
        registered = requests.post(
            f"{api}/auth/register", json={**account, "name": "Sec"}, timeout=10
        )
        logged_in = requests.post(
            f"{api}/auth/login",
            json={"email": account["email"], "password": PASSWORD},
            timeout=10,
        )
        assert [registered.status_code, logged_in.status_code] == [201, 200]
        for answer in (registered, logged_in):
            assert "token" in answer.json()
            assert answer.headers["Cache-Control"] == "no-store"
        others = [
            requests.get(f"{api}/health", timeout=10),
            requests.get(f"{api}/jobs", timeout=10),
            requests.get(f"{api}/no-such-thing", timeout=10),
            requests.get(f"{api}/openapi.json", timeout=10),
            logged_in,
            registered,
        ]
        for answer in others:
            assert answer.headers["X-Content-Type-Options"] == "nosniff", answer.url
    finally:
        web.stop()
