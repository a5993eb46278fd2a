"""Concurrent steps on one job, fired as real HTTP requests at a real gunicorn (v1.1).

Of steps that exclude each other exactly one applies: the job's final status, its
`job_events` rows and the drivers' `current_job_id` all tell the same single story, and the
answers match it (the winner's requests 200, the losers' 409, never a 500). A step repeated
by its own actor is a retry: every copy answers 200 with the same Job, and it is recorded
(so announced) once. Each race is 22 requests released together by a barrier, each on its
own connection, and each is run on ten jobs (five for a variant of a race run elsewhere)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from sqlalchemy import select

from models.accounts import DriverProfile
from models.db import session_scope
from models.job_events import JobEvent
from models.jobs import ON_JOB, Job
from models.offers import Offer
from tests.factories import Account, Factory, HttpClient
from tests.processes import start_web

pytestmark = pytest.mark.slow

ROUNDS = 10  # jobs per race
FEWER_ROUNDS = 5  # for a variant of a race that another test runs ROUNDS times
CROWD = 22  # requests per race

CONFLICT = (409, "conflict")
NOT_AVAILABLE = (409, "job_not_available")
# A step the driver sends just after releasing the job comes from someone who is no longer
# its driver, and cannot see it any more: the contract's 404 for that is as right as a 409.
NOT_THEIRS_NOW = {CONFLICT, (404, "not_found")}


# --- the web API and its data ------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    web, port = start_web(tmp_path_factory.mktemp("races"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.stop()


@pytest.fixture
def http(base_url: str) -> Iterator[HttpClient]:
    client = HttpClient(base_url)
    yield client
    client.close()


@pytest.fixture
def factory(http: HttpClient) -> Factory:
    return Factory(http)


def online_drivers(base_url: str, count: int) -> list[Account]:
    """`count` drivers online at the origin, registered side by side (each registration
    hashes a password)."""

    def register(_: int) -> Account:
        client = HttpClient(base_url)
        try:
            return Factory(client).driver()
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(register, range(count)))


# --- firing a race -----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of a race: `account` asks for `step` on the job."""

    account: Account
    step: str
    job_id: int


@dataclass(frozen=True)
class Outcome:
    call: Call
    status: int
    body: Any

    @property
    def answer(self) -> tuple[int, str | None]:
        """(status, error code), the code None on a success."""
        if self.status < 400:
            return self.status, None
        assert isinstance(self.body, dict) and list(self.body) == ["error"], self.body
        assert list(self.body["error"]) == ["code", "message"], self.body
        return self.status, self.body["error"]["code"]


def fire(base_url: str, calls: list[Call]) -> list[Outcome]:
    """Send every call at once: one thread and one connection each."""
    calls = list(calls)
    random.Random(calls[0].job_id).shuffle(calls)  # interleave the competing steps
    start = threading.Barrier(len(calls))

    def send(call: Call) -> Outcome:
        with requests.Session() as session:
            start.wait(timeout=30)
            response = session.post(
                f"{base_url}/api/v1/jobs/{call.job_id}/{call.step}",
                headers=call.account.headers,
                timeout=30,
            )
        body = response.json() if response.content else None
        return Outcome(call, response.status_code, body)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        outcomes = list(pool.map(send, calls))
    assert all(o.status < 500 for o in outcomes), [(o.call, o.status, o.body) for o in outcomes]
    return outcomes


def of(outcomes: list[Outcome], step: str, account: Account | None = None) -> list[Outcome]:
    return [
        o
        for o in outcomes
        if o.call.step == step and (account is None or o.call.account.id == account.id)
    ]


def answers(outcomes: list[Outcome]) -> set[tuple[int, str | None]]:
    return {o.answer for o in outcomes}


def same_job(outcomes: list[Outcome], status: str) -> dict:
    """Every answer is 200 with one and the same Job, in `status`."""
    assert outcomes
    assert answers(outcomes) == {(200, None)}, [(o.status, o.body) for o in outcomes]
    first = outcomes[0].body
    assert all(o.body == first for o in outcomes), [o.body for o in outcomes]
    assert first["status"] == status, first
    return first


