"""Many driver feeds in one process: a minimal Socket.IO client (Engine.IO 4 over a websocket),
light enough for hundreds of connections per process, recording when each event arrives."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import websockets

Received = tuple[str, int, Any, float]  # event, driver id, payload, arrival (time.time())


@dataclass(frozen=True)
class FeedSpec:
    url: str  # ws://host:port
    drivers: Sequence[tuple[int, str]]  # (driver id, bearer token)


async def _feed(
    url: str, driver_id: int, token: str, sink: list[Received], ready: asyncio.Event
) -> None:
    async with websockets.connect(
        f"{url}/socket.io/?EIO=4&transport=websocket",
        ping_interval=None,
        max_size=2**20,
        open_timeout=120,
    ) as ws:
        opened = await ws.recv()
        assert str(opened).startswith("0"), opened
        await ws.send("40" + json.dumps({"token": token}))
        joined = str(await ws.recv())
        if not joined.startswith("40"):
            raise RuntimeError(f"driver {driver_id} refused: {joined}")
        ready.set()
        async for message in ws:  # until cancelled
            if message == "2":
                await ws.send("3")
            elif str(message).startswith("42"):
                event, payload = json.loads(str(message)[2:])
                sink.append((event, driver_id, payload, time.time()))


async def _run(spec: FeedSpec, ready_q: Any, stop_ev: Any, out_q: Any) -> None:
    sink: list[Received] = []
    readies = [asyncio.Event() for _ in spec.drivers]
    tasks = []
    for (driver_id, token), ready in zip(spec.drivers, readies, strict=True):
        tasks.append(asyncio.create_task(_feed(spec.url, driver_id, token, sink, ready)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)  # do not stampede the gateway's accept queue
    await asyncio.gather(*(r.wait() for r in readies))
    ready_q.put(len(readies))
    while not stop_ev.is_set():
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out_q.put(sink)


def run_feeds(spec: FeedSpec, ready_q: Any, stop_ev: Any, out_q: Any) -> None:
    """Process entry point: connect every feed, report ready, record until stopped."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_run(spec, ready_q, stop_ev, out_q))


class FeedProcesses:
    """Driver feeds split over `processes` client processes."""

    def __init__(self, url: str, drivers: Sequence[tuple[int, str]], processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready_q, self.out_q = context.Queue(), context.Queue()
        self.stop_ev = context.Event()
        shares = [drivers[i::processes] for i in range(processes)]
        self.children = [
            context.Process(
                target=run_feeds,
                args=(FeedSpec(url, share), self.ready_q, self.stop_ev, self.out_q),
                daemon=True,
            )
            for share in shares
        ]

    def start(self, timeout_s: float = 120) -> int:
        for child in self.children:
            child.start()
        return sum(self.ready_q.get(timeout=timeout_s) for _ in self.children)

    def stop(self, timeout_s: float = 60) -> list[Received]:
        self.stop_ev.set()
        received: list[Received] = []
        for _ in self.children:
            received += self.out_q.get(timeout=timeout_s)
        for child in self.children:
            child.join(10)
        return received

    def kill(self) -> None:
        for child in self.children:
            if child.is_alive():
                child.kill()
