"""How cost grows: the benchmarks again at rising scale, each point its own
`python -m bench.<name>` with a scale knob set, run as bench.run runs a benchmark (this run's
environment, each point under a Redis prefix of its own so that no point sees another's
drivers or sockets). The figures go out as one JSON line (`make bench BENCH=growth` stores
them under results.json's "growth"), and one PNG per curve into docs/plots/.

Curves (the knob each sets; the benchmark's docstring says what it measures):
- dispatch_drivers: dispatch latency at 1,000, 5,000 and 10,000 connected drivers, 20 jobs/s
  (BENCH_DISPATCH_DRIVERS);
- dispatch_rate: at 20, 50 and 100 jobs/s, 1,000 drivers (BENCH_DISPATCH_RATE); the point
  1,000 drivers at 20 jobs/s is run once and serves both curves;
- nearby: the nearby query with 10,000, 100,000 and 1,000,000 drivers in the index
  (BENCH_NEARBY_DRIVERS);
- gateway: one gateway's memory and its fan-out to 1,000 rooms while it holds 1,000, 10,000
  and 19,500 sockets (BENCH_GATEWAY_CONNECTIONS; not 20,000: a process here may hold 20,000
  open files, a hard limit that not even root may raise, and the gateway needs 100 besides);
- location: the reports a second one gateway takes (bench.location's `reports_per_s`);
- fanin: every gateway's CPU against the deployment's total event rate (bench.fanin).

Shorter than `make bench`, to finish in about 15 minutes on 2 CPUs: dispatch posts jobs for
15 s a point (not 30), the nearby query is timed 1,000 / 300 / 60 times at its three sizes
(a query at a million drivers finds some 8,000), and location measures its steady phase for
10 s (not 30)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.run import run_one

PLOTS = Path(__file__).resolve().parent.parent / "docs" / "plots"
DISPATCH_SECONDS = 15

Knobs = dict[str, int]


@dataclass(frozen=True)
class Curve:
    name: str  # the key in the JSON and the PNG's name
    benchmark: str  # bench.<benchmark>
    x: str  # the knob along the curve, by the name the JSON gives it
    knob: str
    points: list[Knobs]  # every knob of each point


CURVES = [
    Curve(
        "dispatch_drivers",
        "dispatch",
        "drivers",
        "BENCH_DISPATCH_DRIVERS",
        [
            {
                "BENCH_DISPATCH_DRIVERS": drivers,
                "BENCH_DISPATCH_RATE": 20,
                "BENCH_DISPATCH_SECONDS": DISPATCH_SECONDS,
            }
            for drivers in (1_000, 5_000, 10_000)
        ],
    ),
    Curve(
        "dispatch_rate",
        "dispatch",
        "jobs_per_s",
        "BENCH_DISPATCH_RATE",
        [
            {
                "BENCH_DISPATCH_DRIVERS": 1_000,
                "BENCH_DISPATCH_RATE": rate,
                "BENCH_DISPATCH_SECONDS": DISPATCH_SECONDS,
            }
            for rate in (20, 50, 100)
        ],
    ),
    Curve(
        "gateway",
        "gateway",
        "sockets",
        "BENCH_GATEWAY_CONNECTIONS",
        [{"BENCH_GATEWAY_CONNECTIONS": sockets} for sockets in (1_000, 10_000, 19_500)],
    ),
    Curve("location", "location", "", "", [{"BENCH_LOCATION_MEASURE_S": 10}]),
    Curve("fanin", "fanin", "", "", [{}]),
    Curve(
        "nearby",
        "nearby",
        "drivers_indexed",
        "BENCH_NEARBY_DRIVERS",
        [
            {"BENCH_NEARBY_DRIVERS": drivers, "BENCH_NEARBY_QUERIES": queries}
            for drivers, queries in ((10_000, 1_000), (100_000, 300), (1_000_000, 60))
        ],
    ),
]


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


Run = tuple[str, tuple[tuple[str, int], ...]]  # a benchmark and its knobs, sorted


def _run_of(curve: Curve, knobs: Knobs) -> Run:
    return curve.benchmark, tuple(sorted(knobs.items()))


def _run_points() -> dict[str, Any]:
    """Every curve's points, each benchmark run once per distinct set of knobs."""
    runs: dict[Run, dict[str, Any]] = {}
    for curve in CURVES:
        for point in curve.points:
            runs.setdefault(_run_of(curve, point), {})
    prefix = os.environ.get("REDIS_PREFIX", "dispatch")
    for number, (benchmark, knobs) in enumerate(list(runs), start=1):
        shown = "".join(f" {k}={v}" for k, v in knobs)
        env = {
            **os.environ,
            **{k: str(v) for k, v in knobs},
            "REDIS_PREFIX": f"{prefix}:growth-{number}",
        }
        runs[(benchmark, knobs)] = run_one(benchmark, f"{number}/{len(runs)}{shown}", env)
    figures: dict[str, Any] = {}
    for curve in CURVES:
        results = [runs[_run_of(curve, point)] for point in curve.points]
        if curve.knob:
            figures[curve.name] = [
                {curve.x: point[curve.knob], **result}
                for point, result in zip(curve.points, results, strict=True)
            ]
        else:
            [figures[curve.name]] = results
    return figures


