"""Booking throughput: POST /jobs per second under gunicorn as `make run` configures it,
beside GET /health on the same server (the floor). The load comes from 2 client processes
of 8 keep-alive threads each, the same for both endpoints."""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.data import add_users, bearer
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


def _per_second(url: str, method: str, body: dict | None, headers: dict) -> float:
    start = time.time() + 1.0
    until = start + SECONDS
    with multiprocessing.get_context("fork").Pool(PROCESSES) as pool:
        time.sleep(max(0.0, start - time.time()))
        counts = pool.starmap(_load, [(url, method, body, headers, until)] * PROCESSES)
    return sum(counts) / SECONDS


def main() -> None:
    [customer] = add_users("customer", 1)
    web, port = start_web(Path(tempfile.mkdtemp()))
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        body = {"pickup": {"lat": 38.7223, "lng": -9.1393, "address": "Rua Augusta 1"}}
        _per_second(f"{base}/health", "GET", None, {})  # warm-up of both workers
        floor = _per_second(f"{base}/health", "GET", None, {})
        per_s = _per_second(f"{base}/jobs", "POST", body, bearer(customer, "customer"))
    finally:
        web.stop()
    print(
        json.dumps(
            {
                "per_s": round(per_s, 1),
                "floor_per_s": round(floor, 1),
                "ratio": round(per_s / floor, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
