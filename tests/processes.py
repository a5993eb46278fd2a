"""Real processes for integration tests: the web API under gunicorn, Celery workers and the relay,
and private Redis servers that a test may stop and start; a RabbitMQ vhost of the run's own,
and a proxy in front of it that a test may stop and start. Each process is started with this
run's environment (set by conftest) plus overrides, waited for, and stopped at the end."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

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


def start_web(
    log_dir: Path, env: dict[str, str] | None = None, app: str = "api:create_app()"
) -> tuple[Process, int]:
    """The web process as the Procfile runs it, serving `app` (a benchmark serves the API
    with a route of its own added: bench.floor_app)."""
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
            app,
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


def rabbitmqctl(*args: str) -> None:
    """One `rabbitmqctl` command on the local RabbitMQ node (as root, or its own user)."""
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")


class RabbitMQVhost:
    """The vhost of a broker URL (`amqp://user:password@host:port/vhost`) on the local
    RabbitMQ, made for a test run and deleted at its end with all its queues, exchanges and
    connections; the URL's user gets every permission on it. Nothing of another vhost is
    touched."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.name = unquote(parts.path.removeprefix("/"))
        self.user = unquote(parts.username or "guest")
        self.address = (parts.hostname or "127.0.0.1", parts.port or 5672)
        if not self.name or self.name == "/":
            raise ValueError(f"{url!r} names no vhost of its own")

    def create(self) -> None:
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)

    def through(self, port: int) -> str:
        """The same vhost's URL through another port of this host (a `TcpProxy`'s)."""
        parts = urlsplit(self.url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Forwarder(socketserver.BaseRequestHandler):
    """Copies bytes both ways between a client and the proxy's upstream until either closes."""

    server: _ProxyServer

    def handle(self) -> None:
        client = self.request
        try:
            upstream = socket.create_connection(self.server.upstream, timeout=5)
        except OSError:
            return
        self.server.track(client, upstream)
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self.server.closing.is_set():
                if not self.server.forwarding.wait(0.2):
                    continue
                for key, _ in selector.select(timeout=0.2):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return


class _ProxyServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", port), _Forwarder)
        self.upstream = upstream
        self.closing = threading.Event()
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets.extend(sockets)

    def drop_connections(self) -> None:
        self.closing.set()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()


class TcpProxy:
    """A TCP proxy on a free loopback port to `upstream`, to stop and start at will: stopped,
    it refuses connections and has closed every one it carried, as a server that went down
    would; paused, it keeps them open but carries nothing, as a server that stopped reading
    would. Only the connections through it are affected, never the server behind it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._server: _ProxyServer | None = None

    def start(self) -> None:
        self._server = _ProxyServer(self.port, self.upstream)
        threading.Thread(target=self._server.serve_forever, name="tcp-proxy", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None

    def pause(self) -> None:
        assert self._server is not None
        self._server.forwarding.clear()

    def resume(self) -> None:
        assert self._server is not None
        self._server.forwarding.set()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
