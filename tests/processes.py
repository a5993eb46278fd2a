"""Real processes for integration tests: the web API under gunicorn, Celery workers and the relay,
and private Redis servers that a test may stop and start. Each is started with this run's
environment (set by conftest) plus overrides, waited for, and stopped at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import redis

from settings import PROJECT_ROOT

BIN = Path(sys.executable).parent


def run_admin_sql(admin_url: str, sql: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE) on the admin database."""
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout_s: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout_s}s: {what}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A child process with its output in a log file, stopped by `stop()` (SIGTERM, then KILL).
    It runs on this run's environment plus `env`, or, with `inherit_environment=False`, on
    `env` alone (to see a variable unset that this run sets)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env: dict[str, str],
        inherit_environment: bool = True,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env={**os.environ, **env} if inherit_environment else env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_log(self, text: str, timeout_s: float = 30) -> None:
        def seen() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_until(seen, timeout_s, f"{self.name} to log {text!r}")

    def stop(self, timeout_s: float = 10) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout_s)
        self._log.close()


def start_web(log_dir: Path, env: dict[str, str] | None = None) -> tuple[Process, int]:
    port = free_port()
    process = Process(
        "web",
        [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            "api.server.JsonErrorWorker",  # gthread, with JSON bodies on gunicorn's own errors
            "--workers",
            "2",
            "--threads",
            "8",
            "--no-control-socket",  # gunicorn 27 shares one control socket path per user
            "--logger-class",
            "api.monitoring.GunicornLogger",  # as the Procfile: the app logs each request
            "api:create_app()",
        ],
        log_dir,
        env or {},
    )
    wait_until(lambda: port_open(port) or not process.alive(), 30, "gunicorn to listen")
    if not process.alive():
        raise RuntimeError(process.log())
    return process, port


def start_worker(
    log_dir: Path,
    env: dict[str, str] | None = None,
    name: str = "worker",
    concurrency: int = 2,
    queues: str = "dispatch",
) -> Process:
    """A Celery worker on `queues`: `dispatch` and `push` run in separate workers, as in
    the Procfile, so a slow APNs never holds a socket event back."""
    process = Process(
        name,
        [
            str(BIN / "celery"),
            "-A",
            "workers.celery_app",
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "-E",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{name}-{os.getpid()}@%h",
        ],
        log_dir,
        env or {},
    )
    process.wait_for_log("ready.")
    return process


def start_workers(
    log_dir: Path, env: dict[str, str] | None = None, concurrency: int = 1
) -> list[Process]:
    """The dispatch worker and the push worker."""
    return [
        start_worker(log_dir, env, "worker", concurrency, "dispatch"),
        start_worker(log_dir, env, "pushworker", concurrency, "push"),
    ]


def start_relay(log_dir: Path, env: dict[str, str] | None = None) -> Process:
    """The outbox sweep's process (the Procfile's `relay`)."""
    process = Process("relay", [str(BIN / "python"), "-m", "workers.relay"], log_dir, env or {})
    process.wait_for_log("relay: sweeping the outbox")
    return process


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will; with a
    `password`, one that demands it (`--requirepass`)."""

    def __init__(self, log_dir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.process: Process | None = None

    def start(self) -> None:
        redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = Process(
            f"redis-{self.port}",
            [
                redis_server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
                *(["--requirepass", self.password] if self.password else []),
            ],
            self.log_dir,
            {},
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            wait_until(lambda: _pings(client), 10, "private redis to answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def start_gateway(
    log_dir: Path, env: dict[str, str] | None = None, name: str = "gateway"
) -> tuple[Process, int]:
    port = free_port()
    process = Process(
        name,
        [str(BIN / "python"), "-m", "realtime"],
        log_dir,
        {**(env or {}), "REALTIME_PORT": str(port)},
    )
    wait_until(lambda: port_open(port) or not process.alive(), 30, "the gateway to listen")
    if not process.alive():
        raise RuntimeError(process.log())
    return process, port
