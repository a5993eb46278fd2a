"""Push throughput: pushes per second ONE process delivers to the fake APNs over HTTP/2 for a
fan-out of 5,000 tokens, through `workers.apns.send_pushes` as the push worker calls it (its
aioapns pool, its bound of pushes in flight, its shared provider token), and the CPU time spent
per push (less sensitive to other load on the machine than the rate): `cpu_us_per_push` by the
whole sending process, `sender_cpu_us_per_push` by the sender's own loop thread alone.

Beside it, the same fan-outs through bench/push_httpx.py (the same sender on httpx with HTTP/2
instead of aioapns), to re-measure the choice of client.

Floor: h2load (Debian package nghttp2-client) sending the same requests to the same server:
5,000 distinct device paths, the headers send_pushes sends (a bearer JWT signed with the fake
key, topic, push type, priority, collapse id, expiration, an apns-id) and the same JSON body,
on one connection with as many streams in flight as send_pushes allows (MAX_IN_FLIGHT).

The fake server runs in its own process, so it never shares a GIL with the sender; it forgets
what it received before each run, so every run meets the same server. aioapns, httpx and h2load
runs alternate, RUNS of each; the figures are medians."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import jwt

from bench.push_httpx import HttpxSender
from fake_apns import FakeAPNs, make_credentials
from fake_apns.certs import Credentials
from settings import settings
from workers.apns import MAX_IN_FLIGHT, Outcome, Push, PushResult, send_pushes, shutdown
from workers.apns.sender import Sender, current_sender

FAN_OUT = 5_000
WARM_UP = 500
RUNS = 5
SEND_TIMEOUT_S = 60.0
H2LOAD_TIMEOUT_S = 60.0
JOB_ID = 4242
EXPIRES_AT = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)


# --- the fake APNs, in a process of its own ---------------------------------------------------


def _serve(directory: str, ports: Any, commands: Any) -> None:
    """Serve until told to stop; `clear` forgets what was received so far."""
    server = FakeAPNs(make_credentials(Path(directory), reuse=True)).start()
    try:
        ports.put(server.port)
        while (command := commands.get()) != "stop":
            if command == "clear":
                server.clear()
                ports.put("cleared")
    finally:
        server.stop()


class _Server:
    def __init__(self, directory: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.replies, self.commands = context.Queue(), context.Queue()
        self.process = context.Process(
            target=_serve, args=(str(directory), self.replies, self.commands), daemon=True
        )
        self.process.start()
        self.port: int = self.replies.get(timeout=30)

    def clear(self) -> None:
        self.commands.put("clear")
        if self.replies.get(timeout=30) != "cleared":
            raise RuntimeError("the fake APNs did not clear")

    def stop(self) -> None:
        if self.process.is_alive():
            self.commands.put("stop")
            self.process.join(15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# --- the two senders -----------------------------------------------------------------------


def _token(n: int) -> str:
    return f"{n:064x}"


def _push(n: int) -> Push:
    """A job offer as workers.notifications builds it (the contract's job-offered push)."""
    return Push(
        token=_token(n),
        environment="production",
        title="New job nearby",
        body="1.2 km from you · 12 Market Street",
        data={"type": "job:new", "job_id": JOB_ID},
        priority=10,
        collapse_id=f"job-{JOB_ID}",
        expiration=EXPIRES_AT,
    )


Deliver = Callable[[Sequence[Push], float], list[PushResult]]


class Run(NamedTuple):
    """One fan-out: seconds, CPU seconds of the process (every thread) and of the sender's
    loop thread alone, and how many pushes were delivered."""

    seconds: float
    cpu_s: float
    sender_cpu_s: float
    delivered: int


def _thread_cpu_s(sender: Sender) -> float:
    assert sender.thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(sender.thread.ident))


def _send(deliver: Deliver, sender: Callable[[], Sender], first: int, count: int) -> Run:
    """One call of `count` distinct tokens through `deliver`, whose loop is `sender()`'s."""
    pushes = [_push(n) for n in range(first, first + count)]
    loop = sender()
    started, cpu_started = time.perf_counter(), time.process_time()
    sender_cpu_started = _thread_cpu_s(loop)
    results = deliver(pushes, SEND_TIMEOUT_S)
    sender_cpu = _thread_cpu_s(loop) - sender_cpu_started
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    delivered = sum(1 for r in results if r.outcome is Outcome.delivered)
    if delivered != count:
        failures = Counter(f"{r.status} {r.reason}" for r in results if r.status != 200)
        print(f"{count - delivered} of {count} not delivered: {dict(failures)}", file=sys.stderr)
    return Run(elapsed, cpu, sender_cpu, delivered)


def _through_httpx(sender: HttpxSender) -> Deliver:
    """send_pushes, with the httpx sender in place of the process's aioapns one."""

    def deliver(pushes: Sequence[Push], timeout_s: float) -> list[PushResult]:
        call = asyncio.run_coroutine_threadsafe(sender.send_all(pushes, timeout_s), sender.loop)
        return call.result(timeout_s + 5)

    return deliver