# --- what the database holds --------------------------------------------------------------


@dataclass
class Stored:
    status: str
    driver_id: int | None
    events: Counter[str]
    holding: list[int]  # the drivers whose current job this is


def stored(job_id: int) -> Stored:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        types = session.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id))
        holding = session.scalars(
            select(DriverProfile.user_id).where(DriverProfile.current_job_id == job_id)
        )
        return Stored(job.status, job.driver_id, Counter(types), sorted(holding))


def settled(job_id: int) -> Stored:
    """The job after a race, once the drivers' holdings are checked across every job: each
    driver on a job is its driver while it is accepted, arrived or in progress, and each such
    job holds its driver. So nobody is on two jobs, nor held by a job that freed them."""
    with session_scope() as session:
        held = session.execute(
            select(DriverProfile.user_id, DriverProfile.current_job_id).where(
                DriverProfile.current_job_id.is_not(None)
            )
        )
        ongoing = session.execute(
            select(Job.driver_id, Job.id).where(Job.status.in_([status.value for status in ON_JOB]))
        )
        holdings = sorted((row.user_id, row.current_job_id) for row in held)
        jobs_on = sorted((row.driver_id, row.id) for row in ongoing)
    assert holdings == jobs_on, (holdings, jobs_on)
    assert len({driver for driver, _ in holdings}) == len(holdings), holdings
    return stored(job_id)


def current_job(driver: Account) -> int | None:
    with session_scope() as session:
        profile = session.get(DriverProfile, driver.id)
        assert profile is not None
        return profile.current_job_id


def offer_closed(job_id: int, driver: Account) -> str | None:
    with session_scope() as session:
        return session.scalar(
            select(Offer.closed_reason).where(Offer.job_id == job_id, Offer.driver_id == driver.id)
        )


# --- getting a job to where a race starts ------------------------------------------------


def step(http: HttpClient, account: Account, job_id: int, name: str) -> dict:
    answer = http.post(f"/api/v1/jobs/{job_id}/{name}", headers=account.headers)
    assert answer.status_code == 200, answer.json
    return answer.json


def offered_job(factory: Factory, customer: Account, *drivers: Account) -> int:
    job_id = factory.job(customer)["id"]
    offered = factory.offer(job_id)
    assert {d.id for d in drivers} <= set(offered), offered
    return int(job_id)


def job_in(factory: Factory, customer: Account, driver: Account, status: str) -> int:
    """A job of the customer held by the driver, taken step by step to `status`."""
    http = factory.client
    assert isinstance(http, HttpClient)
    job_id = offered_job(factory, customer, driver)
    for name in ("accept", "arrive", "start"):
        if step(http, driver, job_id, name)["status"] == status:
            return job_id
    raise AssertionError(f"no job in {status}")


def free(http: HttpClient, customer: Account, driver: Account, job_id: int) -> None:
    """End the job if it still holds the driver, so the next round can offer them work."""
    state = stored(job_id)
    if state.holding == [driver.id]:
        if state.status == "in_progress":
            step(http, driver, job_id, "complete")
        else:
            step(http, customer, job_id, "cancel")
    assert current_job(driver) is None


# --- 1, 2: accepts -----------------------------------------------------------------------


def test_of_many_drivers_accepting_one_job_exactly_one_gets_it(
    base_url: str, http: HttpClient, factory: Factory
) -> None:
    customer = factory.customer()
    drivers = online_drivers(base_url, CROWD)
    for _ in range(ROUNDS):
        job_id = offered_job(factory, customer, *drivers)

        outcomes = fire(base_url, [Call(d, "accept", job_id) for d in drivers])

        winners = [o for o in outcomes if o.status == 200]
        assert len(winners) == 1, [(o.call.account.id, o.answer) for o in outcomes]
        winner = winners[0].call.account
        assert answers([o for o in outcomes if o is not winners[0]]) == {NOT_AVAILABLE}
        assert winners[0].body["driver"]["id"] == winner.id
        state = settled(job_id)
        assert (state.status, state.driver_id) == ("accepted", winner.id)
        assert state.holding == [winner.id]
        assert state.events["accepted"] == 1
        free(http, customer, winner, job_id)


