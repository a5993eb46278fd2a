"""The API as the accept and booking benchmarks serve it: the real app (`api.create_app`),
its hooks and its gunicorn configuration, with one route of their own, `NOOP_PATH`, that
does only what every request of a signed-in caller must: the bearer check the API makes
(`api.bearer.current_user`: the token's signature, then the user's row) and, when a body is
sent, reading it as JSON. A plain Flask view, without the API's validation layer: what a
Flask app under the same server cannot beat, the floor of the steps and of booking.

Served by `tests.processes.start_web(log_dir, app=FLOOR_APP)`; `web_cpu_s` is the CPU time
the web process (gunicorn's arbiter and its workers) has used, to compare requests by what
they cost the server rather than by wall time on a shared machine."""

from __future__ import annotations

import psutil
from flask import Flask, Response, jsonify, request

from api import create_app as create_api
from api.bearer import current_user
from models.db import session_scope

FLOOR_APP = "bench.floor_app:create_app()"
NOOP_PATH = "/bench/noop"


def noop() -> Response:
    with session_scope() as session:
        current_user(session)
    request.get_json()
    return jsonify({"ok": True})


def create_app() -> Flask:
    app = create_api()
    app.add_url_rule(NOOP_PATH, "bench_noop", noop, methods=["POST"])
    return app


def web_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the web process `pid` and its children (its workers)."""
    tree = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [tree, *tree.children(recursive=True)])
