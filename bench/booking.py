"""Booking throughput: POST /jobs per second under gunicorn as `make run` configures it,
beside two floors on the same server: GET /health (`floor_per_s`), and an authenticated
no-op POST with a booking's body (`noop_per_s`: `bench.floor_app`, the API's bearer check
and the body read as JSON, nothing else; what a Flask app on this server cannot beat). The
load comes from 2 client processes of 8 keep-alive threads each, the same for every
endpoint. `web_cpu_ms_per_*` is the web process's CPU time per request of each kind."""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.data import add_users, bearer
from bench.floor_app import FLOOR_APP, NOOP_PATH, web_cpu_s
from tests.processes import start_web

SECONDS = 10
PROCESSES = 2
THREADS = 8


def _load(url: str, method: str, body: dict | None, headers: dict, until: float) -> int:
    done = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal done
        session = requests.Session()
        count = 0
        while time.time() < until:
            answer = session.request(method, url, json=body, headers=headers, timeout=30)
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"{answer.status_code}: {answer.text[:200]}")
            count += 1
        session.close()
        with lock:
            done += count

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done


def _per_second(
    url: str, method: str, body: dict | None, headers: dict, web_pid: int
) -> tuple[float, float]:
    """Requests answered per second, and the web process's CPU milliseconds per request."""
    start = time.time() + 1.0
    until = start + SECONDS
    with multiprocessing.get_context("fork").Pool(PROCESSES) as pool:
        time.sleep(max(0.0, start - time.time()))
        cpu_before = web_cpu_s(web_pid)
        counts = pool.starmap(_load, [(url, method, body, headers, until)] * PROCESSES)
        cpu_ms = (web_cpu_s(web_pid) - cpu_before) * 1000
    return sum(counts) / SECONDS, round(cpu_ms / sum(counts), 2)


def main() -> None:
    [customer] = add_users("customer", 1)
    web, port = start_web(Path(tempfile.mkdtemp()), app=FLOOR_APP)
    base = f"http://127.0.0.1:{port}"
    pid, signed_in = web.popen.pid, bearer(customer, "customer")
    try:
        body = {"pickup": {"lat": 38.7223, "lng": -9.1393, "address": "Rua Augusta 1"}}
        _per_second(f"{base}/api/v1/health", "GET", None, {}, pid)  # warm-up of both workers
        floor, health_cpu = _per_second(f"{base}/api/v1/health", "GET", None, {}, pid)
        noop, noop_cpu = _per_second(f"{base}{NOOP_PATH}", "POST", body, signed_in, pid)
        per_s, booking_cpu = _per_second(f"{base}/api/v1/jobs", "POST", body, signed_in, pid)
    finally:
        web.stop()
    print(
        json.dumps(
            {
                "per_s": round(per_s, 1),
                "floor_per_s": round(floor, 1),
                "ratio": round(per_s / floor, 2),
                "noop_per_s": round(noop, 1),
                "ratio_noop": round(per_s / noop, 2),
                "web_cpu_ms_per_booking": booking_cpu,
                "web_cpu_ms_per_noop": noop_cpu,
                "web_cpu_ms_per_health": health_cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
