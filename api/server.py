"""The web process's gunicorn worker: gunicorn's threaded worker (gthread), except that the
answers gunicorn writes itself carry the contract's JSON error body, not its HTML page.

Gunicorn answers on its own, before the app sees the request, when it cannot parse one (a
malformed request line, a control character, a bad chunk: 400), when the request line or
the headers are over its limits (414, 431), and when the app fails past Flask's error
handlers (500). It chooses the status, logs, and writes the access log line in
`Worker.handle_error`; this worker keeps all of that and only swaps the body.

Run with `gunicorn --worker-class api.server.JsonErrorWorker …` (Procfile, tests)."""

from __future__ import annotations

import json
import socket
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from models.errors import error_body

# The status gunicorn chose -> the contract's code and message for it.
SERVER_ERRORS = {
    400: ("bad_request", "The request is not valid HTTP."),
    403: ("forbidden", "This request is not allowed."),
    414: ("uri_too_long", "The request line (method and path) is too long."),
    417: ("expectation_failed", "The request's Expect header cannot be met."),
    431: ("headers_too_large", "The request's headers are too large or too many."),
    500: ("internal_error", "Something went wrong on our side."),
    501: ("not_implemented", "The request's transfer coding is not supported."),
}


class _StatusLine:
    """Stands in for the client socket while gunicorn writes its HTML error page, keeping
    only the status it chose (`util.write_error` writes through `write_nonblock`)."""

    def __init__(self) -> None:
        self.written = bytearray()

    def gettimeout(self) -> float:
        return 0.0  # non-blocking already: write_nonblock leaves the mode alone

    def sendall(self, data: bytes) -> None:
        self.written += data

    @property
    def status(self) -> int:
        """The status of the page written, or 500 when nothing was."""
        parts = bytes(self.written).split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 500


def json_error_answer(status: int) -> bytes:
    """The whole HTTP answer for an error gunicorn raised: the contract's JSON body."""
    code, message = SERVER_ERRORS.get(status) or SERVER_ERRORS[400 if status < 500 else 500]
    body = json.dumps(error_body(code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


class JsonErrorWorker(ThreadWorker):
    """gthread, answering gunicorn's own errors in the contract's error shape."""

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: Exception) -> None:
        page = _StatusLine()
        super().handle_error(req, page, addr, exc)
        try:
            util.write_nonblock(client, json_error_answer(page.status))
        except OSError:  # the client is gone: as in gunicorn, nothing more to do
            self.log.debug("Failed to send error message.")
