// The customer's app: book a job by choosing a pickup, watch it being offered, see the
// driver who took it come closer and the job move on to `completed`. Everything here is the
// public contract: REST under /api/v1 and the gateway's Socket.IO events.
import { ApiError, call, describe, retrying } from "./api.js";
import { ACTIVE, STATUS_TEXT, clock, newestKeeper, node } from "./jobs.js";
import { connectLive, stateShower } from "./live.js";
import { $, runApp, say } from "./page.js";
import { Plane } from "./plane.js";

// Nothing tells a customer's socket about offers (they go to drivers), so while the job is
// pending the app reads its event log (`offered`, with a count per round) this often.
const TIMELINE_EVERY_MS = 2000;

const plane = new Plane($("plane"));
const showLive = stateShower($("live"));
let session = null;
let socket = null;
let job = null; // the Job on show: the one booked last
let bookingKey = null; // the Idempotency-Key of the booking being sent
let watching = null; // the timer reading the timeline while pending
let driverDistanceKm; // from the last job:driver_location
let isNews = newestKeeper();

const api = (method, path, options = {}) => call(method, path, { token: session.token, ...options });

function choosePickup(at) {
  $("lat").value = at.lat;
  $("lng").value = at.lng;
  plane.mark("pickup", at, "Pickup");
}

async function book(event) {
  event.preventDefault();
  const fields = new FormData(event.target);
  const pickup = { lat: Number(fields.get("lat")), lng: Number(fields.get("lng")) };
  if (fields.get("address")) pickup.address = fields.get("address");
  const body = { pickup, ...(fields.get("notes") ? { notes: fields.get("notes") } : {}) };
  // One key per booking, kept until it is answered: if the answer is lost and the booking
  // is sent again (by `retrying`, or by pressing Book again), the server returns the job it
  // made the first time and dispatches nothing twice.
  bookingKey ??= randomKey();
  const headers = { "Idempotency-Key": bookingKey };
  try {
    const booked = await retrying(() => api("POST", "/jobs", { body, headers }));
    [bookingKey, job, driverDistanceKm] = [null, null, undefined];
    isNews = newestKeeper();
    showJob(booked);
    say(`Job #${booked.id} booked.`);
  } catch (error) {
    if (error instanceof ApiError && error.status < 500) bookingKey = null; // refused: made nothing
    say(describe(error));
  }
}

/** 128 random bits in hex (crypto.randomUUID needs a secure context: https or localhost,
 * and this page may be opened over http from another machine). */
function randomKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Shows the booked job, if `incoming` is news about it (see newestKeeper). */
function showJob(incoming) {
  if ((job && incoming.id !== job.id) || !isNews(incoming)) return;
  job = incoming;
  $("job-none").hidden = true;
  $("job").hidden = false;
  $("job-title").textContent = `Your job #${job.id}`;
  $("job-status").textContent = STATUS_TEXT[job.status];
  $("cancel").hidden = !["pending", "accepted", "arrived"].includes(job.status);
  $("book").disabled = ACTIVE.has(job.status);
  plane.mark("pickup", job.pickup, "Pickup");
  showDriver(job.driver_location);
  watchTimeline();
}

/** Where the driver is: from the Job (`driver_location`) or a `job:driver_location` event. */
function showDriver(at, distanceKm = driverDistanceKm) {
  driverDistanceKm = distanceKm;
  const driver = job.driver;
  plane.mark("driver", driver && at, driver?.name ?? "");
  if (!driver) {
    $("job-driver").textContent = job.status === "pending" ? "No driver yet." : "";
    return;
  }
  const away = distanceKm === undefined ? "" : `, ${distanceKm.toFixed(1)} km away`;
  $("job-driver").textContent = `Driver: ${driver.name}${away}.`;
}

async function refreshTimeline() {
  try {
    const { events } = await api("GET", `/jobs/${job.id}/events`);
    const offered = events.filter((e) => e.type === "offered").reduce((sum, e) => sum + e.count, 0);
    $("job-offers").textContent = `Offered to ${offered} driver${offered === 1 ? "" : "s"} so far.`;
    $("timeline").replaceChildren(
      ...events.map((e) => node("li", `${clock(e.at)} ${e.type}${e.type === "offered" ? ` (${e.count})` : ""}`)),
    );
  } catch (error) {
    say(describe(error));
  }
}

/** Reads the timeline now, and again every few seconds while the job waits for a driver. */
function watchTimeline() {
  clearInterval(watching);
  watching = job.status === "pending" ? setInterval(refreshTimeline, TIMELINE_EVERY_MS) : null;
  refreshTimeline();
}

/** The job on show as the server has it now; without one, the newest unfinished job (the
 * page was reloaded). */
async function refreshJob() {
  if (job) return showJob(await api("GET", `/jobs/${job.id}`));
  const { jobs } = await api("GET", "/jobs");
  const open = jobs.filter((j) => ACTIVE.has(j.status)).sort((a, b) => b.id - a.id);
  if (open.length) showJob(open[0]);
}

/** On every (re)connect and `feed:reload`: events sent while the socket was down are gone
 * for good, so the page asks again. */
async function reload() {
  try {
    await refreshJob();
  } catch (error) {
    say(describe(error));
  }
}

async function cancel() {
  try {
    showJob(await retrying(() => api("POST", `/jobs/${job.id}/cancel`, { body: {} })));
  } catch (error) {
    say(describe(error));
  }
}

async function start(signedIn) {
  session = signedIn;
  await refreshJob(); // also proves the token still works (a 401 signs out)
  socket = await connectLive(session.token, {
    reload,
    showState: showLive,
    events: {
      "job:status": showJob,
      // At most one a second while the driver is on the way or working.
      "job:driver_location": ({ job_id: jobId, lat, lng, distance_km: distanceKm }) => {
        if (job?.id === jobId && job.driver) showDriver({ lat, lng }, distanceKm);
      },
    },
  });
}

function stop() {
  socket?.disconnect();
  clearInterval(watching);
  [socket, job, bookingKey] = [null, null, null];
  plane.markers.forEach((_, name) => plane.mark(name, null));
  $("job").hidden = true;
  $("job-none").hidden = false;
  $("book").disabled = false;
  showLive("idle", "Live feed: signed out");
}

$("booking-form").addEventListener("submit", book);
$("cancel").addEventListener("click", cancel);
plane.onPick(choosePickup);
runApp("customer", { start, stop });
