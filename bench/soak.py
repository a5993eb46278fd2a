"""`make soak`: the whole system under a steady load for SOAK_SECONDS (600 by default), checked
for anything lost or leaking.

The production process set (gunicorn web, the gateway, the dispatch worker, the push worker
pushing over HTTP/2 to a fake APNs, the relay), 1,000 driver apps connected and reporting
their positions, customers booking 20 jobs a second, drivers accepting over REST and taking
each job to completed, customers following their jobs (bench.soak_clients). Checked
(bench.soak_check): no lost offers, no lost events, no lost pushes, every server process's
RSS growth from the end of the warm-up to the end of the load under 10 %; reported beside
them: booking-to-offer p50/p99 per minute. A table on stdout, bench/soak.json, and a
non-zero exit if any check fails. Not part of `make test`.

This process makes the throwaway database and Redis prefix (as bench.run does) and runs
bench.soak_run in a child process with them in its environment (settings are read at
import). SOAK_SECONDS shortens the load (the warm-up is then a quarter of it, at most
120 s); SOAK_RATE sets the jobs booked a second (20), to tell a harness problem from an
overloaded machine; SOAK_KEEP=1 keeps the log directory (process logs, every record) after
a pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.run import stop_tree, throwaway_stores

HERE = Path(__file__).resolve().parent


def main() -> int:
    with throwaway_stores("soak") as env:
        child = subprocess.Popen([sys.executable, "-m", "bench.soak_run"], cwd=HERE.parent, env=env)
        try:
            return child.wait()
        except KeyboardInterrupt:
            # The servers run in sessions of their own: Ctrl-C reaches none of them.
            stop_tree(child)
            raise


if __name__ == "__main__":
    sys.exit(main())
