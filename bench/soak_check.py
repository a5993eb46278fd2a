"""The soak's checks, on what the clients saw, what the fake APNs received and what the
database says happened: plain data in (`Observed`, JSON-able so a run's records can be
checked again), counts out.

Times are `time.time()` on one machine: the clients' on sending and receiving, the
server's (`job_events.at`, `announced_at`) as it wrote them.

Lost offers. A job's eligibility is read between its booking (the client's send) and its
round's `offered` event (its `at` is taken after the read), or, if nobody was offered it,
the `created` event's announcement (a job cancelled before that is offered to nobody, and
counted as `ended_before_dispatch`). A driver of the job's cluster (the only drivers within
the radius) is *certainly dispatchable* for it if, over that whole window, it held no job
(no won job's accept sent … last step answered overlaps it) and had a fresh position (a
report acknowledged before the window whose send is within LOCATION_STALE_S of its end,
less a margin). Expected `job:new`: those drivers, and every driver the server recorded an
offer for. Lost: expected and never received. Also counted: a driver offered a job twice,
and an offer to a driver *certainly busy* over the window (accepted before it, its
completion sent after it).

Lost events. For each job, the customer gets one `job:status` per change of status
(`accepted`, `arrived`, `started`, `completed`, `cancelled`, …: its status events in the
database), and so does the driver who won it, from its accept on; the last one each got
must carry the job's final status. Every driver offered a job (by the server's record or
its own `job:new`) gets `job:accepted` once it is accepted, `job:removed` with the reason
if it is cancelled or expires first.

Lost pushes. The customer's pushes (`job:accepted`, `job:arrived`, `job:completed`,
`job:expired`) for each such event, the driver's `job:cancelled` for a cancel that let a
driver go, and each offered driver's `job:new` for a job still pending
OFFER_PUSH_GRACE_S after its offer (an offer push is by design not sent once the job is no
longer pending, so for a job accepted at once it may rightly never go)."""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.data import percentile

STATUS_EVENTS = {"accepted", "arrived", "started", "completed", "released", "cancelled", "expired"}
FINAL_EVENTS = {"accepted", "cancelled", "expired"}  # a job pending until the first of them
STATUS_OF_EVENT = {
    "accepted": "accepted",
    "arrived": "arrived",
    "started": "in_progress",
    "completed": "completed",
    "released": "pending",
    "cancelled": "cancelled",
    "expired": "expired",
}
CUSTOMER_PUSHES = {
    "accepted": "job:accepted",
    "arrived": "job:arrived",
    "completed": "job:completed",
    "released": "job:released",
    "expired": "job:expired",
}
OFFER_PUSH_GRACE_S = 5.0
STALE_MARGIN_S = 2.0


@dataclass
class Observed:
    """Everything a run left: the client processes' records merged (see bench.soak_clients
    for their rows), the pushes the fake APNs answered, and the database's rows."""

    drivers: dict[str, list[Any]]
    customers: dict[str, list[Any]]
    pushes: list[Any]  # [token, type, job id, status, at]
    jobs: list[Any]  # [id, customer id, status, driver id]
    job_events: list[Any]  # [job id, type, at, announced at | None, data], in id order
    offers: list[Any]  # [job id, driver id, round, closed at | None]
    cluster_of: dict[int, int]  # driver id -> cluster
    user_of_token: dict[str, int]
    location_stale_s: float
    load_start: float
    drained_at: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Observed:
        raw = dict(raw)
        raw["cluster_of"] = {int(k): v for k, v in raw["cluster_of"].items()}
        return cls(**raw)


@dataclass
class _Job:
    id: int
    customer: int
    status: str
    cluster: int | None = None
    booked_at: float | None = None
    events: list[tuple[str, float, float | None, dict[str, Any]]] = field(default_factory=list)

    def first(self, kinds: Iterable[str]) -> tuple[str, float, float | None, dict[str, Any]] | None:
        return next((e for e in self.events if e[0] in kinds), None)

    @property
    def winner(self) -> int | None:
        accepted = self.first({"accepted"})
        return accepted[3]["driver_id"] if accepted is not None else None


