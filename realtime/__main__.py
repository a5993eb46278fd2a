"""`python -m realtime`: serve the gateway on REALTIME_PORT under uvicorn."""

import gc

import uvicorn

from settings import settings
from workers.logs import configure_logging


def main() -> None:
    configure_logging()
    # With 10,000 sockets the heap holds ~1.5 M long-lived objects; a full collection took
    # over a second every few seconds and stalled fan-outs. Freeze what start-up made and
    # collect the oldest generation less often.
    gc.freeze()
    gc.set_threshold(700, 10, 1000)
    uvicorn.run(
        "realtime.gateway:app",
        host=settings.bind_host,
        port=settings.realtime_port,
        # Measured against uvicorn's websockets implementations (websockets 47.7 KB a
        # connection, websockets-sansio 40.8), uvloop with httptools (39.5), hypercorn (42.1)
        # and granian (167): wsproto on asyncio holds the least (39.0, before the gateway's
        # own savings), and none delivered a fan-out faster. Named, so that an installed
        # uvloop or httptools does not change the server unseen.
        ws="wsproto",
        loop="asyncio",
        http="h11",
        # permessage-deflate keeps a zlib state of ~256 KiB per connection; the events are
        # small JSON, so compression saves little and costs most of the gateway's memory.
        ws_per_message_deflate=False,
        ws_ping_interval=None,  # Engine.IO pings every client already
        log_config=None,  # uvicorn's lines go through the root logger, in LOG_FORMAT
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
