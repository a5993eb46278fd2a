"""Gateway capacity: 10,000 driver sockets on ONE gateway process (clients in 4 separate
processes): memory per connection (RSS growth / connections) and the time for one
`job:accepted` emitted to 1,000 rooms to reach all 1,000 of those drivers."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.data import add_users, token_for
from bench.feeds import FeedProcesses
from tests.processes import start_gateway
from workers.events import driver_room, emit

CONNECTIONS = 10_000
FANOUT = 1_000
CLIENT_PROCESSES = 4


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the gateway
    drivers = add_users("driver", CONNECTIONS)
    feeds_spec = [(d, token_for(d, "driver")) for d in drivers]
    gateway, port = start_gateway(Path(tempfile.mkdtemp()))
    feeds = FeedProcesses(f"ws://127.0.0.1:{port}", feeds_spec, CLIENT_PROCESSES)
    try:
        time.sleep(1.0)
        before = _rss_kb(gateway.popen.pid)
        started = time.monotonic()
        connected = feeds.start(timeout_s=240)
        print(f"{connected} connected in {time.monotonic() - started:.1f}s", file=sys.stderr)
        time.sleep(2.0)
        after = _rss_kb(gateway.popen.pid)
        targets = drivers[:: CONNECTIONS // FANOUT][:FANOUT]
        # The gateway subscribes on its first connection; one probe proves the path is live.
        emit("bench:probe", {}, [driver_room(drivers[0])])
        time.sleep(1.0)
        sent_at = time.time()
        emit(
            "job:accepted",
            {"job_id": 1, "accepted_at": "2026-01-01T00:00:00.000Z"},
            [driver_room(d) for d in targets],
        )
        time.sleep(5.0)
        received = feeds.stop()
    finally:
        feeds.kill()
        gateway.stop()
    arrivals = [t for event, _, _, t in received if event == "job:accepted"]
    if len(arrivals) != FANOUT:
        print(f"only {len(arrivals)} of {FANOUT} received job:accepted", file=sys.stderr)
    print(
        json.dumps(
            {
                "connections": connected,
                "kb_per_connection": round((after - before) / connected, 1),
                "fanout_1000_ms": round((max(arrivals) - sent_at) * 1000, 1),
                "fanout_received": len(arrivals),
                "rss_mb": round(after / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
