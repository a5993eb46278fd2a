// The operators' console: every driver on the plane, coloured by standing; the jobs waiting,
// offered, in progress and just finished, with their ages; live counts; a job's timeline;
// approve and suspend. The state is read over REST (/api/v1/ops/…) on every connect, then
// kept live by the operators' room: `ops:job` (a job after each change), `ops:driver_position`
// (at most one per driver every 2 s), `ops:driver` (suspended or approved) and
// `ops:driver_availability` (online or offline).
import { call, describe } from "./api.js";
import { ACTIVE, clock, isNewer, node } from "./jobs.js";
import { connectLive, stateShower } from "./live.js";
import { $, runApp, say } from "./page.js";
import { Plane } from "./plane.js";

const FINISHED_SHOWN = 10;
// Events come in bursts (a booking: ops:job, then its offers); what they make the console
// read again (counts, offers) is read once per burst.
const SETTLE_MS = 300;

const plane = new Plane($("plane"));
const showLive = stateShower($("live"));
let session = null;
let socket = null;
let drivers = new Map(); // id -> the ops driver view, position kept current by events
let jobs = new Map(); // id -> the job (a JobView, with offered_to once read over REST)
let clockOffsetMs = 0; // the server's clock minus this one's, from the ages REST answers
let timelineJob = null; // the job whose timeline is shown
let ticking = null;
const pending = new Map(); // what is to be read again, by name -> timer

const api = (method, path) => call(method, path, { token: session.token });

// Standing and ages ----------------------------------------------------------------------

function standing(driver) {
  if (driver.suspended) return "suspended";
  if (driver.current_job_id) return "on-job";
  return driver.online ? "online" : "offline";
}

const STANDING_TEXT = { suspended: "suspended", "on-job": "on job", online: "online", offline: "offline" };

