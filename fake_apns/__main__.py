"""`python -m fake_apns`: run the fake APNs for local development and print how to use it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fake_apns.certs import make_credentials
from fake_apns.server import FakeAPNs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2197)
    parser.add_argument("--dir", type=Path, default=Path("var/fake-apns"))
    args = parser.parse_args()
    credentials = make_credentials(args.dir.resolve())
    server = FakeAPNs(credentials, port=args.port).start()
    print(f"Fake APNs on https://127.0.0.1:{server.port} (HTTP/2). Point Dispatch at it with:")
    for name, value in {
        "APNS_HOST": "127.0.0.1",
        "APNS_PORT": server.port,
        "APNS_CA_FILE": credentials.ca_file,
        "APNS_KEY_PATH": credentials.signing_key_file,
        "APNS_KEY_ID": credentials.key_id,
        "APNS_TEAM_ID": credentials.team_id,
        "APNS_TOPIC": credentials.topic,
    }.items():
        print(f"  export {name}={value}")
    seen = 0
    try:
        while True:
            time.sleep(0.5)
            pushes = server.received()
            for push in pushes[seen:]:
                print(f"{push.status} {push.token[:12]}… {push.payload}", flush=True)
            seen = len(pushes)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