# --- the plots ---------------------------------------------------------------------------------


def _measured(points: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    return [p for p in points if all(p.get(k) is not None for k in keys)]


def _latency_plot(
    ax: Any, points: list[dict[str, Any]], x: str, floor: str, floor_label: str
) -> None:
    shown = _measured(points, "p50_ms", "p99_ms")
    xs = [p[x] for p in shown]
    ax.plot(xs, [p["p50_ms"] for p in shown], "o-", label="p50")
    ax.plot(xs, [p["p99_ms"] for p in shown], "s-", label="p99")
    floors = _measured(shown, floor)
    ax.plot([p[x] for p in floors], [p[floor] for p in floors], "x--", label=floor_label)
    ax.set_xticks(xs)
    ax.margins(x=0.15)
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def _label(ax: Any, text: str, xy: tuple[float, float], offset: tuple[int, int]) -> None:
    """A small note beside a plotted point."""
    ax.annotate(text, xy, textcoords="offset points", xytext=offset, fontsize=8)


def _lost(ax: Any, points: list[dict[str, Any]], x: str) -> None:
    """Each point's offers that did not arrive while it was measured, beside its p99."""
    for p in _measured(points, "p99_ms", "lost", "offers"):
        _label(
            ax, f"{p['lost']:,} of {p['lost'] + p['offers']:,} lost", (p[x], p["p99_ms"]), (5, 5)
        )


def _plot_dispatch_drivers(ax: Any, points: list[dict[str, Any]]) -> None:
    _latency_plot(ax, points, "drivers", "floor_p50_ms", "floor p50")
    _lost(ax, points, "drivers")
    ax.set_xlabel("driver sockets connected (one gateway)")
    ax.set_title("Dispatch: POST /jobs to each offered driver's job:new, 20 jobs/s")


def _plot_dispatch_rate(ax: Any, points: list[dict[str, Any]]) -> None:
    _latency_plot(ax, points, "jobs_per_s", "floor_p50_ms", "floor p50")
    _lost(ax, points, "jobs_per_s")
    ax.set_xlabel("jobs posted per second (20 offers each)")
    ax.set_title("Dispatch: POST /jobs to each offered driver's job:new, 1,000 drivers")


def _plot_nearby(ax: Any, points: list[dict[str, Any]]) -> None:
    _latency_plot(ax, points, "drivers_indexed", "floor_p50_ms", "bare GEOSEARCH p50")
    ax.set_xscale("log")
    ax.set_xlabel("drivers in the geo index (same 6° × 6° box)")
    ax.set_title("Nearby query (eligible_drivers)")
    for p in _measured(points, "p50_ms", "drivers_per_query"):
        _label(
            ax, f"{p['drivers_per_query']:,} found", (p["drivers_indexed"], p["p50_ms"]), (5, -12)
        )


def _plot_gateway(axes: Any, points: list[dict[str, Any]]) -> None:
    memory, fanout = axes
    shown = _measured(points, "rss_mb", "fanout_1000_ms")
    xs = [p["sockets"] for p in shown]
    memory.plot(xs, [p["rss_mb"] for p in shown], "o-", label="RSS")
    memory.set_xlabel("sockets held by one gateway")
    memory.set_ylabel("gateway RSS (MB)")
    memory.set_title("Gateway memory")
    memory.set_ylim(bottom=0)
    memory.grid(True, alpha=0.3)
    for p in shown:
        _label(memory, f"{p['kb_per_connection']} KB/socket", (p["sockets"], p["rss_mb"]), (5, -12))
    fanout.plot(xs, [p["fanout_1000_ms"] for p in shown], "o-", label="median of 7")
    fanout.plot(xs, [p["fanout_1000_max_ms"] for p in shown], "s-", label="worst of 7")
    fanout.set_xlabel("sockets held by one gateway")
    fanout.set_ylabel("emit to the last of 1,000 rooms (ms)")
    fanout.set_title("Fan-out of one event to 1,000 rooms")
    fanout.set_ylim(bottom=0)
    fanout.grid(True, alpha=0.3)
    fanout.legend()


def _plot_fanin(axes: Any, figures: dict[str, Any]) -> None:
    cpu, latency = axes
    phases = figures["phases"]
    xs = [p["total_per_s"] for p in phases]
    gateways = figures["gateways"]
    for g in range(gateways):
        label = "bystander (no event its own)" if g == gateways - 1 else f"busy gateway {g + 1}"
        style = "s--" if g == gateways - 1 else "o-"
        cpu.plot(xs, [p["gateway_cpu_s_per_s"][g] for p in phases], style, label=label)
    cpu.plot(xs, [p["machine_idle"] for p in phases], ":", color="grey", label="machine idle")
    cpu.set_xlabel("total events published per second (all gateways)")
    cpu.set_ylabel("CPU seconds per second")
    cpu.set_ylim(bottom=0)
    cpu.set_title(
        f"{gateways} gateways on one Redis channel: {figures['foreign_us_per_event']} µs"
        f" per foreign event, {figures['own_us_per_event']} µs per own",
        fontsize=9,
    )
    cpu.grid(True, alpha=0.3)
    cpu.legend(fontsize=8)
    timed = _measured(phases, "p50_ms")
    latency.plot([p["total_per_s"] for p in timed], [p["p50_ms"] for p in timed], "o-", label="p50")
    latency.plot([p["total_per_s"] for p in timed], [p["p99_ms"] for p in timed], "s-", label="p99")
    latency.set_yscale("log")
    latency.set_xlabel("total events published per second (all gateways)")
    latency.set_ylabel("publish to the socket's receipt (ms)")
    latency.set_title("Delivery latency")
    latency.grid(True, which="both", alpha=0.3)
    latency.legend()


PLOTTERS: dict[str, tuple[int, Callable[[Any, Any], None]]] = {
    "dispatch_drivers": (1, _plot_dispatch_drivers),
    "dispatch_rate": (1, _plot_dispatch_rate),
    "nearby": (1, _plot_nearby),
    "gateway": (2, _plot_gateway),
    "fanin": (2, _plot_fanin),
}


def _plot(figures: dict[str, Any]) -> list[str]:
    """One PNG per curve measured, into docs/plots/; the paths written. Figures made
    without pyplot: no backend or window state to choose."""
    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (panels, draw) in PLOTTERS.items():
        data = figures.get(name)
        if not data or "error" in data:
            continue
        figure = Figure(figsize=(6.4 * panels, 4.8), layout="tight")
        draw(figure.subplots(1, panels), data)
        path = PLOTS / f"{name}.png"
        figure.savefig(path, dpi=100)  # a PNG: matplotlib's Agg renderer, no display
        written.append(str(path.relative_to(PLOTS.parent.parent)))
    return written


def _failures(figures: dict[str, Any]) -> list[str]:
    failed = []
    for name, data in figures.items():
        for point in data if isinstance(data, list) else [data]:
            if "error" in point:
                where = {k: v for k, v in point.items() if k not in ("error", "seconds")}
                failed.append(f"{name} {where}: {point['error']}")
    return failed


def main() -> None:
    figures = _run_points()
    failed = _failures(figures)
    figures["plots"] = _plot(figures)
    if failed:  # bench.run marks the benchmark failed, and keeps the points that were measured
        figures["error"] = "; ".join(failed)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