class _Drivers:
    """Each driver's won jobs and acknowledged reports, asked about a window of time."""

    def __init__(self, obs: Observed) -> None:
        cancel_sent = {
            job: sent for _, job, sent, _, status in obs.customers["cancels"] if status == 200
        }
        self.maybe: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.surely: dict[int, list[tuple[float, float]]] = defaultdict(list)
        ended = set()
        for driver, job, accept_sent, accepted, step, sent, answered, status in obs.drivers[
            "trips"
        ]:
            ended.add((driver, job))
            self.maybe[driver].append((accept_sent, answered))
            if status == 200 and step == "complete":
                self.surely[driver].append((accepted, sent))
            elif status == 409 and job in cancel_sent:
                self.surely[driver].append((accepted, min(sent, cancel_sent[job])))
        for driver, job, sent, _, status in obs.drivers["attempts"]:
            if status == 200 and (driver, job) not in ended:  # still on it when the run ended
                self.maybe[driver].append((sent, float("inf")))
        for intervals in (*self.maybe.values(), *self.surely.values()):
            intervals.sort()  # a driver holds one job at a time: they never overlap
        reports: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for driver, sent, acked in obs.drivers["reports"]:
            reports[driver].append((acked, sent))
        self.reports = {d: sorted(r) for d, r in reports.items()}
        self.fresh_for = obs.location_stale_s - STALE_MARGIN_S

    def free(self, driver: int, start: float, end: float) -> bool:
        held = _last_from(self.maybe[driver], end)
        return held is None or held[1] < start

    def busy(self, driver: int, start: float, end: float) -> bool:
        held = _last_from(self.surely[driver], start)
        return held is not None and held[1] >= end

    def fresh(self, driver: int, start: float, end: float) -> bool:
        reports = self.reports.get(driver, [])
        last = bisect.bisect_right(reports, (start, float("inf"))) - 1
        return last >= 0 and reports[last][1] >= end - self.fresh_for


def _last_from(intervals: list[tuple[float, float]], at: float) -> tuple[float, float] | None:
    """The last of the sorted, disjoint intervals that starts at or before `at`."""
    i = bisect.bisect_right(intervals, (at, float("inf"))) - 1
    return intervals[i] if i >= 0 else None


def _jobs(obs: Observed) -> dict[int, _Job]:
    jobs = {row[0]: _Job(row[0], row[1], row[2]) for row in obs.jobs}
    for job_id, _, cluster, sent, _ in obs.customers["bookings"]:
        jobs[job_id].cluster, jobs[job_id].booked_at = cluster, sent
    for job_id, kind, at, announced_at, data in obs.job_events:
        jobs[job_id].events.append((kind, at, announced_at, data))
    return jobs


