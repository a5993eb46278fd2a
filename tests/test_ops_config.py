"""The operators' dashboard and alert rules (ops/) ask only for what the processes expose.

Every PromQL expression of the Grafana dashboard and of the alert rules is parsed with
promql-parser (the Prometheus grammar and its functions' types, so an unbalanced bracket, an
unknown function or `rate` of an instant vector fails here), and every series it selects
must be one that workers/metrics.py defines (as prometheus-client exposes it: a Counter as
`_total`, a Histogram as `_bucket`/`_sum`/`_count`), one of Flower's or Prometheus's own `up`;
every label it matches or aggregates by must be one those series carry, and the values it
matches for a few labels (the scrape job, the route, the job event, the push outcome) must be
ones that exist. A renamed metric, label or route then fails here, not silently on a graph.
Where Prometheus's promtool is on PATH, `promtool check` reads the rules (their annotation
templates too) and the scrape config, and promtool's rule unit tests play RULE_TESTS: each
alert fires when it should, with its labels, and not otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from flask import Flask
from flower.events import get_prometheus_metrics
from prometheus_client.metrics import MetricWrapperBase

import workers.metrics
from models.job_events import EventType
from settings import PROJECT_ROOT
from workers.apns.results import Outcome

OPS = PROJECT_ROOT / "ops"
DASHBOARD = OPS / "grafana" / "dispatch.json"
ALERTS = OPS / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = OPS / "prometheus" / "prometheus.yml"
SCRAPE_JOBS = {
    "dispatch-api",
    "dispatch-gateway",
    "dispatch-worker",
    "dispatch-pushworker",
    "dispatch-relay",
    "flower",
}

# Grafana's own variables, as Prometheus receives them once Grafana has filled them in.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})
# A series Prometheus makes itself for every target, with no process defining it.
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def exposed_series(metrics: list[MetricWrapperBase]) -> dict[str, frozenset[str]]:
    """Each series name these metrics are scraped as, with its labels."""
    series = {}
    for metric in metrics:
        labels = frozenset(metric._labelnames)
        [family] = metric.describe()
        for suffix in SUFFIXES[family.type]:
            le = {"le"} if suffix == "_bucket" else set()
            series[family.name + suffix] = labels | le | TARGET_LABELS
    return series


def metrics_of(namespace: object) -> list[MetricWrapperBase]:
    return [m for m in vars(namespace).values() if isinstance(m, MetricWrapperBase)]


SERIES = {
    **exposed_series(metrics_of(workers.metrics)),
    **exposed_series(metrics_of(get_prometheus_metrics())),
    **PROMETHEUS_SERIES,
}


@dataclass(frozen=True)
class Query:
    where: str  # the panel or alert, for the failure message
    expr: str


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data: every panel but the rows (and those inside rows)."""
    panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def queries(dashboard: dict[str, Any], rules: list[dict[str, Any]]) -> list[Query]:
    found = [
        Query(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [Query(f"alert {rule['alert']}", rule["expr"]) for rule in rules]
    return found


def filled_in(expr: str) -> str:
    """The expression with Grafana's variables replaced; an unknown variable fails."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr!r}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def nodes(expr: promql_parser.Expr) -> Iterator[promql_parser.Expr]:
    found: list[promql_parser.Expr] = []
    promql_parser.walk(expr, found.append)
    return iter(found)


def selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    return [node for node in nodes(expr) if isinstance(node, promql_parser.VectorSelector)]


def known_values(app: Flask) -> dict[tuple[str, str], set[str]]:
    """(series family, label) -> every value that label takes. `*` is any series."""
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    return {
        ("*", "job"): SCRAPE_JOBS,
        ("dispatch_http_requests", "route"): routes,
        ("dispatch_http_request_duration_seconds", "route"): routes,
        ("dispatch_job_events", "event"): {event.value for event in EventType},
        ("dispatch_pushes", "outcome"): {outcome.value for outcome in Outcome},
    }


def family(series: str) -> str:
    return re.sub(r"_(total|created|bucket|sum|count)$", "", series)


def value_errors(
    selector: promql_parser.VectorSelector, known: dict[tuple[str, str], set[str]]
) -> list[str]:
    """Matchers that compare a label with a value it never takes."""
    errors = []
    for matcher in selector.matchers.matchers:
        values = known.get((family(selector.name), matcher.name)) or known.get(("*", matcher.name))
        if values is None:
            continue
        if matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual):
            alternatives = [re.escape(matcher.value)]
        else:
            alternatives = matcher.value.split("|")
        for alternative in alternatives:
            if not any(re.fullmatch(alternative, value) for value in values):
                errors.append(f"{matcher.name}={alternative!r} matches no {matcher.name} there is")
    return errors


def problems(query: Query, known: dict[tuple[str, str], set[str]]) -> list[str]:
    """What is wrong with one expression, as messages."""
    try:
        expr = promql_parser.parse(filled_in(query.expr))
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    found = []
    for selector in selectors(expr):
        if selector.name not in SERIES:
            found.append(f"{selector.name} is no series any process exposes")
            continue
        labels = SERIES[selector.name]
        found += [
            f"{selector.name} has no label {matcher.name}"
            for matcher in selector.matchers.matchers
            if matcher.name not in labels
        ]
        found += value_errors(selector, known)
    for node in nodes(expr):
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            under = set().union(*(SERIES.get(s.name, set()) for s in selectors(node.expr)))
            found += [
                f"{node.op} by {label}: no series under it has that label"
                for label in node.modifier.labels
                if label not in under
            ]
    return found


@pytest.fixture(scope="module")
def known(app: Flask) -> dict[tuple[str, str], set[str]]:
    return known_values(app)


def test_every_query_asks_for_series_labels_and_values_that_exist(
    known: dict[tuple[str, str], set[str]],
) -> None:
    found = queries(load_dashboard(), load_alert_rules())
    assert len(found) > 30
    wrong = {query: problems(query, known) for query in found}
    assert {f"{q.where}: {q.expr}": errors for q, errors in wrong.items() if errors} == {}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(rate(dispatch_offers_made_total[5m]))", "no series any process exposes"),
        ("dispatch_sockets_connected_total", "no series any process exposes"),
        ('sum(rate(dispatch_pushes_total{status="500"}[5m]))', "has no label status"),
        ("sum by (driver) (dispatch_sockets_connected)", "by driver: no series"),
        ('rate(dispatch_job_events_total{event="booked"}[5m])', "event='booked' matches no"),
        ('up{job=~"dispatch-web|flower"}', "job='dispatch-web' matches no"),
        ('rate(dispatch_http_requests_total{route="/jobs"}[5m])', "route='/jobs' matches no"),
        ("sum(rate(dispatch_offers_sent_total[5m])", "does not parse"),
        ("rate(dispatch_offers_sent_total)", "does not parse"),
        ("histogram_quantil(0.9, dispatch_booking_to_accept_seconds_bucket)", "does not parse"),
    ],
)
def test_a_wrong_query_is_caught(
    known: dict[tuple[str, str], set[str]], expr: str, expected: str
) -> None:
    [error] = problems(Query("a wrong one", expr), known)
    assert expected in error


def test_a_dashboard_query_naming_a_missing_metric_fails(
    known: dict[tuple[str, str], set[str]],
) -> None:
    dashboard = load_dashboard()
    panel = dashboard_panels(dashboard)[0]
    panel["targets"][0]["expr"] = "sum(rate(dispatch_bookings_total[$__rate_interval]))"
    wrong = [p for q in queries(dashboard, load_alert_rules()) for p in problems(q, known)]
    assert wrong == ["dispatch_bookings_total is no series any process exposes"]


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "dispatch"
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    panels = dashboard_panels(dashboard)
    for panel in panels:
        assert panel["datasource"] == chosen, panel["title"]
        assert panel["targets"], f"{panel['title']} shows nothing"
        for target in panel["targets"]:
            assert target["datasource"] == chosen, panel["title"]
            assert target["expr"].strip(), panel["title"]
    in_rows = [panel for row in dashboard["panels"] for panel in row.get("panels", [])]
    ids = [panel["id"] for panel in dashboard["panels"] + in_rows]
    assert len(ids) == len(set(ids))
    assert "://" not in DASHBOARD.read_text(), "the dashboard links outside"


def test_every_alert_says_how_urgent_it_is_and_what_to_check() -> None:
    rules = load_alert_rules()
    assert len(rules) >= 6
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_the_scrape_config_asks_every_process_with_the_operators_password() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == SCRAPE_JOBS
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics", name
        assert set(job["basic_auth"]) == {"username", "password_file"}, name


# On PATH, or where `make test` puts it (the Makefile's PROMTOOL).
PROMTOOL = shutil.which("promtool") or shutil.which(
    "promtool", path=str(PROJECT_ROOT / ".venv" / "bin")
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not on PATH: it comes in the Debian package prometheus, whose install "
    "starts a Prometheus server; take it without installing (apt-get download prometheus, "
    "dpkg-deb -x prometheus_*.deb DIR, DIR/usr/bin on PATH). The expressions are parsed above",
)


def series(selector: str, values: str) -> dict[str, str]:
    """An input series of a promtool rule test: one value per minute (`0+2x30`: 0, 2, … 60)."""
    return {"series": selector, "values": values}


def firing(at: str, alert: str, *alerts: dict[str, str]) -> dict[str, Any]:
    """At `at`, exactly these `alert`s fire (their labels; none: it does not fire)."""
    expected = [{"exp_labels": labels} for labels in alerts]
    return {"eval_time": at, "alertname": alert, "exp_alerts": expected}


API = 'job="dispatch-api", instance="api:8000"'
WORKER = 'job="dispatch-worker", instance="worker:9101"'
PUSHWORKER = 'job="dispatch-pushworker", instance="pushworker:9102"'
RELAY = 'job="dispatch-relay", instance="relay:9103"'
BOOKINGS = (
    f'dispatch_http_requests_total{{route="/api/v1/jobs", method="POST", status="201", {API}}}'
)
CREATED = f'dispatch_job_events_total{{event="created", {WORKER}}}'
OFFERS = f"dispatch_offers_sent_total{{{WORKER}}}"
PAGE = {"severity": "page"}
# Each: series over 40 minutes, then which alerts fire when. A counter with no series at all
# (a worker restarted and never counted) must alert like one that stays flat.
RULE_TESTS = [
    {  # jobs booked, the dispatch worker announces none: stalled, not "no offers"
        "input_series": [series(BOOKINGS, "0+1x40")],
        "alert_rule_test": [
            firing("3m", "DispatchStalled"),
            firing("20m", "DispatchStalled", PAGE),
            firing("20m", "DispatchNoOffersSent"),
        ],
    },
    {  # booked, announced, offered: all well
        "input_series": [
            series(BOOKINGS, "0+1x40"),
            series(CREATED, "0+1x40"),
            series(OFFERS, "0+3x40"),
        ],
        "alert_rule_test": [
            firing("20m", "DispatchStalled"),
            firing("20m", "DispatchNoOffersSent"),
        ],
    },
    {  # announced but nobody offered (the counter flat at 0)
        "input_series": [
            series(BOOKINGS, "0+1x40"),
            series(CREATED, "0+1x40"),
            series(OFFERS, "0x40"),
        ],
        "alert_rule_test": [
            firing("20m", "DispatchNoOffersSent", PAGE),
            firing("20m", "DispatchStalled"),
        ],
    },
    {  # a gateway loses its subscription at minute 2; the other keeps its own
        "input_series": [
            series(
                'dispatch_gateway_redis_subscribed{job="dispatch-gateway", instance="g1"}',
                "1 1 0 0 0 0 0",
            ),
            series(
                'dispatch_gateway_redis_subscribed{job="dispatch-gateway", instance="g2"}',
                "1 1 1 1 1 1 1",
            ),
        ],
        "alert_rule_test": [
            firing("2m", "DispatchGatewayNotSubscribed"),
            firing(
                "4m",
                "DispatchGatewayNotSubscribed",
                {**PAGE, "job": "dispatch-gateway", "instance": "g1"},
            ),
        ],
    },
    {  # half the pushes dropped for a dead token: page; a few failures of few pushes: not
        "input_series": [
            series(
                f'dispatch_pushes_total{{outcome="delivered", reason="", {PUSHWORKER}}}', "0+5x40"
            ),
            series(
                f'dispatch_pushes_total{{outcome="token_dead", reason="BadDeviceToken", '
                f"{PUSHWORKER}}}",
                "0+5x40",
            ),
            series(f'dispatch_pushes_total{{outcome="retry", reason="", {PUSHWORKER}}}', "0x40"),
        ],
        "alert_rule_test": [firing("25m", "DispatchPushFailureRatioHigh", PAGE)],
    },
    {
        "input_series": [
            series(
                f'dispatch_pushes_total{{outcome="delivered", reason="", {PUSHWORKER}}}', "0x40"
            ),
            series(
                f'dispatch_pushes_total{{outcome="dropped", reason="", {PUSHWORKER}}}', "0+1x40"
            ),
        ],
        "alert_rule_test": [firing("25m", "DispatchPushFailureRatioHigh")],
    },
    {  # dispatch tasks wait 10-30 s from minute 10 on: a page 10 minutes later; push tasks
        # wait under 5 ms: none
        "input_series": [
            *(
                series(
                    f'dispatch_task_wait_seconds_bucket{{queue="dispatch", le="{le}", {WORKER}}}',
                    values,
                )
                for le, values in (("5.0", "0+10x40"), ("30.0", "0+10x10 100+30x30"))
            ),
            series(
                f'dispatch_task_wait_seconds_bucket{{queue="dispatch", le="+Inf", {WORKER}}}',
                "0+10x10 100+30x30",
            ),
            *(
                series(
                    f'dispatch_task_wait_seconds_bucket{{queue="push", le="{le}", {PUSHWORKER}}}',
                    "0+10x40",
                )
                for le in ("0.005", "5.0", "+Inf")
            ),
        ],
        "alert_rule_test": [
            firing("18m", "DispatchWorkersBehind"),
            firing("30m", "DispatchWorkersBehind", {**PAGE, "queue": "dispatch"}),
        ],
    },
    {  # one re-drive: a ticket, no page; re-drives every minute: a page
        "input_series": [
            series(f'dispatch_sweep_redriven_total{{kind="push", {RELAY}}}', "0 0 1x40"),
            series(f'dispatch_sweep_redriven_total{{kind="announcement", {RELAY}}}', "0+1x40"),
        ],
        "alert_rule_test": [
            firing(
                "5m",
                "DispatchSweepRedrove",
                {"severity": "ticket", "kind": "push"},
                {"severity": "ticket", "kind": "announcement"},
            ),
            firing("25m", "DispatchSweepRedriving", {**PAGE, "kind": "announcement"}),
        ],
    },
    {  # a target down for 2 minutes
        "input_series": [series(f"up{{{API}}}", "1 1 0 0 0 0 0")],
        "alert_rule_test": [
            firing("3m", "DispatchTargetDown"),
            firing(
                "5m", "DispatchTargetDown", {**PAGE, "job": "dispatch-api", "instance": "api:8000"}
            ),
        ],
    },
]


@needs_promtool
@pytest.mark.parametrize("check", [["rules", ALERTS.name], ["config", SCRAPE_CONFIG.name]])
def test_promtool_accepts_the_rules_and_the_scrape_config(check: list[str]) -> None:
    done = subprocess.run(
        [str(PROMTOOL), "check", *check],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    """promtool's rule unit tests on RULE_TESTS, without the annotations (promtool would
    compare their rendered text; the check above renders them)."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(rules))
    tests = [{"interval": "1m", **test} for test in RULE_TESTS]
    unit_tests = {"rule_files": [ALERTS.name], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(unit_tests))
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
