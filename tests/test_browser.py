"""The reference apps (/try/driver, /try/customer) in a real browser: Debian's Chromium driven
by Playwright, on real processes (gunicorn, the gateway, the Celery workers, PostgreSQL,
Redis). A driver goes online and reports a position by clicking, a customer books by
clicking, and the job goes from the driver's feed to `completed` on both pages; axe-core
finds no serious accessibility problem, every control is reached with the Tab key, and the
pages fit a phone's width. The operators' console (/console/, an operator made by
`dispatch create-operator`) shows the driver's point and the job waiting, offered, accepted
and completed as it happens, without loading again; a driver it suspends is offered nothing;
it says when its connection drops, and reads everything again when it is back.

UPDATE_SCREENSHOTS=1 writes docs/screenshots/ (the three pages, desktop and phone) on the
way."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from settings import PROJECT_ROOT
from tests.contract import bearer
from tests.factories import PASSWORD, Factory, HttpClient
from tests.processes import (
    BIN,
    Process,
    free_port,
    port_open,
    start_web,
    start_workers,
    wait_until,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (the Makefile installs it)
AXE = PROJECT_ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
# Waits on page conditions, as long as a loaded machine may need (nothing waits for time).
expect.set_options(timeout=20_000)


@dataclass
class Site:
    url: str  # the web process: the pages and the REST API
    gateway_port: int
    logs: Path
    gateway: Process | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start_gateway(self) -> None:
        """The gateway at the port the web process names (REALTIME_PORT), taking sockets
        from the web process's pages (ALLOWED_ORIGINS)."""
        self.gateway = Process(
            "gateway",
            [str(BIN / "python"), "-m", "realtime"],
            self.logs,
            {"REALTIME_PORT": str(self.gateway_port), "ALLOWED_ORIGINS": self.url},
        )
        gateway = self.gateway
        wait_until(lambda: port_open(self.gateway_port) or not gateway.alive(), 30, "gateway")
        assert gateway.alive(), gateway.log()

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The web process, told where the gateway will listen, then the gateway and workers."""
    logs = tmp_path_factory.mktemp("browser")
    gateway_port = free_port()
    web, web_port = start_web(logs, {"REALTIME_PORT": str(gateway_port)})
    built = Site(f"http://127.0.0.1:{web_port}", gateway_port, logs)
    workers: list[Process] = []
    try:
        built.start_gateway()
        workers = start_workers(logs)
        yield built
    finally:
        for process in workers:
            process.stop()
        built.stop_gateway()
        web.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    """A desktop browser; the pages' Content-Security-Policy is bypassed so that axe-core
    can be injected (test_the_pages_live_within_their_content_policy keeps it)."""
    made = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    yield made
    made.close()


def open_page(context: BrowserContext, url: str) -> Page:
    page = context.new_page()
    answer = page.goto(url)
    assert answer is not None and answer.ok, f"{url}: web/dist not built? (make test builds it)"
    return page


def sign_up(page: Page, name: str) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_label("Email").fill(f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#live")).to_have_attribute("data-state", "connected")


def click_plane(page: Page, x: float, y: float) -> None:
    """Clicks the plane at (x, y), fractions of its width and height from its top left."""
    plane = page.locator("#plane")
    box = plane.bounding_box()
    assert box is not None
    plane.click(position={"x": box["width"] * x, "y": box["height"] * y})


def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    violations: list[dict[str, Any]] = page.evaluate("async () => (await axe.run()).violations")
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n["html"] for n in v["nodes"]]}
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]


UNREACHED_BY_TAB = """async () => {
  const controls = [...document.querySelectorAll("button, input, select, textarea, a[href]")]
    .filter((control) => control.offsetParent !== null && !control.disabled);
  controls.forEach((control, i) => { control.dataset.tabProbe = String(i); });
  document.activeElement?.blur();
  return controls.map((control) => control.id || control.textContent.trim());
}"""


def unreached_by_tab(page: Page) -> list[str]:
    """The visible, enabled controls that pressing Tab from the top never focuses."""
    names: list[str] = page.evaluate(UNREACHED_BY_TAB)
    reached = set()
    for _ in range(len(names) + 5):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement?.dataset.tabProbe ?? null"))
    page.evaluate("document.activeElement?.blur()")
    return [name for i, name in enumerate(names) if str(i) not in reached]


def check_page(page: Page, screenshot: str | None = None) -> None:
    """Accessible (axe-core, the Tab key) at desktop and phone width, no wider than a
    phone's screen there; and, with UPDATE_SCREENSHOTS=1, its pictures taken."""
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        assert serious_violations(page) == [], size_name
        assert unreached_by_tab(page) == [], size_name
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
        if screenshot and os.environ.get("UPDATE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOTS / f"{screenshot}-{size_name}.png", full_page=True)
    page.set_viewport_size(DESKTOP)


def test_a_job_from_booking_to_completed_in_the_driver_and_customer_pages(
    site: Site, context: BrowserContext
) -> None:
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    driver = open_page(context, f"{site.url}/try/driver")
    check_page(driver)  # the sign-up form
    sign_up(driver, "Dana")
    online = driver.get_by_label("Online: offered jobs near me")
    online.check()
    expect(driver.locator("#message")).to_have_text("You are online.")
    click_plane(driver, 0.5, 0.5)
    expect(driver.locator("#position")).to_have_text(
        re.compile(r"^Position reported: 38\.7\d+, -9\.1\d+")
    )

    customer = open_page(context, f"{site.url}/try/customer")
    sign_up(customer, "Carl")
    click_plane(customer, 0.6, 0.4)
    customer.get_by_label("What do you need?").fill("flat tyre")
    customer.get_by_role("button", name="Book").click()
    expect(customer.locator("#job-status")).to_have_text(re.compile("^pending"))

    # The offer reaches the driver's feed (job:new), and the customer sees it go out.
    offer = driver.locator(".offer")
    expect(offer).to_have_count(1)
    expect(offer).to_contain_text("“flat tyre”, for Carl")
    expect(customer.locator("#job-offers")).to_have_text("Offered to 1 driver so far.")
    offer.get_by_role("button", name=re.compile("^Accept job")).click()
    expect(driver.locator("#current-status")).to_have_text("accepted")
    expect(driver.locator(".offer")).to_have_count(0)
    expect(online).to_be_checked()
    expect(customer.locator("#job-status")).to_have_text(re.compile("^accepted"))
    expect(customer.locator("#job-driver")).to_contain_text("Driver: Dana")

    # The driver moves toward the pickup; the customer sees where (job:driver_location).
    click_plane(driver, 0.58, 0.42)
    expect(customer.locator("#job-driver")).to_have_text(
        re.compile(r"^Driver: Dana, 0\.\d km away")
    )
    check_page(driver, "driver")
    check_page(customer, "customer")

    for step, status in (
        ("I have arrived", "arrived"),
        ("Start the work", "in_progress"),
    ):
        driver.get_by_role("button", name=step).click()
        expect(driver.locator("#current-status")).to_have_text(status)
        expect(customer.locator("#job-status")).to_have_text(re.compile(f"^{status}"))
    driver.get_by_role("button", name="Complete the job").click()
    expect(driver.locator("#last-job")).to_have_text(re.compile(r"^Job #\d+: completed"))
    expect(customer.locator("#job-status")).to_have_text("completed")
    expect(customer.locator("#timeline")).to_contain_text("completed")
    check_page(customer)

    # Nothing came from anywhere but the web process and the gateway.
    origins = {f"{u.scheme}://{u.netloc}" for u in map(urlsplit, requested)}
    assert origins <= {site.url, site.gateway_url, "data:"}, origins


def test_the_pages_live_within_their_content_policy(site: Site, browser: Browser) -> None:
    """With the Content-Security-Policy in force, a page loads its script and style and opens
    its socket to the gateway, and the browser reports no violation."""
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    answer = page.goto(f"{site.url}/try/driver")
    assert answer is not None and "default-src 'self'" in answer.headers["content-security-policy"]
    sign_up(page, "Cleo")
    expect(page.locator("#online")).to_be_enabled()
    assert violations == []
    context.close()


def test_the_driver_page_reloads_its_feed_when_its_socket_is_back(
    site: Site, browser: Browser
) -> None:
    """An offer made while the driver's socket was down (its `job:new` reached nobody) is
    in the feed once the socket is back: the page reloads GET /drivers/me/offers on every
    connect."""
    context = browser.new_context(viewport=DESKTOP)
    driver = open_page(context, f"{site.url}/try/driver")
    sign_up(driver, "Ines")
    driver.get_by_label("Online: offered jobs near me").check()
    click_plane(driver, 0.5, 0.5)
    expect(driver.locator("#position")).to_have_text(re.compile("^Position reported"))
    site.stop_gateway()
    try:
        expect(driver.locator("#live")).to_have_attribute("data-state", "reconnecting")
        http = HttpClient(site.url)
        factory = Factory(http)
        job = factory.job(factory.customer(), at=(38.72, -9.14), notes="battery")
        token = driver.evaluate("JSON.parse(sessionStorage['dispatch.session.driver']).token")
        offers = "/api/v1/drivers/me/offers"
        wait_until(lambda: http.get(offers, headers=bearer(token)).json["offers"], 30, "offer")
        expect(driver.locator(".offer")).to_have_count(0)
    finally:
        site.start_gateway()
    expect(driver.locator("#live")).to_have_attribute("data-state", "connected")
    expect(driver.locator(".offer")).to_contain_text(f"Job #{job['id']}")
    context.close()


def create_operator(name: str) -> str:
    """An operator made as operators are (`dispatch create-operator`); their email."""
    email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
    made = subprocess.run(
        [str(BIN / "dispatch"), "create-operator", email, "--name", name, "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return email


def open_console(context: BrowserContext, site: Site, email: str) -> Page:
    console = open_page(context, f"{site.url}/console/")
    console.get_by_label("Email").fill(email)
    console.get_by_label("Password").fill(PASSWORD)
    console.get_by_role("button", name="Sign in").click()
    expect(console.locator("#live")).to_have_attribute("data-state", "connected")
    return console


def booked_job_id(customer: Page, after: int = 0) -> int:
    """The id of the job the customer page says it booked, once it is not job `after`."""
    message = customer.locator("#message")
    expect(message).to_have_text(re.compile(r"^Job #\d+ booked"))
    expect(message).not_to_have_text(f"Job #{after} booked.")
    found = re.search(r"#(\d+)", customer.locator("#message").inner_text())
    assert found is not None
    return int(found.group(1))


def test_the_console_shows_drivers_and_jobs_live_and_suspends_a_driver(
    site: Site, context: BrowserContext
) -> None:
    email = create_operator("Olga")
    console = open_console(context, site, email)
    console.evaluate("window.notReloaded = true")  # gone if the page loads again
    driver = open_page(context, f"{site.url}/try/driver")
    sign_up(driver, "Dora")
    driver.get_by_label("Online: offered jobs near me").check()
    expect(driver.locator("#message")).to_have_text("You are online.")
    click_plane(driver, 0.5, 0.5)
    dora = console.locator("#plane .marker.online", has_text="Dora")
    expect(dora).to_have_count(1)
    expect(console.locator("#drivers")).to_contain_text("Dora online")

    customer = open_page(context, f"{site.url}/try/customer")
    sign_up(customer, "Cleo")
    click_plane(customer, 0.55, 0.45)
    customer.get_by_role("button", name="Book").click()
    job_id = booked_job_id(customer)
    job = console.locator(f'[data-job="{job_id}"]')
    expect(console.locator(f'#offered [data-job="{job_id}"]')).to_contain_text("offered to 1")

    driver.locator(".offer").get_by_role("button", name=re.compile("^Accept job")).click()
    expect(console.locator(f'#working [data-job="{job_id}"]')).to_have_attribute(
        "data-status", "accepted"
    )
    expect(console.locator("#plane .marker.on-job", has_text="Dora")).to_have_count(1)
    console.get_by_role("button", name=f"Job #{job_id}: accepted").click()
    expect(console.locator("#timeline")).to_contain_text("accepted by driver")
    check_page(console, "console")

    for step in ("I have arrived", "Start the work", "Complete the job"):
        driver.get_by_role("button", name=step).click()
    expect(console.locator(f'#finished [data-job="{job_id}"]')).to_have_attribute(
        "data-status", "completed"
    )
    expect(job).to_have_count(1)
    expect(console.locator("#timeline")).to_contain_text("completed by driver")
    expect(dora).to_have_count(1)  # online again, free for work

    # Suspended from the console, the driver is offered nothing.
    console.get_by_role("button", name="Suspend Dora").click()
    expect(console.locator("#plane .marker.suspended", has_text="Dora")).to_have_count(1)
    expect(driver.locator("#approval")).to_have_text(re.compile("^Suspended by an operator"))
    click_plane(customer, 0.5, 0.5)
    customer.get_by_role("button", name="Book").click()
    unserved = booked_job_id(customer, after=job_id)
    # On the console once the worker has announced it: no round found anyone.
    expect(console.locator(f'#waiting [data-job="{unserved}"]')).to_have_count(1)
    expect(driver.locator(".offer")).to_have_count(0)
    http = HttpClient(site.url)
    token = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}).json[
        "token"
    ]
    pending = http.get("/api/v1/ops/jobs?status=pending", headers=bearer(token)).json["jobs"]
    assert [(j["id"], j["offered_to"]) for j in pending] == [(unserved, 0)]
    assert console.evaluate("window.notReloaded") is True


def test_the_console_says_when_its_connection_drops_and_reloads_when_back(
    site: Site, browser: Browser
) -> None:
    """While the gateway is down the console says so, and once it is back the board is read
    again: a job booked meanwhile (its ops:job reached nobody) is on it."""
    context = browser.new_context(viewport=PHONE)
    email = create_operator("Otto")
    console = open_console(context, site, email)
    site.stop_gateway()
    try:
        expect(console.locator("#live")).to_have_attribute("data-state", "reconnecting")
        expect(console.locator("#live")).to_have_text(re.compile("reconnecting"))
        factory = Factory(HttpClient(site.url))
        job = factory.job(factory.customer(), at=(38.9, -9.14))  # far: offered to nobody
    finally:
        site.start_gateway()
    expect(console.locator("#live")).to_have_attribute("data-state", "connected")
    expect(console.locator(f'[data-job="{job["id"]}"]')).to_have_count(1)
    context.close()
