"""The reference driver and customer apps (`/try/driver`, `/try/customer`), pages on the
public contract only, and the operators' console (`/console/`, on the ops API and the
operators' room): built from `web/` by esbuild into `web/dist/` (`make run` and
`make test` build it; npm is needed only there). They are served from the checkout, not
the installed package: a production install answers 404 here."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, Response, jsonify, request, send_from_directory

from settings import PROJECT_ROOT, settings

log = logging.getLogger(__name__)

WEB_BUILD = PROJECT_ROOT / "web" / "dist"

bp = Blueprint("pages", __name__, static_folder=WEB_BUILD, static_url_path="/try/assets")


def socket_url() -> str:
    """The gateway: this page's host at REALTIME_PORT, where `make run` (one machine) has it.
    The page connects there from its own origin, which the gateway takes only when
    ALLOWED_ORIGINS names it (bin/run-stack does, in development)."""
    host = urlsplit(request.host_url).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return f"{request.scheme}://{host}:{settings.realtime_port}"


def content_policy() -> str:
    """Everything from this origin, and sockets to the gateway: nothing from anywhere else."""
    gateway = urlsplit(socket_url())
    websocket = "wss" if gateway.scheme == "https" else "ws"
    return (
        "default-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {gateway.scheme}://{gateway.netloc} {websocket}://{gateway.netloc}; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    )


@bp.get("/try/<any(customer, driver):name>")
def page(name: str) -> Response:
    return _built_page(name)


@bp.get("/console/")
def console() -> Response:
    return _built_page("console")


def _built_page(name: str) -> Response:
    if not (WEB_BUILD / f"{name}.html").is_file():
        log.warning("%s is not built: `make run` or `make test` builds web/ (npm)", name)
    answer = send_from_directory(WEB_BUILD, f"{name}.html")
    answer.headers["Content-Security-Policy"] = content_policy()
    return answer


@bp.get("/try/config.json")
def config() -> Response:
    """What the pages cannot know from their own address: where the gateway listens."""
    return jsonify({"socket_url": socket_url()})
