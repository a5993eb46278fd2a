"""Gateway capacity: 10,000 driver sockets (BENCH_GATEWAY_CONNECTIONS, at least 1,000) held by
ONE gateway process (`python -m realtime`, which is the uvicorn process itself), the clients
in separate processes of 2,500 sockets each (4 at 10,000).

- kb_per_connection: the gateway's RSS growth (VmRSS) from before to after the connections,
  divided by their number. A few connections are made and closed first, so the
  one-time work of the first connection (Redis subscriber, database pool, handler threads)
  is not counted as the cost of holding connections.
- fanout_1000_ms: one `emit("job:accepted", …, rooms=[1,000 driver rooms])` published
  through Redis as a worker publishes it, timed from just before the publish until the last
  of the 1,000 target drivers has it (time.time() on both sides, one machine), while the
  other sockets stay connected. Measured FANOUT_REPEATS times, one emit at a time:
  the median, and the worst (`fanout_1000_max_ms`), which shows the gateway's stalls (a
  full garbage collection of the gateway's heap at 10,000 connections takes over a second).

The clients speak Engine.IO 4 / Socket.IO 5 directly over a `websockets` connection (what
socket.io-client does with the websocket transport), light enough for 2,500 per process.
Connecting has no overall deadline (on a busy machine 20,000 handshakes take minutes): it
fails when no client process has connected another socket for CONNECT_STALL_S."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import websockets

from bench.data import add_users, token_for
from bench.location import cpu_seconds
from models.rooms import driver_room
from tests.processes import Process, start_gateway
from workers.events import emit

FANOUT = 1_000
CONNECTIONS = int(os.environ.get("BENCH_GATEWAY_CONNECTIONS", "10000"))
if CONNECTIONS < FANOUT:
    raise SystemExit(f"BENCH_GATEWAY_CONNECTIONS must be at least {FANOUT}: the fan-out's targets")
SOCKETS_PER_CLIENT_PROCESS = 2_500
CLIENT_PROCESSES = -(-CONNECTIONS // SOCKETS_PER_CLIENT_PROCESS)
HANDSHAKES_IN_FLIGHT = 32  # per client process: a steady stream, not a stampede
WARM_UP = 50
OPEN_TIMEOUT_S = 90.0  # one socket's handshake
CONNECT_STALL_S = 60.0  # no socket connected by any client process for this long: failed
PROGRESS_EVERY_S = 1.0
DELIVERY_TIMEOUT_S = 15.0
FANOUT_REPEATS = 7
# The gateway's own files beside the sockets: listener, Redis, database pool, log, epoll.
FD_HEADROOM = 100
FDS_NEEDED = CONNECTIONS + FD_HEADROOM

Driver = tuple[int, str]  # driver id, bearer token
Arrival = tuple[str, int, float]  # event, driver id, time.time() on receipt


# --- the clients -------------------------------------------------------------------------------


class _Holder:
    """One client process's sockets: connects them, answers the gateway's pings and
    records every event's arrival; the parent collects arrivals through `out`."""

    def __init__(self, url: str, out: Any) -> None:
        self.url = f"{url}/socket.io/?EIO=4&transport=websocket"
        self.out = out
        self.arrivals: list[Arrival] = []
        self.open = 0
        self.failure: str | None = None

    async def connect(self, driver_id: int, token: str) -> Any:
        ws = await websockets.connect(
            self.url,
            compression=None,
            proxy=None,
            ping_interval=None,  # the gateway pings (Engine.IO), the client answers
            open_timeout=OPEN_TIMEOUT_S,
            max_size=2**16,
        )
        opened = str(await ws.recv())
        if not opened.startswith("0"):
            raise RuntimeError(f"Engine.IO open expected, got {opened[:80]!r}")
        await ws.send("40" + json.dumps({"token": token}))
        joined = str(await ws.recv())
        if not joined.startswith("40"):
            raise RuntimeError(f"driver {driver_id} refused: {joined[:200]}")
        return ws

    async def hold(self, driver_id: int, token: str, gate: asyncio.Semaphore) -> None:
        try:
            async with gate:
                ws = await self.connect(driver_id, token)
        except (OSError, RuntimeError, websockets.WebSocketException) as exc:  # to the parent
            self.failure = self.failure or f"driver {driver_id}: {exc!r}"
            return
        self.open += 1
        async for message in ws:
            if message == "2":
                await ws.send("3")
            elif isinstance(message, str) and message.startswith("42"):
                at = time.time()
                event = json.loads(message[2:])[0]
                self.arrivals.append((event, driver_id, at))

    async def run(self, drivers: Sequence[Driver], stop: Any) -> None:
        gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)
        tasks = [asyncio.create_task(self.hold(d, t, gate)) for d, t in drivers]
        reported, reported_at = 0, time.monotonic()
        while self.open < len(drivers) and self.failure is None and not stop.is_set():
            await asyncio.sleep(0.05)
            if self.open > reported and time.monotonic() - reported_at >= PROGRESS_EVERY_S:
                self.out.put(("progress", self.open - reported))
                reported, reported_at = self.open, time.monotonic()
        if self.failure:
            self.out.put(("failed", self.failure))
        else:
            self.out.put(("connected", self.open - reported))
        sent = 0
        while not stop.is_set():
            if len(self.arrivals) > sent:  # in batches: the timestamps are already taken
                self.out.put(("arrivals", self.arrivals[sent:]))
                sent = len(self.arrivals)
            await asyncio.sleep(0.02)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, hard, FDS_NEEDED)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < FDS_NEEDED:
            raise RuntimeError(
                f"{CONNECTIONS} connections need {FDS_NEEDED} open files in the gateway, and"
                f" RLIMIT_NOFILE's hard limit is {hard} (at most {hard - FD_HEADROOM}"
                " connections): raise it (`ulimit -Hn`, as a user allowed to) or connect fewer"
            ) from None


