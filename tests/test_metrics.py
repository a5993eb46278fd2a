"""Prometheus metrics as operators scrape them: real gunicorn (two workers, multiprocess
files), the dispatch and push workers (prefork children, each worker's exporter on
METRICS_PORT) and a gateway, each process type with its own PROMETHEUS_MULTIPROC_DIR as in
the Procfile. One job is created, offered over a socket and a push, and accepted; each
/metrics then shows exactly that, and refuses a scrape without the operators' password."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from fake_apns import FakeAPNs
from tests.factories import ORIGIN, Factory, HttpClient
from tests.processes import (
    Process,
    free_port,
    port_open,
    start_gateway,
    start_web,
    start_worker,
    wait_until,
)
from tests.sockets import Listeners

pytestmark = pytest.mark.slow

OPERATOR = ("operator", "metrics-test-password")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


class Scrapes:
    """The /metrics URL of each process type."""

    def __init__(self, api: int, gateway: int, worker: int, pushworker: int) -> None:
        self.urls = {
            "api": f"http://127.0.0.1:{api}/metrics",
            "gateway": f"http://127.0.0.1:{gateway}/metrics",
            "worker": f"http://127.0.0.1:{worker}/metrics",
            "pushworker": f"http://127.0.0.1:{pushworker}/metrics",
        }

    def samples(self, kind: str) -> dict[str, float]:
        """`name{labels}` -> value, as Prometheus would read the scrape."""
        answer = requests.get(self.urls[kind], auth=OPERATOR, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"].startswith("text/plain")
        found = {}
        for line in answer.text.splitlines():
            match = SAMPLE.match(line)
            if match and not line.startswith("#"):
                name, labels, value = match.groups()
                found[name + _sorted_labels(labels or "")] = float(value)
        return found


def _sorted_labels(labels: str) -> str:
    """`{b="2",a="1"}` -> `{a="1",b="2"}`: one spelling for each series."""
    if not labels:
        return ""
    pairs = sorted(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', labels))
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs if k != "pid") + "}"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, apns_env: dict[str, str]
) -> Iterator[tuple[Scrapes, int, int]]:
    logs = tmp_path_factory.mktemp("metrics")
    shared = {**apns_env, "FLOWER_BASIC_AUTH": ":".join(OPERATOR)}

    def own(kind: str, **extra: str) -> dict[str, str]:
        folder = logs / "prometheus" / kind
        folder.mkdir(parents=True)
        return {**shared, "PROMETHEUS_MULTIPROC_DIR": str(folder), **extra}

    worker_port, pushworker_port = free_port(), free_port()
    started: list[Process] = []
    try:
        web, api_port = start_web(logs, own("web"))
        started.append(web)
        started.append(
            start_worker(logs, own("worker", METRICS_PORT=str(worker_port)), "worker", 2)
        )
        started.append(
            start_worker(
                logs,
                own("pushworker", METRICS_PORT=str(pushworker_port)),
                "pushworker",
                1,
                "push",
            )
        )
        gateway, gateway_port = start_gateway(logs, shared)
        started.append(gateway)
        for port in (worker_port, pushworker_port):
            wait_until(lambda port=port: port_open(port), 20, "a worker's exporter")
        yield Scrapes(api_port, gateway_port, worker_port, pushworker_port), api_port, gateway_port
    finally:
        for process in reversed(started):
            process.stop()


def test_every_scrape_asks_for_the_operators_password(
    stack: tuple[Scrapes, int, int],
) -> None:
    scrapes, _, _ = stack
    for kind, url in scrapes.urls.items():
        for auth in (None, ("operator", "wrong"), ("someone", OPERATOR[1])):
            answer = requests.get(url, auth=auth, timeout=10)
            assert answer.status_code == 401, (kind, auth, answer.status_code)
            assert "dispatch_" not in answer.text
            assert answer.headers["WWW-Authenticate"].startswith("Basic")
        bearer = requests.get(url, headers={"Authorization": "Bearer x"}, timeout=10)
        assert bearer.status_code == 401, kind


def test_one_job_offered_and_accepted_moves_each_metric_by_exactly_that(
    stack: tuple[Scrapes, int, int], fake_apns: FakeAPNs
) -> None:
    scrapes, api_port, gateway_port = stack
    http = HttpClient(f"http://127.0.0.1:{api_port}")
    listeners = Listeners()
    try:
        factory = Factory(http)
        customer, driver = factory.customer(), factory.driver()
        factory.device(customer)
        phone = factory.device(driver)
        before = {kind: scrapes.samples(kind) for kind in scrapes.urls}

        socket = listeners.open(gateway_port, driver.token)
        assert socket.call("driver:location", {"lat": ORIGIN[0], "lng": ORIGIN[1]}) == {"ok": True}
        job = factory.job(customer)
        [offer] = socket.wait_for("job:new")
        assert offer["job"]["id"] == job["id"]
        wait_until(lambda: fake_apns.received(phone), 20, "the offer's push")
        took = http.post(f"/api/v1/jobs/{job['id']}/accept", headers=driver.headers)
        assert took.status_code == 200
        socket.wait_for("job:accepted")
        wait_until(lambda: len(fake_apns.received()) == 2, 20, "the customer's push")

        def moved(kind: str) -> dict[str, float]:
            after = scrapes.samples(kind)
            return {
                name: value - before[kind].get(name, 0.0)
                for name, value in after.items()
                if value != before[kind].get(name, 0.0) and not name.endswith("_created")
            }

        # The counts settle once every task has finished: wait for the last of them.
        wait_until(
            lambda: moved("worker").get('dispatch_job_events_total{event="accepted"}') == 1,
            20,
            "the accept to be counted",
        )
        wait_until(
            lambda: (
                sum(
                    v
                    for k, v in moved("pushworker").items()
                    if k.startswith("dispatch_pushes_total")
                )
                == 2
            ),
            20,
            "both pushes to be counted",
        )
        api, worker = moved("api"), moved("worker")
        gateway, pushworker = moved("gateway"), moved("pushworker")
    finally:
        listeners.close()
        http.close()

    route = 'dispatch_http_requests_total{method="POST",route="/api/v1/jobs",status="201"}'
    assert api[route] == 1
    accept = '{method="POST",route="/api/v1/jobs/<int(max=2147483647):job_id>/accept",status="200"}'
    assert api["dispatch_http_requests_total" + accept] == 1
    assert (
        api['dispatch_http_request_duration_seconds_count{method="POST",route="/api/v1/jobs"}'] == 1
    )

    assert {k: v for k, v in worker.items() if k.startswith("dispatch_job_events_total")} == {
        'dispatch_job_events_total{event="created"}': 1,
        'dispatch_job_events_total{event="offered"}': 1,
        'dispatch_job_events_total{event="accepted"}': 1,
    }
    assert worker["dispatch_offers_sent_total"] == 1
    assert worker["dispatch_offers_per_round_count"] == 1
    assert worker["dispatch_offers_per_round_sum"] == 1
    assert worker["dispatch_booking_to_first_offer_seconds_count"] == 1
    assert worker["dispatch_booking_to_accept_seconds_count"] == 1
    assert 0 < worker["dispatch_booking_to_first_offer_seconds_sum"] < 30
    assert (
        worker["dispatch_booking_to_first_offer_seconds_sum"]
        < worker["dispatch_booking_to_accept_seconds_sum"]
    )

    assert {k: v for k, v in pushworker.items() if k.startswith("dispatch_pushes_total")} == {
        'dispatch_pushes_total{outcome="delivered",reason="200"}': 2,
    }
    # Each task's wait in its queue, counted by the worker that started it: the two pushes,
    # and the booking's and the accept's announcements.
    assert pushworker['dispatch_task_wait_seconds_count{queue="push"}'] == 2
    assert worker['dispatch_task_wait_seconds_count{queue="dispatch"}'] >= 2
    assert not any("queue=" in key for key in api) and not any("queue=" in key for key in gateway)

    assert gateway['dispatch_location_reports_total{via="socket"}'] == 1
    assert gateway['dispatch_socket_events_total{event="job:new"}'] == 1
    assert gateway['dispatch_socket_events_total{event="job:accepted"}'] == 1
    assert gateway["dispatch_sockets_connected"] == 1  # the driver's socket, still open then
    assert scrapes.samples("gateway")["dispatch_gateway_redis_subscribed"] == 1
