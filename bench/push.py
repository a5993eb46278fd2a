"""Push throughput: pushes per second one process delivers to the fake APNs over HTTP/2 for a
fan-out of 5,000 tokens, through `workers.apns.send_pushes` as the push worker calls it.
Floor: h2load (Debian package nghttp2-client) sending the same request to the same server.
The fake server runs in its own process, so it never shares a GIL with the sender."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt

from fake_apns import FakeAPNs, make_credentials
from settings import settings
from workers.apns import Push, send_pushes

FAN_OUT = 5_000
IN_FLIGHT = 100


def _serve(directory: str, ports: Any, stop: Any) -> None:
    server = FakeAPNs(make_credentials(Path(directory), reuse=True)).start()
    ports.put(server.port)
    stop.wait()
    server.stop()


def _push(n: int) -> Push:
    return Push(
        token=f"{n:064x}",
        environment="production",
        title="New job nearby",
        body="1.2 km from you",
        data={"type": "job:new", "job_id": 1},
        collapse_id="job-1",
    )


def _h2load(port: int, directory: Path) -> float | None:
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return None
    credentials = make_credentials(directory, reuse=True)
    token = jwt.encode(
        {"iss": credentials.team_id, "iat": int(time.time())},
        credentials.signing_key_file.read_text(),
        algorithm="ES256",
        headers={"kid": credentials.key_id},
    )
    body = directory / "body.json"
    body.write_text(json.dumps(_push(1).payload(), separators=(",", ":")))
    done = subprocess.run(
        [
            "h2load",
            "-n",
            str(FAN_OUT),
            "-c",
            "1",
            "-m",
            str(IN_FLIGHT),
            "-d",
            str(body),
            "-H",
            f"authorization: bearer {token}",
            "-H",
            f"apns-topic: {credentials.topic}",
            "-H",
            "apns-push-type: alert",
            "-H",
            "apns-priority: 10",
            "-H",
            "apns-collapse-id: job-1",
            f"https://127.0.0.1:{port}/3/device/{'ab' * 32}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", done.stdout)
    if match is None or f"{FAN_OUT} succeeded" not in done.stdout:
        print(done.stdout, file=sys.stderr)
        return None
    return float(match.group(1))


def main() -> None:
    directory = Path(tempfile.mkdtemp())
    context = multiprocessing.get_context("spawn")
    ports, stop = context.Queue(), context.Event()
    server = context.Process(target=_serve, args=(str(directory), ports, stop))
    server.start()
    try:
        port = ports.get(timeout=30)
        credentials = make_credentials(directory, reuse=True)
        for name, value in credentials.environment(port).items():
            field = name.lower()
            setattr(settings, field, int(value) if field == "apns_port" else value)
        send_pushes([_push(n) for n in range(200)], timeout_s=60)  # connect, sign, warm up
        start = time.perf_counter()
        results = send_pushes([_push(n) for n in range(FAN_OUT)], timeout_s=120)
        elapsed = time.perf_counter() - start
        delivered = sum(1 for r in results if r.outcome.value == "delivered")
        floor = _h2load(port, directory)
    finally:
        stop.set()
        server.join(30)
    per_s = delivered / elapsed
    print(
        json.dumps(
            {
                "per_s": round(per_s, 1),
                "floor_per_s": round(floor, 1) if floor else None,
                "ratio": round(per_s / floor, 2) if floor else None,
                "delivered": delivered,
            }
        )
    )


if __name__ == "__main__":
    main()