def _client_process(url: str, drivers_file: str, share: slice, out: Any, stop: Any) -> None:
    """Hold the drivers `share` of the JSON list in `drivers_file` (a file, not a pickled
    argument: a large one blocks the parent's start() if the child fails early)."""
    _raise_fd_limit()
    drivers = [(d, t) for d, t in json.loads(Path(drivers_file).read_text())[share]]
    asyncio.run(_Holder(url, out).run(drivers, stop))


async def _warm_up(url: str, drivers: Sequence[Driver]) -> None:
    """Connect a few sockets at once and close them: the gateway's one-time work is done."""
    holder = _Holder(url, None)
    sockets = await asyncio.gather(*(holder.connect(d, t) for d, t in drivers))
    await asyncio.gather(*(ws.close() for ws in sockets))


class _Clients:
    """CLIENT_PROCESSES processes, each holding a contiguous share of the drivers."""

    def __init__(self, url: str, drivers_file: Path, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.out = context.Queue()
        self.stop = context.Event()
        share = -(-count // CLIENT_PROCESSES)
        self.processes = [
            context.Process(
                target=_client_process,
                args=(url, str(drivers_file), slice(i, i + share), self.out, self.stop),
                daemon=True,
            )
            for i in range(0, count, share)
        ]
        self.arrivals: list[Arrival] = []

    def connect(self) -> int:
        """All sockets connected: their number. Fails on a refused socket, or when no new
        socket has connected for CONNECT_STALL_S."""
        for process in self.processes:
            process.start()
        connected, done = 0, 0
        while done < len(self.processes):
            kind, value = self._next(connected)
            if kind == "failed":
                raise RuntimeError(f"a client could not connect: {value}")
            connected += value
            done += kind == "connected"
        return connected

    def _next(self, connected: int) -> tuple[str, Any]:
        while True:
            try:
                kind, value = self.out.get(timeout=CONNECT_STALL_S)
            except queue.Empty:
                raise TimeoutError(
                    f"{connected} of {CONNECTIONS} sockets connected, then none for"
                    f" {CONNECT_STALL_S:.0f} s"
                ) from None
            if kind != "arrivals":
                return kind, value
            self.arrivals += value

    def wait_for(self, event: str, drivers: set[int], timeout_s: float) -> list[Arrival]:
        """Arrivals of `event` at `drivers` (one each), as soon as all are in, or at timeout;
        every arrival collected so far is then forgotten."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = {a[1]: a for a in self.arrivals if a[0] == event and a[1] in drivers}
            if len(seen) == len(drivers) or time.monotonic() > deadline:
                self.arrivals.clear()
                return list(seen.values())
            try:
                kind, value = self.out.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "arrivals":
                self.arrivals += value

    def close(self) -> None:
        self.stop.set()
        for process in self.processes:
            process.join(10)
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(5)


# --- the gateway and the measurements ------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _probe(clients: _Clients, driver_id: int) -> None:
    """One event to one driver, until it arrives: the whole path (publisher connection,
    gateway subscription) is live before the measured emit."""
    for _ in range(10):
        emit("bench:probe", {}, [driver_room(driver_id)])
        if clients.wait_for("bench:probe", {driver_id}, 1.0):
            return
    raise RuntimeError("the gateway never delivered the probe event")


def _fanout(clients: _Clients, targets: Sequence[int], job_id: int) -> list[float]:
    """Seconds from just before the publish to each target's receipt, sorted."""
    rooms = [driver_room(d) for d in targets]
    payload = {"job_id": job_id, "accepted_at": "2026-01-01T00:00:00.000Z"}
    sent_at = time.time()
    emit("job:accepted", payload, rooms)
    arrivals = clients.wait_for("job:accepted", set(targets), DELIVERY_TIMEOUT_S)
    if len(arrivals) != len(targets):
        raise RuntimeError(f"only {len(arrivals)} of {len(targets)} drivers got job:accepted")
    return sorted(at - sent_at for _, _, at in arrivals)


def _measure(
    gateway: Process, port: int, drivers: list[Driver], drivers_file: Path
) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}"
    pid = gateway.popen.pid
    start = _rss_kb(pid)
    asyncio.run(_warm_up(url, drivers[:WARM_UP]))
    time.sleep(1.0)
    before = _rss_kb(pid)
    clients = _Clients(url, drivers_file, len(drivers))
    try:
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        connected = clients.connect()
        connect_s, connect_cpu_s = time.monotonic() - started, cpu_seconds(pid) - cpu_before
        print(
            f"{connected} connected in {connect_s:.1f} s;"
            f" gateway CPU {connect_cpu_s * 1000 / connected:.2f} ms a connection",
            file=sys.stderr,
        )
        if not gateway.alive():
            raise RuntimeError("the gateway exited")
        time.sleep(2.0)  # let the last handshakes' garbage go
        after = _rss_kb(pid)
        ids = [d for d, _ in drivers]
        targets = ids[:: len(ids) // FANOUT][:FANOUT]  # spread over every client process
        _probe(clients, ids[1])
        fanouts = []
        for job_id in range(1, FANOUT_REPEATS + 1):
            fanouts.append(_fanout(clients, targets, job_id))
            time.sleep(0.3)
    finally:
        clients.close()
    last = [delays[-1] * 1000 for delays in fanouts]
    print("fan-outs (ms to the last driver):", [round(ms) for ms in last], file=sys.stderr)
    return {
        "connections": connected,
        "kb_per_connection": round((after - before) / connected, 1),
        "fanout_1000_ms": round(statistics.median(last), 1),
        "fanout_1000_max_ms": round(max(last), 1),
        "fanout_p50_ms": round(statistics.median(statistics.median(d) for d in fanouts) * 1000, 1),
        "connect_s": round(connect_s, 1),
        "rss_start_mb": round(start / 1024, 1),
        "rss_before_mb": round(before / 1024, 1),
        "rss_mb": round(after / 1024, 1),
    }


def main() -> None:
    _raise_fd_limit()  # the gateway inherits it
    ids = add_users("driver", CONNECTIONS)
    drivers = [(d, token_for(d, "driver")) for d in ids]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    drivers_file = log_dir / "drivers.json"
    drivers_file.write_text(json.dumps(drivers))
    gateway: Process | None = None
    try:
        gateway, port = start_gateway(log_dir)
        figures = _measure(gateway, port, drivers, drivers_file)
    except Exception:
        if gateway is not None:
            sys.stderr.write(gateway.log()[-3000:])
        raise
    finally:
        if gateway is not None:
            gateway.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
