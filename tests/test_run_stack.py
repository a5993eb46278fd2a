"""`make run` (bin/run-stack) on a machine with Redis installed but not running: it starts a
private redis-server under var/ at REDIS_URL, says so, and stops it with the stack.

Run on a copy of the script beside the real virtualenv, with a Procfile whose one process
pings Redis at REDIS_URL, writes down the answer and ends (so honcho, and the stack, end)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from settings import PROJECT_ROOT
from tests.processes import free_port, port_open, wait_until

PROBE = (
    "probe: .venv/bin/python -c \"import os, redis; open('seen', 'w').write("
    "str(redis.Redis.from_url(os.environ['REDIS_URL']).ping()))\"\n"
)


def _run_stack(tmp_path: Path, redis_url: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path / "stack"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "bin" / "run-stack", root / "bin" / "run-stack")
    (root / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    (root / "Procfile").write_text(PROBE)
    env = {**_environment(), "REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{root}/db"}
    done = subprocess.run(
        [str(root / "bin" / "run-stack")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, root


def _environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("SECRET_KEY", "DISPATCH_ENV", "FLOWER_BASIC_AUTH")
    }


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_make_run_starts_a_private_redis_when_none_answers(tmp_path: Path) -> None:
    port = free_port()
    done, root = _run_stack(tmp_path, f"redis://127.0.0.1:{port}/0")
    assert (root / "seen").read_text() == "True", done.stdout + done.stderr
    assert "started for this run" in done.stdout, done.stdout
    assert (root / "var" / "redis" / "redis.log").exists()
    # Stopped with the stack: nothing listens on its port any more.
    wait_until(lambda: not port_open(port), 10, "the private Redis to stop")


def test_make_run_uses_the_redis_that_answers(tmp_path: Path) -> None:
    shared = redis.Redis.from_url(os.environ["REDIS_URL"])
    assert shared.ping()
    done, root = _run_stack(tmp_path, os.environ["REDIS_URL"])
    assert (root / "seen").read_text() == "True"
    assert "started for this run" not in done.stdout, done.stdout
    assert not (root / "var" / "redis").exists()
