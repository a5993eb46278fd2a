"""APNs over HTTP/2 with token auth, callable from synchronous Celery tasks.

`pushes`: what to send; `results`: what an answer means (delivered, retry, token dead, drop);
`provider_token`: the ES256 JWT shared by every worker process through Redis;
`aioapns_pool`: aioapns's connection pool with the contract's headers and its bugs fixed;
`push_connection`: the client side of HTTP/2 for a stream of pushes (in place of h2's);
`push_headers`: HPACK for pushes (per-push headers left out of the table, answers' statuses);
`sender`: the process's loop thread and the fork-safe singleton behind `send_pushes`."""

from workers.apns.pushes import Push
from workers.apns.results import Outcome, PushResult, classify
from workers.apns.sender import MAX_IN_FLIGHT, apns_enabled, send_pushes, shutdown

__all__ = [
    "MAX_IN_FLIGHT",
    "Outcome",
    "Push",
    "PushResult",
    "apns_enabled",
    "classify",
    "send_pushes",
    "shutdown",
]
