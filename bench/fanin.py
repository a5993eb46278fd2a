"""Fan-in through the Socket.IO message queue: python-socketio's Redis manager publishes every
emit on one channel that every gateway subscribes to, so each gateway reads and decodes every
event of the deployment, its own sockets' or not. This measures what that costs a gateway.

GATEWAYS gateway processes (`python -m realtime`, each on its own port, one Redis channel),
each holding SOCKETS_PER_GATEWAY driver sockets (bench.feeds, one client process a gateway).
A publisher (this process, `workers.events.emit_each`: one pipelined round trip every
TICK_S) emits at each total rate of RATES_PER_S in turn, every event addressed to one
driver's room. The events go round robin to the drivers of the first GATEWAYS - 1 gateways
("busy"); the last gateway ("bystander") holds its sockets too but no event is ever for
one of them, so all it does with the traffic is read it, decode it and find no socket.

Per rate, after WARM_UP_S, over MEASURE_S: each gateway's CPU time (user + system, all
threads, /proc) per second of wall time, and the events it handled per second (its own
`dispatch_socket_events_total`, which counts every emit the gateway takes off the channel,
foreign ones included); the share of the phase's events delivered to the sockets by the end
of the run (`delivered`), and their send-to-receipt latency (time.time() on both sides, one
machine); and the machine's idle share (/proc/stat): with none left, the gateways fall
behind the publisher (a backlog that later phases work off) and their CPU s/s stops growing
with the offered rate, while their CPU per event handled stays about what it costs.

Figures: per gateway, a straight line fitted to its CPU s/s against the events it handled
per second. The bystander's slope is the cost of an event that is not its own
(`foreign_us_per_event`); a busy gateway's (own share 1/(GATEWAYS - 1), the rest foreign)
gives the cost of an own event (`own_us_per_event`). `bystander_saturated_at_per_s` is the
total event rate at which the bystander's line reaches one core: the deployment size at
which a gateway does nothing but read other gateways' traffic. On this 2-CPU machine the
whole machine saturates long before that, so that figure is extrapolated from the line."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.data import add_users, summary_ms, token_for
from bench.feeds import FeedProcesses, Received
from bench.location import cpu_seconds
from models.rooms import driver_room
from tests.processes import Process, start_gateway
from workers.events import emit_each

GATEWAYS = 4
SOCKETS_PER_GATEWAY = 250
RATES_PER_S = [0, 250, 500, 1_000, 2_000, 4_000]
WARM_UP_S = 2.0
MEASURE_S = 6.0
TICK_S = 0.01
EVENT = "bench:fanin"
SCRAPE = ("bench", "fanin-scrape")  # FLOWER_BASIC_AUTH of the gateways, to read /metrics

_STARTED = time.monotonic()


def _progress(what: str) -> None:
    print(f"{time.monotonic() - _STARTED:5.1f} s  {what}", file=sys.stderr)


def _machine_busy() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine, from the first line of /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def _handled(port: int) -> float:
    """The `EVENT`s the gateway on `port` has taken off the channel, from its /metrics."""
    answer = requests.get(f"http://127.0.0.1:{port}/metrics", auth=SCRAPE, timeout=30)
    answer.raise_for_status()
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "dispatch_socket_events_total" and sample.labels["event"] == EVENT:
                return sample.value
    return 0.0


def _publish(rate: int, phase: int, targets: list[int], seconds: float) -> int:
    """Emit `rate` events a second for `seconds`, round robin over `targets`' rooms, in one
    pipelined round trip per tick; returns how many were sent."""
    began = time.time()
    sent = 0
    while (now := time.time()) < began + seconds:
        due = int(rate * (now - began)) - sent
        if due > 0:
            emit_each(
                [
                    (EVENT, {"phase": phase, "sent": now}, driver_room(targets[n % len(targets)]))
                    for n in range(sent, sent + due)
                ]
            )
            sent += due
        time.sleep(max(0.0, TICK_S - (time.time() - now)))
    return sent


def _phase(
    rate: int, phase: int, targets: list[int], gateways: list[tuple[int, int]]
) -> dict[str, Any]:
    """Publish at `rate` for WARM_UP_S + MEASURE_S; over the last MEASURE_S, each gateway's
    (pid, port) CPU s/s and events handled a second. Also the events sent in all (their
    deliveries are counted at the end)."""
    warm_up_sent = _publish(rate, phase, targets, WARM_UP_S)
    cpu_before = [cpu_seconds(pid) for pid, _ in gateways]
    handled_before = [_handled(port) for _, port in gateways]
    idle_before, total_before = _machine_busy()
    began = time.monotonic()
    sent = _publish(rate, phase, targets, MEASURE_S)
    wall = time.monotonic() - began
    idle_after, total_after = _machine_busy()
    cpu = [cpu_seconds(pid) - before for (pid, _), before in zip(gateways, cpu_before, strict=True)]
    handled = [
        _handled(port) - before for (_, port), before in zip(gateways, handled_before, strict=True)
    ]
    return {
        "total_per_s": rate,
        "published_per_s": round(sent / wall),
        "gateway_cpu_s_per_s": [round(c / wall, 3) for c in cpu],
        "gateway_handled_per_s": [round(h / wall) for h in handled],
        "machine_idle": round((idle_after - idle_before) / max(1, total_after - total_before), 2),
        "sent": warm_up_sent + sent,
    }


def _line(handled: list[float], cpu: list[float]) -> tuple[float, float]:
    """Least-squares line: CPU s/s = intercept + slope × events handled a second."""
    fit = statistics.linear_regression(handled, cpu)
    return fit.slope, fit.intercept


def _deliveries(phases: list[dict[str, Any]], received: list[Received]) -> None:
    """Add each phase's delivered share and send-to-receipt latency."""
    by_phase: dict[int, list[float]] = {}
    for event, _, payload, at in received:
        if event == EVENT:
            by_phase.setdefault(payload["phase"], []).append(at - payload["sent"])
    for number, phase in enumerate(phases):
        delays = by_phase.get(number, [])
        sent = phase.pop("sent")
        phase["delivered"] = round(len(delays) / sent, 3) if sent else None
        if delays:
            phase.update(summary_ms(delays))