@pytest.mark.parametrize("racers", [1, 2], ids=["one-driver", "two-drivers"])
def test_every_copy_of_the_winners_accept_answers_200_and_is_recorded_once(
    base_url: str, http: HttpClient, factory: Factory, racers: int
) -> None:
    """The contract's retry rule: the winner's copies that lost the row lock to its own
    first copy answer 200 with the same Job too; the other driver's all answer 409."""
    customer = factory.customer()
    drivers = online_drivers(base_url, racers)
    for _ in range(ROUNDS if racers == 1 else FEWER_ROUNDS):
        job_id = offered_job(factory, customer, *drivers)

        calls = [Call(drivers[i % racers], "accept", job_id) for i in range(CROWD)]
        outcomes = fire(base_url, calls)

        state = settled(job_id)
        assert state.status == "accepted"
        [winner] = [d for d in drivers if d.id == state.driver_id]
        job = same_job(of(outcomes, "accept", winner), "accepted")
        assert job["driver"]["id"] == winner.id
        for loser in drivers:
            if loser is not winner:
                assert answers(of(outcomes, "accept", loser)) == {NOT_AVAILABLE}
        assert state.events["accepted"] == 1
        assert state.holding == [winner.id]
        free(http, customer, winner, job_id)


# step -> (the job's status after it, the event it records)
STEPS = {
    "arrive": ("arrived", "arrived"),
    "start": ("in_progress", "started"),
    "complete": ("completed", "completed"),
    "release": ("pending", "released"),
    "cancel": ("cancelled", "cancelled"),
}


# --- 3: cancel or release racing start ----------------------------------------------------


