"""What operators scrape from the web process: every request counted and timed by route
template, and `/metrics` (outside /api/v1, behind the operators' password)."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from workers.metrics import REQUEST_SECONDS, REQUESTS, exposition, scrape_allowed

UNMATCHED = "unmatched"  # a path no route serves: one label value, whatever was asked


def _start_timer() -> None:
    g.started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.get("started")
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
    return response


def metrics() -> Response:
    if not scrape_allowed(request.headers.get("Authorization")):
        return Response(
            "operators only\n",
            401,
            {"WWW-Authenticate": 'Basic realm="dispatch metrics"'},
            mimetype="text/plain",
        )
    body, content_type = exposition()
    return Response(body, 200, content_type=content_type)


def register_monitoring(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_observe)
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