def _figures(phases: list[dict[str, Any]]) -> dict[str, Any]:
    lines = [
        _line(
            [p["gateway_handled_per_s"][g] for p in phases],
            [p["gateway_cpu_s_per_s"][g] for p in phases],
        )
        for g in range(GATEWAYS)
    ]
    foreign, bystander_idle = lines[-1]
    busy = statistics.mean(slope for slope, _ in lines[:-1])
    # A busy gateway's slope: (own × 1 + foreign × (GATEWAYS - 2)) / (GATEWAYS - 1).
    own = busy * (GATEWAYS - 1) - foreign * (GATEWAYS - 2)
    saturated = round((1 - bystander_idle) / foreign) if foreign > 0 else None
    return {
        "gateways": GATEWAYS,
        "sockets_per_gateway": SOCKETS_PER_GATEWAY,
        "foreign_us_per_event": round(foreign * 1e6, 1),
        "own_us_per_event": round(own * 1e6, 1),
        "busy_us_per_event": round(busy * 1e6, 1),
        "bystander_saturated_at_per_s": saturated,
        "phases": phases,
    }


def main() -> None:
    drivers = add_users("driver", GATEWAYS * SOCKETS_PER_GATEWAY)
    shares = [drivers[g::GATEWAYS] for g in range(GATEWAYS)]
    targets = [d for share in shares[:-1] for d in share]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fanin-"))
    gateways: list[Process] = []
    ports: list[int] = []
    feeds: list[FeedProcesses] = []
    phases: list[dict[str, Any]] = []
    try:
        for g in range(GATEWAYS):
            gateway, port = start_gateway(
                log_dir, {"FLOWER_BASIC_AUTH": ":".join(SCRAPE)}, name=f"gateway{g}"
            )
            gateways.append(gateway)
            ports.append(port)
            gateway.wait_for_log("subscribed to Redis channel")
            feeds.append(
                FeedProcesses(
                    f"ws://127.0.0.1:{port}", [(d, token_for(d, "driver")) for d in shares[g]], 1
                )
            )
        connected = sum(f.start() for f in feeds)
        _progress(f"{GATEWAYS} gateways, {connected} sockets connected")
        pids_and_ports = [(g.popen.pid, port) for g, port in zip(gateways, ports, strict=True)]
        for number, rate in enumerate(RATES_PER_S):
            phase = _phase(rate, number, targets, pids_and_ports)
            phases.append(phase)
            _progress(
                f"{rate}/s: gateways' CPU s/s {phase['gateway_cpu_s_per_s']},"
                f" handled/s {phase['gateway_handled_per_s']}, idle {phase['machine_idle']}"
            )
        time.sleep(2.0)  # let the last events arrive
        received = [r for f in feeds for r in f.stop()]
        if not all(g.alive() for g in gateways):
            raise RuntimeError("a gateway exited")
    except Exception:
        for gateway in gateways:
            sys.stderr.write(gateway.log()[-2000:])
        raise
    finally:
        for f in feeds:
            f.kill()
        for gateway in gateways:
            gateway.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    _deliveries(phases, received)
    print(json.dumps(_figures(phases)))


if __name__ == "__main__":
    main()