def _received(rows: Sequence[Any], event: str) -> dict[int, dict[int, list[Any]]]:
    """job -> user -> [(at, detail)] of `event`, in arrival order."""
    got: dict[int, dict[int, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for kind, user, job, detail, at in rows:
        if kind == event:
            got[job][user].append((at, detail))
    for by_user in got.values():
        for arrivals in by_user.values():
            arrivals.sort()
    return got


def _round_one(obs: Observed) -> dict[int, set[int]]:
    offered: dict[int, set[int]] = defaultdict(set)
    for job, driver, round_, _ in obs.offers:
        if round_ == 1:
            offered[job].add(driver)
    return offered


def check_offers(obs: Observed) -> dict[str, Any]:
    jobs, drivers = _jobs(obs), _Drivers(obs)
    in_cluster: dict[int, list[int]] = defaultdict(list)
    for driver, cluster in obs.cluster_of.items():
        in_cluster[cluster].append(driver)
    offered, got = _round_one(obs), _received(obs.drivers["events"], "job:new")
    counts: Counter[str] = Counter()
    latencies: list[tuple[float, float]] = []  # (booked, seconds to a job:new)
    for job in jobs.values():
        if job.booked_at is None or job.cluster is None:
            counts["unbooked"] += 1  # in the database, but no client saw its POST answered
            continue
        created, offer, ending = (
            job.first({"created"}),
            job.first({"offered"}),
            job.first(FINAL_EVENTS),
        )
        if (
            offer is None
            and ending is not None
            and (created is None or created[2] is None or ending[1] < created[2])
        ):
            counts["ended_before_dispatch"] += 1  # cancelled before its offers were made
            continue
        if created is None or created[2] is None:
            counts["never_dispatched"] += 1
            continue
        start, end = job.booked_at, offer[1] if offer is not None else created[2]
        dispatchable = {
            d
            for d in in_cluster[job.cluster]
            if drivers.free(d, start, end) and drivers.fresh(d, start, end)
        }
        arrivals = got.get(job.id, {})
        expected = offered[job.id] | dispatchable
        counts["expected"] += len(expected)
        counts["certainly_dispatchable"] += len(dispatchable)
        counts["not_offered"] += len(dispatchable - offered[job.id])
        counts["undelivered"] += len(offered[job.id] - arrivals.keys())
        counts["lost"] += len(expected - arrivals.keys())
        counts["duplicates"] += sum(len(a) - 1 for a in arrivals.values())
        counts["to_busy"] += sum(1 for d in arrivals if drivers.busy(d, start, end))
        counts["received"] += len(arrivals)
        latencies += [(job.booked_at, a[0][0] - job.booked_at) for a in arrivals.values()]
    return {"counts": counts, "latencies": latencies}


def check_events(obs: Observed) -> Counter[str]:
    jobs = _jobs(obs)
    to_customers = _received(obs.customers["events"], "job:status")
    to_drivers = _received(obs.drivers["events"], "job:status")
    accepted_at, removed = (
        _received(obs.drivers["events"], "job:accepted"),
        _received(obs.drivers["events"], "job:removed"),
    )
    offered, new = _round_one(obs), _received(obs.drivers["events"], "job:new")
    counts: Counter[str] = Counter()
    for job in jobs.values():
        steps = [e for e in job.events if e[0] in STATUS_EVENTS]
        _count_status(counts, "customer", steps, to_customers[job.id][job.customer], job.status)
        if job.winner is not None:
            _count_status(counts, "driver", steps, to_drivers[job.id][job.winner], job.status)
        strangers = set(to_drivers[job.id]) - {job.winner}
        counts["status_misrouted"] += sum(len(to_drivers[job.id][d]) for d in strangers)
        ending = job.first(FINAL_EVENTS)
        if ending is None:
            continue
        for driver in offered[job.id] | set(new[job.id]):
            counts["feed_expected"] += 1
            if ending[0] == "accepted":
                counts["feed_lost"] += not accepted_at[job.id][driver]
            else:
                reasons = [reason for _, reason in removed[job.id][driver]]
                counts["feed_lost"] += ending[0] not in reasons
    counts["lost"] = counts["customer_status_lost"] + counts["driver_status_lost"]
    counts["lost"] += counts["customer_status_stale"] + counts["driver_status_stale"]
    counts["lost"] += counts["feed_lost"]
    return counts


def _count_status(
    counts: Counter[str], who: str, steps: Sequence[Any], got: Sequence[Any], final: str
) -> None:
    counts[f"{who}_status_expected"] += len(steps)
    counts[f"{who}_status_lost"] += max(0, len(steps) - len(got))
    counts[f"{who}_status_duplicates"] += max(0, len(got) - len(steps))
    if got and len(got) >= len(steps) and got[-1][1] != final:
        counts[f"{who}_status_stale"] += 1  # all arrived, but the last is not the final state


def check_pushes(obs: Observed) -> Counter[str]:
    jobs = _jobs(obs)
    received = {
        (obs.user_of_token.get(token), kind, job)
        for token, kind, job, status, _ in obs.pushes
        if status == 200
    }
    offered = _round_one(obs)
    expected: set[tuple[int | None, str, int]] = set()
    offer_pushes = 0
    for job in jobs.values():
        for kind, _, _, data in job.events:
            if kind in CUSTOMER_PUSHES:
                expected.add((job.customer, CUSTOMER_PUSHES[kind], job.id))
            elif kind == "cancelled" and data.get("driver_id") is not None:
                expected.add((data["driver_id"], "job:cancelled", job.id))
        offer, ending = job.first({"offered"}), job.first(FINAL_EVENTS)
        if offer is not None and (ending is None or ending[1] > offer[1] + OFFER_PUSH_GRACE_S):
            expected |= {(d, "job:new", job.id) for d in offered[job.id]}
            offer_pushes += len(offered[job.id])
    missing = expected - received
    return Counter(
        expected=len(expected),
        offer_pushes_expected=offer_pushes,
        received=len(obs.pushes),
        not_200=sum(1 for row in obs.pushes if row[3] != 200),
        lost=len(missing),
        lost_offer_pushes=sum(1 for m in missing if m[1] == "job:new"),
    )


def latency_by_minute(
    latencies: Sequence[tuple[float, float]], booked: Sequence[float], load_start: float
) -> list[dict[str, Any]]:
    """For the jobs booked in each minute of the load: how many, the offers they got, and
    booking-to-offer p50/p99 (None for a minute whose jobs got no offer)."""
    jobs: Counter[int] = Counter(int((at - load_start) // 60) for at in booked)
    minutes: dict[int, list[float]] = defaultdict(list)
    for at, seconds in latencies:
        minutes[int((at - load_start) // 60)].append(seconds)
    return [
        {
            "minute": minute + 1,
            "jobs": jobs[minute],
            "offers": len(minutes[minute]),
            "p50_ms": round(statistics.median(minutes[minute]) * 1000, 1)
            if minutes[minute]
            else None,
            "p99_ms": round(percentile(minutes[minute], 99) * 1000, 1) if minutes[minute] else None,
        }
        for minute in sorted(jobs.keys() | minutes.keys())
    ]
