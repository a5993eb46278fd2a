"""`python -m fake_apns`: run the fake APNs for local development and print how to use it.

The credentials in `--dir` are kept across runs, so a stack configured once keeps working.
Every push received is printed; Ctrl-C or SIGTERM stops the server."""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from pathlib import Path

from fake_apns.certs import make_credentials
from fake_apns.server import FakeAPNs


def _print_pushes(server: FakeAPNs, stopping: threading.Event) -> None:
    seen = 0
    while not stopping.wait(0.5):
        pushes = server.received()
        for push in pushes[seen:]:
            print(
                f"{push.status} {push.reason or ''} {push.token[:12]}… {push.payload}", flush=True
            )
        seen = len(pushes)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fake_apns", description=__doc__)
    parser.add_argument("--port", type=int, default=2197)
    parser.add_argument("--dir", type=Path, default=Path("var/fake-apns"))
    args = parser.parse_args()
    stopping = threading.Event()
    # Before the settings are printed: whoever read them may stop the server at once.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    credentials = make_credentials(args.dir.resolve(), reuse=True)
    server = FakeAPNs(credentials, port=args.port).start()
    print(f"Fake APNs on https://127.0.0.1:{server.port} (HTTP/2). Point Dispatch at it with:")
    for name, value in credentials.environment(server.port).items():
        print(f"export {name}={shlex.quote(value)}")
    print(flush=True)
    try:
        _print_pushes(server, stopping)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
