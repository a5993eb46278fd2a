"""Prometheus metrics of every Dispatch process, and how operators read them.

Every metric is defined here, once, so that the dashboard and the alert rules (ops/) can be
checked against one list. Each process type is scraped on its own: the API (`/metrics` on
its port), the gateway (`/metrics` on its port), and each kind of worker on
`METRICS_PORT`. All of them ask for the operators' password (`FLOWER_BASIC_AUTH`, the one
Flower asks for) and answer nothing without it.

gunicorn's workers and Celery's prefork children are separate processes: with
`PROMETHEUS_MULTIPROC_DIR` set (one directory per process type, emptied before the process
type starts, as bin/run-stack does) prometheus-client keeps their values in files that the
scrape adds up. Without it (one process: the gateway, tests of one function) the values live
in memory.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from settings import settings

log = logging.getLogger(__name__)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # prometheus-client writes each process's values there from the first definition below.
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

REQUESTS = Counter(
    "dispatch_http_requests",
    "REST requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "dispatch_http_request_duration_seconds",
    "Time to answer a REST request, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOB_EVENTS = Counter(
    "dispatch_job_events",
    "Changes of jobs announced (created, offered, accepted, arrived, started, completed, "
    "released, declined, cancelled, expired), each counted once when its task announces it.",
    ["event"],
)
BOOKING_TO_FIRST_OFFER = Histogram(
    "dispatch_booking_to_first_offer_seconds",
    "From a job's creation to its first offers going out (job:new sent), by the job's own "
    "timestamps.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
BOOKING_TO_ACCEPT = Histogram(
    "dispatch_booking_to_accept_seconds",
    "From a job's creation to a driver accepting it, by the job's own timestamps.",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
OFFERS_PER_ROUND = Histogram(
    "dispatch_offers_per_round",
    "Drivers offered a job in one round (its first, or the one after a release).",
    buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500),
)
TASK_WAIT = Histogram(
    "dispatch_task_wait_seconds",
    "How long a task waited in its queue (dispatch, push) before a worker started it: the "
    "workers are behind when it grows; the relay holds its re-drives for as long.",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
OFFERS_SENT = Counter("dispatch_offers_sent", "Offers sent to drivers as job:new.")
PUSHES = Counter(
    "dispatch_pushes",
    "APNs pushes answered, by outcome (delivered, retry, token_dead, dropped) and reason: "
    "APNs's reason, else the HTTP status, else no_answer (timeout, no connection).",
    ["outcome", "reason"],
)
SOCKETS_CONNECTED = Gauge(
    "dispatch_sockets_connected",
    "Signed-in sockets this gateway holds.",
    multiprocess_mode="livesum",
)
SOCKET_EVENTS = Counter(
    "dispatch_socket_events",
    "Events this gateway delivered to its sockets, by event name.",
    ["event"],
)
GATEWAY_SUBSCRIBED = Gauge(
    "dispatch_gateway_redis_subscribed",
    "1 while this gateway holds its Redis subscription (events reach its sockets), else 0.",
    multiprocess_mode="liveall",
)
LOCATION_REPORTS = Counter(
    "dispatch_location_reports",
    "Driver position reports stored, by the way they came (socket, rest).",
    ["via"],
)
SWEEP_REDRIVEN = Counter(
    "dispatch_sweep_redriven",
    "Announcements and pushes the outbox sweep had to re-drive (their enqueue was lost or "
    "their worker died): each one is an alarm.",
    ["kind"],
)

INDEX_REPAIRED = Counter(
    "dispatch_index_repaired",
    "Drivers whose entry in the index of dispatchable drivers the relay's reconciliation put "
    "right (a write lost to a Redis error or a race of two commits; all of them after Redis "
    "lost the index).",
)


def exposition() -> tuple[bytes, str]:
    """This process type's metrics in the Prometheus text format, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def scrape_allowed(authorization: str | None) -> bool:
    """Whether an `Authorization` header carries the operators' password. Without one set
    (`FLOWER_BASIC_AUTH`) nobody may scrape."""
    expected = settings.flower_basic_auth
    if not expected or ":" not in expected or not authorization:
        return False
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(given, expected.encode())


def scrape(authorization: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer to GET /metrics, whichever server asks: status, headers and body; a 401
    asking for basic auth unless `authorization` carries the operators' password."""
    if not scrape_allowed(authorization):
        challenge = ("WWW-Authenticate", 'Basic realm="dispatch metrics"')
        return 401, [("Content-Type", "text/plain"), challenge], b"operators only\n"
    body, content_type = exposition()
    return 200, [("Content-Type", content_type)], body


def _scrape_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != "/metrics":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    status, headers, body = scrape(environ.get("HTTP_AUTHORIZATION"))
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def serve_scrapes(host: str, port: int) -> WSGIServer:
    """Serve `/metrics` (operators' password) on a daemon thread: a worker's exporter."""
    server = make_server(host, port, _scrape_app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics for operators on http://%s:%d/metrics", host, port)
    return server
