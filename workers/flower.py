"""`python -m workers.flower`: Flower for operators, with its password asked on every path.

Flower 2 checks basic auth only in handlers decorated `@tornado.web.authenticated`; its
`/metrics` and `/healthcheck` handlers are not, so they answer anyone. Before Flower builds
its app from `flower.urls.handlers`, this swaps those two for subclasses that are. The
password reaches Flower through `FLOWER_BASIC_AUTH` in its environment (Flower reads its
`FLOWER_*` variables itself), never on its command line, which `ps` shows to every user of
the machine. Without a password Flower would let anyone see and control the workers, so it
refuses to start.
"""

from __future__ import annotations

import sys

from celery.__main__ import main as celery_main
from flower import urls
from flower.views.monitor import Healthcheck, Metrics
from tornado import web

from settings import settings
from workers.logs import configure_logging


class AuthenticatedMetrics(Metrics):
    @web.authenticated
    async def get(self) -> None:
        await super().get()


class AuthenticatedHealthcheck(Healthcheck):
    @web.authenticated
    async def get(self) -> None:
        await super().get()


def require_auth_on_every_path() -> None:
    """Serve /metrics and /healthcheck through the authenticated handlers (in place: Flower's
    app module holds the same list)."""
    protected = {Metrics: AuthenticatedMetrics, Healthcheck: AuthenticatedHealthcheck}
    swapped = 0
    for index, handler in enumerate(urls.handlers):
        if isinstance(handler, tuple) and handler[1] in protected:
            urls.handlers[index] = (handler[0], protected[handler[1]], *handler[2:])
            swapped += 1
    if swapped != len(protected):  # a Flower release moved them: fail rather than expose
        raise RuntimeError(f"found {swapped} of Flower's unauthenticated handlers, not 2")


def flower_argv(extra: list[str]) -> list[str]:
    """The `celery flower` command line: the address and port from settings, no password."""
    return [
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        f"--address={settings.bind_host}",
        f"--port={settings.flower_port}",
        *extra,
    ]


def main() -> None:
    user, _, password = settings.flower_basic_auth.partition(":")
    if not (user and password):
        sys.exit(
            "FLOWER_BASIC_AUTH must be set to user:password: Flower shows every task and "
            "controls every worker, so it does not start without a password."
        )
    require_auth_on_every_path()
    configure_logging()  # before Tornado's options would install its own handler
    sys.argv = flower_argv(sys.argv[1:])
    celery_main()


if __name__ == "__main__":
    main()
