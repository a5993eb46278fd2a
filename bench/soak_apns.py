"""The soak's fake APNs: the real HTTP/2 fake server (fake_apns) in a process of its own, so
it never shares a GIL with the load generators, keeping one small row per push received
(device token, the push's `type` and `job_id`, HTTP status, arrival time) instead of whole
requests: a ten-minute soak sends a quarter of a million."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

from fake_apns import FakeAPNs, make_credentials
from fake_apns.certs import Credentials
from fake_apns.server import DEVICE_PATH, _Stream, push_payload

PushRow = tuple[str, str | None, int | None, int, float]  # token, type, job id, status, at


class RecordingAPNs(FakeAPNs):
    """FakeAPNs that keeps a compact row per answered push."""

    def __init__(self, credentials: Credentials) -> None:
        super().__init__(credentials)
        self.rows: list[PushRow] = []

    def record(self, stream: _Stream, status: int, reason: str | None, connection: int) -> None:
        path = stream.headers.get(":path", "")
        payload = push_payload(stream)
        job_id = payload.get("job_id")
        self.rows.append(
            (
                path.removeprefix(DEVICE_PATH).lower(),
                payload.get("type"),
                job_id if isinstance(job_id, int) else None,
                status,
                time.time(),
            )
        )


def _serve(directory: str, rows_file: str, replies: Any, commands: Any) -> None:
    """Serve until told to stop, then write every row to `rows_file`."""
    server = RecordingAPNs(make_credentials(Path(directory), reuse=True))
    server.start()
    try:
        replies.put(server.port)
        while commands.get() != "stop":
            pass
    finally:
        server.stop()
        Path(rows_file).write_text(json.dumps(server.rows))
        replies.put("stopped")


class APNsProcess:
    """The recording fake APNs in a child process; `environment()` points Dispatch at it."""

    def __init__(self, directory: Path) -> None:
        self.credentials = make_credentials(directory)
        self.rows_file = directory / "pushes.json"
        context = multiprocessing.get_context("spawn")
        self.replies, self.commands = context.Queue(), context.Queue()
        self.process = context.Process(
            target=_serve,
            args=(str(directory), str(self.rows_file), self.replies, self.commands),
            daemon=True,
        )
        self.process.start()
        self.port: int = self.replies.get(timeout=60)

    def environment(self) -> dict[str, str]:
        return self.credentials.environment(self.port)

    def stop(self) -> list[PushRow]:
        """Stop the server; every push it answered."""
        self.commands.put("stop")
        self.replies.get(timeout=60)
        self.process.join(10)
        return [
            (token, kind, job_id, status, at)
            for token, kind, job_id, status, at in json.loads(self.rows_file.read_text())
        ]

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