function ageText(iso) {
  const seconds = Math.max(0, Math.round((Date.now() + clockOffsetMs - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function age(iso) {
  return node("span", ageText(iso), { class: "age", "data-since": iso });
}

/** Ages move every second, in place (nothing is redrawn, so focus stays put). */
function tick() {
  for (const span of document.querySelectorAll(".age[data-since]")) span.textContent = ageText(span.dataset.since);
}

/** The server's clock from an answer's `age_s` of something created at `createdAt`. */
function learnClock(createdAt, ageS) {
  clockOffsetMs = Date.parse(createdAt) + ageS * 1000 - Date.now();
}

// Drawing -----------------------------------------------------------------------------------

/** Redraws `list` with `items`, keeping keyboard focus on the control that had it. */
function redraw(list, items) {
  const focused = document.activeElement?.id;
  list.replaceChildren(...items);
  if (focused && list.querySelector(`#${CSS.escape(focused)}`)) $(focused).focus();
}

function renderDrivers() {
  const all = [...drivers.values()].sort((a, b) => a.id - b.id);
  $("drivers-empty").hidden = all.length > 0;
  redraw($("drivers"), all.map(driverRow));
  for (const name of [...plane.markers.keys()]) if (name.startsWith("driver-")) plane.mark(name, null);
  for (const driver of all) {
    if (!driver.position) continue;
    const name = `driver-${driver.id}`;
    plane.mark(name, driver.position, driver.name);
    plane.markers.get(name).classList.add(standing(driver));
  }
}

function driverRow(driver) {
  const item = node("li", "", { class: "row", "data-driver": driver.id });
  const line = node("p", "");
  line.append(node("span", "", { class: `swatch ${standing(driver)}` }), node("strong", driver.name));
  const approval = driver.approved ? "" : ", not approved";
  const job = driver.current_job_id ? ` #${driver.current_job_id}` : "";
  line.append(` ${STANDING_TEXT[standing(driver)]}${job}${approval}`);
  item.append(line);
  const seen = node("p", driver.position ? "Position " : "No position yet", { class: "hint" });
  if (driver.position) seen.append(age(driver.position.at), " ago");
  item.append(seen);
  const suspendable = driver.approved && !driver.suspended;
  const action = suspendable ? "suspend" : "approve";
  const label = `${suspendable ? "Suspend" : driver.suspended ? "Reinstate" : "Approve"} ${driver.name}`;
  const button = node("button", label, { type: "button", id: `${action}-${driver.id}`, class: "secondary" });
  button.addEventListener("click", () => changeStanding(driver.id, action));
  item.append(button);
  return item;
}

function lane(job) {
  if (job.status === "pending") return job.offered_to > 0 ? "offered" : "waiting";
  return ACTIVE.has(job.status) ? "working" : "finished";
}

function renderJobs() {
  const lanes = { waiting: [], offered: [], working: [], finished: [] };
  for (const job of [...jobs.values()].sort((a, b) => b.id - a.id)) lanes[lane(job)].push(job);
  lanes.finished = lanes.finished.slice(0, FINISHED_SHOWN);
  for (const [name, list] of Object.entries(lanes)) {
    redraw($(name), list.length ? list.map(jobRow) : [node("li", "None.", { class: "hint" })]);
  }
  for (const name of [...plane.markers.keys()]) if (name.startsWith("pickup-")) plane.mark(name, null);
  for (const job of jobs.values()) if (ACTIVE.has(job.status)) plane.mark(`pickup-${job.id}`, job.pickup, `#${job.id}`);
}

function jobRow(job) {
  const item = node("li", "", { class: "row", "data-job": job.id, "data-status": job.status });
  const button = node("button", `Job #${job.id}: ${job.status}`, {
    type: "button",
    id: `job-${job.id}`,
    class: "link",
    "aria-pressed": String(timelineJob === job.id),
  });
  button.addEventListener("click", () => showTimeline(job.id));
  const who = job.driver ? `${job.customer.name}, driver ${job.driver.name}` : job.customer.name;
  const offers = job.status === "pending" && job.offered_to ? `, offered to ${job.offered_to}` : "";
  const details = node("p", `${who}${offers}, `, { class: "hint" });
  details.append(age(job.created_at), " old");
  item.append(button, details);
  return item;
}

function renderCounts(counts) {
  const shown = [
    ["Drivers online", counts.drivers.online],
    ["On a job", counts.drivers.on_job],
    ["Suspended", counts.drivers.suspended],
    ["Awaiting approval", counts.drivers.awaiting_approval],
    ["Jobs pending", counts.jobs.pending],
    ["Accepted", counts.jobs.accepted],
    ["Arrived", counts.jobs.arrived],
    ["In progress", counts.jobs.in_progress],
  ];
  $("counts").replaceChildren(
    ...shown.flatMap(([term, value]) => {
      const group = node("div");
      group.append(node("dt", term), node("dd", String(value)));
      return [group];
    }),
  );
}

async function showTimeline(jobId) {
  timelineJob = jobId;
  try {
    const { events } = await api("GET", `/ops/jobs/${jobId}/events`);
    if (timelineJob !== jobId) return;
    $("timeline-title").textContent = `Timeline of job #${jobId}`;
    $("timeline-none").hidden = true;
    $("timeline").replaceChildren(
      ...events.map((event) => {
        const by = event.actor ? ` by ${event.actor.role} ${event.actor.id}` : "";
        const count = event.count !== null ? ` (${event.count} ${event.count === 1 ? "driver" : "drivers"})` : "";
        const reason = event.reason ? `: ${event.reason}` : "";
        return node("li", `${clock(event.at)} ${event.type}${count}${by}${reason}`);
      }),
    );
    renderJobs();
  } catch (error) {
    say(describe(error));
  }
}

// Reading the state ----------------------------------------------------------------------

async function readDrivers() {
  const { drivers: found } = await api("GET", "/ops/drivers");
  drivers = new Map(found.map((driver) => [driver.id, driver]));
  renderDrivers();
}

/** Jobs of `status` (all when null), newest first, merged into what is shown. */
async function readJobs(status) {
  const query = status ? `?status=${status}&limit=100` : "?limit=200";
  const { jobs: found } = await api("GET", `/ops/jobs${query}`);
  if (found.length) learnClock(found[0].created_at, found[0].age_s);
  if (!status) jobs = new Map();
  for (const job of found) if (isNewer(jobs.get(job.id), job)) jobs.set(job.id, job);
  renderJobs();
}

async function readCounts() {
  renderCounts(await api("GET", "/ops/counts"));
}

const READERS = { drivers: readDrivers, pending: () => readJobs("pending"), counts: readCounts };

/** Reads `what` again once the current burst of events settles. */
function readSoon(what) {
  clearTimeout(pending.get(what));
  pending.set(
    what,
    setTimeout(() => {
      pending.delete(what);
      READERS[what]().catch((error) => say(describe(error)));
    }, SETTLE_MS),
  );
}

/** Everything, on every connect and `feed:reload`: events missed while down are gone. */
async function reload() {
  try {
    await Promise.all([readDrivers(), readJobs(null), readCounts()]);
    if (timelineJob) await showTimeline(timelineJob);
  } catch (error) {
    say(describe(error));
  }
}

// Live events ----------------------------------------------------------------------------

function jobChanged(job) {
  const shown = jobs.get(job.id);
  if (!isNewer(shown, job)) return;
  // The event's JobView has no offer count: keep the last one read until it is read again.
  jobs.set(job.id, { ...job, offered_to: job.status === "pending" ? (shown?.offered_to ?? 0) : 0 });
  for (const driver of drivers.values()) {
    if (driver.current_job_id === job.id && job.driver?.id !== driver.id) driver.current_job_id = null;
  }
  const driver = job.driver && drivers.get(job.driver.id);
  if (driver) driver.current_job_id = ACTIVE.has(job.status) ? job.id : null;
  if (driver && driver.current_job_id === job.id) driver.online = true;
  if (job.driver && job.status !== "pending" && !driver) readSoon("drivers");
  renderJobs();
  renderDrivers();
  if (job.status === "pending") readSoon("pending");
  if (timelineJob === job.id) showTimeline(job.id);
  readSoon("counts");
}

function driverMoved({ driver_id: driverId, lat, lng, at }) {
  const driver = drivers.get(driverId);
  // A driver not known yet (signed up since), or shown offline: who they are now is read.
  if (!driver || !driver.online) readSoon("drivers");
  if (!driver) return;
  driver.position = { lat, lng, at };
  renderDrivers();
}

function standingChanged({ driver_id: driverId, approved, suspended }) {
  const driver = drivers.get(driverId);
  if (!driver) return readSoon("drivers");
  Object.assign(driver, { approved, suspended });
  renderDrivers();
  readSoon("counts");
}

// A driver went online or offline (offline drops their position too).
function availabilityChanged({ driver_id: driverId, online }) {
  const driver = drivers.get(driverId);
  if (!driver) return readSoon("drivers");
  driver.online = online;
  if (!online) driver.position = null;
  renderDrivers();
  readSoon("counts");
}

async function changeStanding(driverId, action) {
  try {
    const changed = await api("POST", `/ops/drivers/${driverId}/${action}`);
    drivers.set(changed.id, changed);
    renderDrivers();
    say(`${changed.name} is ${changed.suspended ? "suspended" : "approved for work"}.`);
    readSoon("counts");
  } catch (error) {
    say(describe(error));
  }
}

// Signing in and out -----------------------------------------------------------------------

async function start(signedIn) {
  session = signedIn;
  ticking = setInterval(tick, 1000);
  await readCounts(); // a token no longer taken signs out here (runApp)
  socket = await connectLive(session.token, {
    reload,
    showState: (state, text) => showLive(state, text.replace("Live feed", "Live")),
    events: {
      "ops:job": jobChanged,
      "ops:driver_position": driverMoved,
      "ops:driver": standingChanged,
      "ops:driver_availability": availabilityChanged,
    },
  });
}

function stop() {
  socket?.disconnect();
  clearInterval(ticking);
  for (const timer of pending.values()) clearTimeout(timer);
  pending.clear();
  [socket, timelineJob] = [null, null];
  [drivers, jobs] = [new Map(), new Map()];
  [...plane.markers.keys()].forEach((name) => plane.mark(name, null));
  $("timeline").replaceChildren();
  $("timeline-none").hidden = false;
  showLive("idle", "Live: signed out");
}

runApp("operator", { start, stop });