@pytest.mark.parametrize("rival", ["cancel", "release"])
def test_a_cancel_or_release_racing_a_start_leaves_exactly_one_applied(
    base_url: str, http: HttpClient, factory: Factory, rival: str
) -> None:
    """From arrived, the customer's cancel or the driver's release against the driver's
    start: one of the two applies, the other is refused."""
    customer = factory.customer()
    [driver] = online_drivers(base_url, 1)
    actor = customer if rival == "cancel" else driver
    rival_status, rival_event = STEPS[rival]
    for _ in range(ROUNDS):
        job_id = job_in(factory, customer, driver, "arrived")

        calls = [Call(actor, rival, job_id) for _ in range(CROWD // 2)]
        calls += [Call(driver, "start", job_id) for _ in range(CROWD // 2)]
        outcomes = fire(base_url, calls)

        state = settled(job_id)
        if state.status == rival_status:
            job = same_job(of(outcomes, rival), rival_status)
            assert job["started_at"] is None
            assert (state.events[rival_event], state.events["started"]) == (1, 0)
            assert state.holding == [] and current_job(driver) is None
            if rival == "cancel":
                assert job["cancelled_by"] == "customer"
                assert answers(of(outcomes, "start")) == {CONFLICT}
            else:
                assert job["driver"] is None and state.driver_id is None
                assert answers(of(outcomes, "start")) <= NOT_THEIRS_NOW
                assert offer_closed(job_id, driver) == "released"
        else:
            assert state.status == "in_progress", state
            job = same_job(of(outcomes, "start"), "in_progress")
            assert job["cancelled_at"] is None
            assert answers(of(outcomes, rival)) == {CONFLICT}
            assert (state.events["started"], state.events[rival_event]) == (1, 0)
            assert state.holding == [driver.id]
            assert offer_closed(job_id, driver) is None
        free(http, customer, driver, job_id)


# --- 4: release racing complete ------------------------------------------------------------


@pytest.mark.parametrize("status", ["in_progress", "arrived"])
def test_a_release_racing_a_complete_applies_only_the_step_the_status_allows(
    base_url: str, http: HttpClient, factory: Factory, status: str
) -> None:
    """From in_progress only complete can apply; from arrived only release can."""
    customer = factory.customer()
    [driver] = online_drivers(base_url, 1)
    for _ in range(ROUNDS):
        job_id = job_in(factory, customer, driver, status)

        calls = [Call(driver, "release", job_id) for _ in range(CROWD // 2)]
        calls += [Call(driver, "complete", job_id) for _ in range(CROWD // 2)]
        outcomes = fire(base_url, calls)

        state = settled(job_id)
        assert state.holding == [] and current_job(driver) is None
        if status == "in_progress":
            same_job(of(outcomes, "complete"), "completed")
            assert answers(of(outcomes, "release")) == {CONFLICT}
            assert (state.status, state.driver_id) == ("completed", driver.id)
            assert (state.events["completed"], state.events["released"]) == (1, 0)
        else:
            job = same_job(of(outcomes, "release"), "pending")
            assert job["driver"] is None
            assert answers(of(outcomes, "complete")) <= NOT_THEIRS_NOW
            assert (state.status, state.driver_id) == ("pending", None)
            assert (state.events["released"], state.events["completed"]) == (1, 0)
            assert offer_closed(job_id, driver) == "released"


# --- 5: the same step by its actor, many times at once --------------------------------------


def repeat_step(base_url: str, actor: Account, driver: Account, job_id: int, name: str) -> None:
    """Send the step CROWD times at once: every copy 200 with the same Job, one event, and
    the driver held or freed as the step says."""
    after, event = STEPS[name]
    events_before = stored(job_id).events

    outcomes = fire(base_url, [Call(actor, name, job_id) for _ in range(CROWD)])

    same_job(outcomes, after)
    state = settled(job_id)
    assert state.status == after
    assert state.events - events_before == Counter({event: 1}), state.events
    holds = after in ("arrived", "in_progress")
    assert state.holding == ([driver.id] if holds else [])
    assert current_job(driver) == (job_id if holds else None)


def test_each_of_the_drivers_steps_sent_many_times_at_once_applies_once(
    base_url: str, factory: Factory
) -> None:
    customer = factory.customer()
    [driver] = online_drivers(base_url, 1)
    for _ in range(ROUNDS):
        job_id = job_in(factory, customer, driver, "accepted")
        for name in ("arrive", "start", "complete"):
            repeat_step(base_url, driver, driver, job_id, name)


@pytest.mark.parametrize(("name", "status"), [("release", "accepted"), ("cancel", "arrived")])
def test_a_release_or_cancel_sent_many_times_at_once_applies_once(
    base_url: str, factory: Factory, name: str, status: str
) -> None:
    """Variants: the release race from arrived repeats the release ten times a job, and the
    cancel racing accepts repeats the cancel."""
    customer = factory.customer()
    [driver] = online_drivers(base_url, 1)
    actor = customer if name == "cancel" else driver
    for _ in range(FEWER_ROUNDS):
        job_id = job_in(factory, customer, driver, status)
        repeat_step(base_url, actor, driver, job_id, name)


def test_a_decline_sent_many_times_at_once_is_recorded_once(
    base_url: str, http: HttpClient, factory: Factory
) -> None:
    customer = factory.customer()
    [driver] = online_drivers(base_url, 1)
    for _ in range(ROUNDS):
        job_id = offered_job(factory, customer, driver)

        outcomes = fire(base_url, [Call(driver, "decline", job_id) for _ in range(CROWD)])

        assert answers(outcomes) == {(204, None)}
        state = settled(job_id)
        assert (state.status, state.driver_id, state.events["declined"]) == ("pending", None, 1)
        assert offer_closed(job_id, driver) == "declined"


# --- 6: decline racing accept ------------------------------------------------------------


@pytest.mark.parametrize("rivals", [0, 3], ids=["alone", "with-rivals"])
def test_a_driver_never_both_declines_and_gets_a_job(
    base_url: str, http: HttpClient, factory: Factory, rivals: int
) -> None:
    """One driver's accepts and declines of a job, raced (also against other drivers'
    accepts, two copies each): the job ends with them or their offer ends declined,
    never both. Every driver's accepts answer alike: all 200 for the one who got it."""
    customer = factory.customer()
    decider, *others = online_drivers(base_url, 1 + rivals)
    copies = 2
    own = (CROWD - copies * rivals) // 2
    declined_events: list[tuple[bool, int]] = []
    for _ in range(ROUNDS):
        job_id = offered_job(factory, customer, decider, *others)

        calls = [Call(decider, "accept", job_id) for _ in range(own)]
        calls += [Call(decider, "decline", job_id) for _ in range(own)]
        calls += [Call(other, "accept", job_id) for other in others for _ in range(copies)]
        outcomes = fire(base_url, calls)

        state = settled(job_id)
        declined = offer_closed(job_id, decider) == "declined"
        declines = of(outcomes, "decline", decider)
        for driver in (decider, *others):
            if driver.id == state.driver_id:
                same_job(of(outcomes, "accept", driver), "accepted")
            else:
                assert answers(of(outcomes, "accept", driver)) == {NOT_AVAILABLE}
        if state.driver_id == decider.id:
            assert not declined
            assert answers(declines) == {CONFLICT}
        else:
            assert current_job(decider) is None
            assert answers(declines) == ({(204, None)} if declined else {CONFLICT})
        if state.driver_id is None:
            assert declined and not others  # only the decider could have taken it
            assert (state.status, state.holding, state.events["accepted"]) == ("pending", [], 0)
        else:
            assert (state.status, state.holding) == ("accepted", [state.driver_id])
            assert state.events["accepted"] == 1
            step(http, customer, job_id, "cancel")
        declined_events.append((declined, state.events["declined"]))
    # A decline repeated while the first is in flight is a retry, recorded (announced) once.
    assert all(count == declined for declined, count in declined_events), (
        "(offer declined, declined events) per job",
        declined_events,
    )


# --- 7: one driver accepting several jobs -------------------------------------------------


def test_a_driver_accepting_several_jobs_at_once_ends_on_one(
    base_url: str, http: HttpClient, factory: Factory
) -> None:
    customer = factory.customer()
    [driver] = online_drivers(base_url, 1)
    jobs = 3
    for _ in range(ROUNDS):
        job_ids = [offered_job(factory, customer, driver) for _ in range(jobs)]

        calls = [Call(driver, "accept", job_ids[i % jobs]) for i in range(CROWD)]
        outcomes = fire(base_url, calls)

        held = current_job(driver)
        assert held in job_ids
        settled(held)
        for job_id in job_ids:
            state = stored(job_id)
            mine = [o for o in outcomes if o.call.job_id == job_id]
            if job_id == held:
                same_job(mine, "accepted")
                assert (state.status, state.driver_id, state.holding) == (
                    "accepted",
                    driver.id,
                    [driver.id],
                )
                assert state.events["accepted"] == 1
            else:
                assert answers(mine) <= {CONFLICT, NOT_AVAILABLE}
                assert (state.status, state.driver_id, state.holding) == ("pending", None, [])
                assert state.events["accepted"] == 0
        step(http, customer, held, "cancel")


# --- a cancel racing accepts -------------------------------------------------------------


def test_a_cancel_racing_accepts_always_ends_cancelled_with_nobody_held(
    base_url: str, http: HttpClient, factory: Factory
) -> None:
    """Cancel applies from pending and from accepted, so an accept may come first; either
    way the job ends cancelled, and a driver who got it in between is freed by the cancel."""
    customer = factory.customer()
    drivers = online_drivers(base_url, 4)
    for _ in range(FEWER_ROUNDS):
        job_id = offered_job(factory, customer, *drivers)

        calls = [Call(customer, "cancel", job_id) for _ in range(CROWD - len(drivers))]
        calls += [Call(d, "accept", job_id) for d in drivers]
        outcomes = fire(base_url, calls)

        same_job(of(outcomes, "cancel"), "cancelled")
        state = settled(job_id)
        assert (state.status, state.holding, state.events["cancelled"]) == ("cancelled", [], 1)
        accepted = [o for o in of(outcomes, "accept") if o.status == 200]
        assert len(accepted) == state.events["accepted"] <= 1
        assert answers([o for o in of(outcomes, "accept") if o.status != 200]) <= {NOT_AVAILABLE}
        if accepted:
            assert state.driver_id == accepted[0].call.account.id
        assert all(current_job(d) is None for d in drivers)