def _h2load_files(credentials: Credentials, port: int, directory: Path) -> list[str]:
    """The h2load command line and its input files: the same requests send_pushes makes."""
    provider_token = jwt.encode(
        {"iss": credentials.team_id, "iat": int(time.time())},
        credentials.signing_key_file.read_text(),
        algorithm="ES256",
        headers={"kid": credentials.key_id},
    )
    push = _push(0)
    body = directory / "body.json"
    body.write_bytes(json.dumps(push.payload(), ensure_ascii=False, separators=(",", ":")).encode())
    uris = directory / "uris.txt"
    uris.write_text(
        "".join(f"https://127.0.0.1:{port}/3/device/{_token(n)}\n" for n in range(FAN_OUT))
    )
    headers = {
        "apns-id": str(uuid.uuid4()),
        "apns-topic": credentials.topic,
        "apns-push-type": push.push_type,
        "apns-priority": str(push.priority),
        "apns-collapse-id": str(push.collapse_id),
        "apns-expiration": str(int(EXPIRES_AT.timestamp())),
        "authorization": f"bearer {provider_token}",
    }
    argv = ["h2load", "-n", str(FAN_OUT), "-c", "1", "-m", str(MAX_IN_FLIGHT)]
    argv += ["-d", str(body), "-i", str(uris)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    return argv


def _h2load(argv: list[str]) -> float | None:
    """Requests per second of one h2load run, or None (and why, on stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=H2LOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"h2load did not finish in {H2LOAD_TIMEOUT_S:.0f} s", file=sys.stderr)
        return None
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", done.stdout)
    answered = re.search(r"status codes: (\d+) 2xx", done.stdout)
    if done.returncode != 0 or rate is None or answered is None or int(answered[1]) != FAN_OUT:
        print(f"h2load failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(rate[1])


# --- the run ------------------------------------------------------------------------------------


def _configure(credentials: Credentials, port: int) -> None:
    """This process's settings point send_pushes at the fake server (the worker reads the
    same values from APNS_* environment variables)."""
    for name, value in credentials.environment(port).items():
        field = name.lower()
        setattr(settings, field, int(value) if field == "apns_port" else value)


def _measure(server: _Server, directory: Path) -> dict[str, Any]:
    credentials = make_credentials(directory, reuse=True)
    _configure(credentials, server.port)
    h2load_argv = _h2load_files(credentials, server.port, directory) if _has_h2load() else None
    httpx_sender = HttpxSender()
    senders: dict[str, tuple[Deliver, Callable[[], Sender]]] = {
        "aioapns": (send_pushes, current_sender),
        "httpx": (_through_httpx(httpx_sender), lambda: httpx_sender),
    }
    try:
        runs = _runs(server, senders, h2load_argv)
    finally:
        httpx_sender.close()
    for name, (rates, cpu_us, sender_cpu_us) in runs.items():
        print(
            f"{name}: pushes/s {rates}; CPU µs/push {cpu_us} (its loop thread {sender_cpu_us})",
            file=sys.stderr,
        )
    rate, cpu, sender_cpu = (statistics.median(runs["aioapns"][i]) for i in (0, 1, 2))
    httpx_rate, httpx_cpu = (statistics.median(runs["httpx"][i]) for i in (0, 1))
    floors = runs.get("h2load", ([], [], []))[0]
    floor = statistics.median(floors) if floors and all(floors) else None
    return {
        "per_s": round(rate, 1),
        "cpu_us_per_push": round(cpu),
        "sender_cpu_us_per_push": round(sender_cpu),
        "floor_per_s": round(floor, 1) if floor else None,
        "ratio": round(rate / floor, 2) if floor else None,
        "httpx_per_s": round(httpx_rate, 1),
        "httpx_cpu_us_per_push": round(httpx_cpu),
    }


def _runs(
    server: _Server,
    senders: dict[str, tuple[Deliver, Callable[[], Sender]]],
    h2load_argv: list[str] | None,
) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """RUNS fan-outs of each sender (and h2load), alternating: pushes/s, and CPU µs a push of
    the process and of the sender's loop thread alone."""
    runs: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for deliver, sender in senders.values():
        _send(deliver, sender, 10 * FAN_OUT, WARM_UP)  # connect, sign the token, warm up
    for run in range(RUNS):
        for name, (deliver, sender) in senders.items():
            server.clear()
            done = _send(deliver, sender, run * FAN_OUT, FAN_OUT)
            if done.delivered != FAN_OUT:
                raise RuntimeError(f"{name}: not every push delivered, the rate means nothing")
            rates, cpu_us, sender_cpu_us = runs.setdefault(name, ([], [], []))
            rates.append(round(FAN_OUT / done.seconds))
            cpu_us.append(round(done.cpu_s / FAN_OUT * 1e6))
            sender_cpu_us.append(round(done.sender_cpu_s / FAN_OUT * 1e6))
        if h2load_argv is not None:
            server.clear()
            floor = _h2load(h2load_argv)
            runs.setdefault("h2load", ([], [], []))[0].append(round(floor) if floor else 0)
    return runs


def _has_h2load() -> bool:
    if shutil.which("h2load") is None:
        print(
            "h2load not found (Debian package nghttp2-client): floor_per_s is null",
            file=sys.stderr,
        )
        return False
    return True


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-push-"))
    server: _Server | None = None
    try:
        server = _Server(directory)
        figures = _measure(server, directory)
    finally:
        shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
