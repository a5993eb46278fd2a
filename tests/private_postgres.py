"""A throwaway PostgreSQL cluster of a test's own, to stop and start at will.

Made with `initdb` in a fresh directory under the system's temporary directory (short, so
the Unix socket path fits, and reachable by the `postgres` user: pytest's `tmp_path` sits
under a directory only its owner may enter). It listens on a free loopback port and its own
socket directory, never on the machine's shared cluster. As root, the binaries run as the
`postgres` user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2

from tests.processes import free_port, run_admin_sql, wait_until

SERVER_USER = "postgres"
# Durability off: the cluster lives for one test run; this makes initdb and commits fast.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def postgres_bin_dir() -> Path:
    """The newest installed server's binaries (Debian's /usr/lib/postgresql/<major>/bin),
    or the directory of an `initdb` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb) found")
    return Path(on_path).parent


class PrivatePostgres:
    """`init()` once, then `start()` / `stop()` as the test likes; `remove()` at the end."""

    def __init__(self) -> None:
        self.bin_dir = postgres_bin_dir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dispatch-pg-"))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.as_server_user = os.geteuid() == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout_s: float = 60) -> None:
        argv = [str(self.bin_dir / tool), *args]
        if self.as_server_user:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def init(self) -> PrivatePostgres:
        if self.as_server_user:
            server_user = pwd.getpwnam(SERVER_USER)
            os.chown(self.dir, server_user.pw_uid, server_user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SERVER_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 {SERVER_OPTIONS}"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
            "-w", "-t", "30", "start",
        )  # fmt: skip
        wait_until(self.answers, 30, "the private PostgreSQL to accept connections")

    def stop(self) -> None:
        """Fast shutdown: sessions are ended and the port closes, so every connection,
        pooled or new, is refused until `start()`."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def answers(self) -> bool:
        try:
            psycopg2.connect(self.url(), connect_timeout=1).close()
        except psycopg2.OperationalError:
            return False
        return True

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of `template`, if given); returns its URL."""
        copy = f' TEMPLATE "{template}"' if template else ""
        run_admin_sql(self.url(), f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def remove(self) -> None:
        if self.running():
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass  # already stopped: the data directory goes anyway
        shutil.rmtree(self.dir, ignore_errors=True)
