"""`make run` (bin/run-stack): on a machine with Redis installed but not running it starts a
private redis-server under var/ at REDIS_URL, says so, and stops it with the stack; without a
SECRET_KEY it makes one development secret and keeps it in var/.

Run on a copy of the script beside the real virtualenv, with a Procfile whose one process
writes down what it was started with and ends (so honcho, and the stack, end)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from settings import DEV_SECRET_KEY, PROJECT_ROOT
from tests.processes import free_port, port_open, wait_until

# Each writes down, in `seen`, whether Redis at REDIS_URL answers; or the SECRET_KEY and
# DISPATCH_ENV it was started with.
PINGS_REDIS = (
    "probe: .venv/bin/python -c \"import os, redis; open('seen', 'w').write("
    "str(redis.Redis.from_url(os.environ['REDIS_URL']).ping()))\"\n"
)
SHOWS_SECRET = """probe: sh -c 'printf "%s\\n%s\\n" "$SECRET_KEY" "$DISPATCH_ENV" > seen'\n"""


def _sandbox(tmp_path: Path, procfile: str) -> Path:
    root = tmp_path / "stack"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "bin" / "run-stack", root / "bin" / "run-stack")
    (root / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    (root / "Procfile").write_text(procfile)
    return root


def _run_stack(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(root / "bin" / "run-stack")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _environment() -> dict[str, str]:
    """This run's environment as a developer's shell has it: no secret, no deployment."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("SECRET_KEY", "DISPATCH_ENV", "FLOWER_BASIC_AUTH")
    }


def _with_redis(tmp_path: Path, redis_url: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = _sandbox(tmp_path, PINGS_REDIS)
    env = {**_environment(), "REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{root}/db"}
    return _run_stack(root, env), root


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_make_run_starts_a_private_redis_when_none_answers(tmp_path: Path) -> None:
    port = free_port()
    done, root = _with_redis(tmp_path, f"redis://127.0.0.1:{port}/0")
    assert (root / "seen").read_text() == "True", done.stdout + done.stderr
    assert "started for this run" in done.stdout, done.stdout
    assert (root / "var" / "redis" / "redis.log").exists()
    # Stopped with the stack: nothing listens on its port any more.
    wait_until(lambda: not port_open(port), 10, "the private Redis to stop")


def test_make_run_uses_the_redis_that_answers(tmp_path: Path) -> None:
    shared = redis.Redis.from_url(os.environ["REDIS_URL"])
    assert shared.ping()
    done, root = _with_redis(tmp_path, os.environ["REDIS_URL"])
    assert (root / "seen").read_text() == "True"
    assert "started for this run" not in done.stdout, done.stdout
    assert not (root / "var" / "redis").exists()


def _secret_seen(root: Path, env: dict[str, str]) -> tuple[str, str]:
    """The SECRET_KEY and DISPATCH_ENV the stack's process was started with."""
    _run_stack(root, env)
    secret_key, environment = (root / "seen").read_text().splitlines()
    (root / "seen").unlink()
    return secret_key, environment


def test_run_stack_keeps_one_development_secret_in_var(tmp_path: Path) -> None:
    root = _sandbox(tmp_path, SHOWS_SECRET)
    env = _environment()
    first, environment = _secret_seen(root, env)
    assert environment == "development"
    assert len(first) >= 32 and first != DEV_SECRET_KEY
    kept = root / "var" / "secret_key"
    assert kept.read_text().strip() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert _secret_seen(root, env) == (first, "development")
    chosen = f"chosen-{uuid.uuid4().hex}"
    assert _secret_seen(root, {**env, "SECRET_KEY": chosen})[0] == chosen
    assert kept.read_text().strip() == first
