"""What operators see of the web process: every request counted, timed and logged (one line,
with its route template and request id), `/metrics` (outside /api/v1, behind the operators'
password), and gunicorn's own log in LOG_FORMAT.

A request's id is the caller's `X-Request-ID` when it is short and plain (a load balancer's),
else a new one; every answer carries it back, and the tasks the request enqueues carry it on
(`workers.logs`), so one grep finds the request and all it caused."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from gunicorn import glogging

from settings import settings
from workers.logs import ContextFilter, JsonFormatter, close_context, log_ids, open_context
from workers.metrics import REQUEST_SECONDS, REQUESTS, scrape

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # a path no route serves: one label value, whatever was asked
REQUEST_ID_HEADER = "X-Request-ID"
# Anything else a caller sends as its request id is replaced: a log line must not carry
# a client's newlines, quotes or kilobytes.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(sent: str | None) -> str:
    """The caller's request id when it is valid, else a new one."""
    if sent is not None and VALID_REQUEST_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def _start_request() -> None:
    g.started = time.perf_counter()
    job_id = (request.view_args or {}).get("job_id")
    g.log_context = open_context(
        request_id=request_id_of(request.headers.get(REQUEST_ID_HEADER)),
        job_id=job_id if isinstance(job_id, int) else None,
    )


def _observe(response: Response) -> Response:
    started = g.get("started")
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        elapsed_s = time.perf_counter() - started
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(route, request.method).observe(elapsed_s)
        log.info(
            "%s %s %d in %.1f ms",
            request.method,
            route,
            response.status_code,
            elapsed_s * 1000,
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed_s * 1000, 1),
            },
        )
    request_id = log_ids().get("request_id")
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = str(request_id)
    return response


def _end_request(_: BaseException | None) -> None:
    token = g.pop("log_context", None)
    if token is not None:
        close_context(token)


def metrics() -> Response:
    status, headers, body = scrape(request.headers.get("Authorization"))
    return Response(body, status, headers)


def register_monitoring(app: Flask) -> None:
    app.before_request(_start_request)
    app.after_request(_observe)
    app.teardown_request(_end_request)
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


_CONTEXT_IDS = ContextFilter()


class GunicornLogger(glogging.Logger):
    """gunicorn's logger (`gunicorn --logger-class api.monitoring.GunicornLogger`): under
    LOG_FORMAT=json its lines (the arbiter's and the workers': start, stop, timeouts) are
    JSON like every other; as text they are gunicorn's own. gunicorn builds its handlers
    again on every reload, and this runs after each time."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if settings.log_format != "json":
            return
        for gunicorn_log in (self.error_log, self.access_log):
            for handler in gunicorn_log.handlers:
                handler.setFormatter(JsonFormatter())
                handler.addFilter(_CONTEXT_IDS)
