// The driver's app: go online, report a position, receive offers (`job:new`), accept one
// and carry it through arrive, start and complete. Everything here is the public contract:
// REST under /api/v1 and the gateway's Socket.IO events.
import { ApiError, call, describe, retrying } from "./api.js";
import { ACTIVE, STATUS_TEXT, clock, newestKeeper, node } from "./jobs.js";
import { connectLive, stateShower } from "./live.js";
import { $, runApp, say } from "./page.js";
import { Plane, formatCoordinates } from "./plane.js";

// A position older than LOCATION_STALE_S (2 minutes by default) makes a driver ineligible
// for offers, so while online the app reports it again every 30 s even when the driver has
// not moved (the iOS app reports every few seconds from its GPS).
const REPORT_EVERY_MS = 30_000;
// The steps a driver takes on their job, by the status it is in: [path, button text].
const STEPS = {
  accepted: [["arrive", "I have arrived"], ["release", "Release the job"]],
  arrived: [["start", "Start the work"], ["release", "Release the job"]],
  in_progress: [["complete", "Complete the job"]],
};

const plane = new Plane($("plane"));
const showLive = stateShower($("live"));
let session = null;
let socket = null;
let position = null; // {lat, lng}, the last one the driver chose
let reporting = null; // the timer re-reporting it
let offers = new Map(); // job id -> Offer: the feed
let current = null; // the Job this driver is on, or null
let isNews = newestKeeper();
// Availability changes sent: a profile read sent before the latest change may answer after
// it, and must not undo it on the page.
let availabilityChanges = 0;

const api = (method, path, body) => call(method, path, { token: session.token, body });

/** The driver:location event, acknowledged by the gateway; PUT /drivers/me/location (the
 * same thing over REST) while the socket is down or does not acknowledge in time. */
async function sendPosition(at) {
  if (socket?.connected) {
    const ack = await socket.timeout(5000).emitWithAck("driver:location", at).catch(() => null);
    if (ack?.ok) return;
    if (ack) throw new ApiError(422, ack.error);
  }
  await api("PUT", "/drivers/me/location", at);
}

async function reportPosition() {
  if (!position) return;
  try {
    await sendPosition(position);
    $("position").textContent = `Position reported: ${formatCoordinates(position)}, at ${clock(new Date())}.`;
  } catch (error) {
    say(describe(error));
  }
}

function choosePosition(at) {
  position = at;
  $("lat").value = at.lat;
  $("lng").value = at.lng;
  plane.mark("me", at, "You");
  reportPosition();
}

/** Shows GET /drivers/me's answer to a read sent when `changesThen` changes were sent. */
function showProfile(profile, changesThen) {
  if (changesThen === availabilityChanges) $("online").checked = profile.online;
  showStanding(profile);
  if (profile.current_job) showJob(profile.current_job);
}

/** Approved or not, suspended or not: from GET /drivers/me, or the events an operator's
 * decision sends (`driver:approved`, `driver:suspended`). */
function showStanding({ approved, suspended = false }) {
  $("approval").textContent = suspended
    ? "Suspended by an operator: you are offered nothing and cannot accept jobs."
    : approved
      ? "Approved for work."
      : "Not approved for work yet: an operator approves new drivers. Until then you are offered nothing.";
}

// The feed ------------------------------------------------------------------------------

function renderFeed() {
  const list = [...offers.values()].sort((a, b) => b.job.id - a.job.id); // newest first
  $("feed-empty").hidden = list.length > 0;
  $("feed").replaceChildren(...list.map(offerItem));
  for (const name of plane.markers.keys()) if (name.startsWith("offer-")) plane.mark(name, null);
  for (const { job } of list) plane.mark(`offer-${job.id}`, job.pickup, `#${job.id}`);
}

function offerItem({ job, distance_km: distance, offered_at: offeredAt }) {
  const item = node("li", "", { class: "offer" });
  item.append(
    node("h3", `Job #${job.id}: ${distance.toFixed(1)} km away`),
    node("p", job.pickup.address || formatCoordinates(job.pickup)),
    node("p", job.notes ? `“${job.notes}”, for ${job.customer.name}` : `For ${job.customer.name}`),
    node("p", `Offered ${clock(offeredAt)}, open until ${clock(job.expires_at)}.`, { class: "hint" }),
  );
  const actions = node("div", "", { class: "actions" });
  const acceptButton = node("button", `Accept job #${job.id}`, { type: "button" });
  acceptButton.addEventListener("click", () => accept(job.id));
  const declineButton = node("button", `Decline job #${job.id}`, { type: "button", class: "secondary" });
  declineButton.addEventListener("click", () => decline(job.id));
  actions.append(acceptButton, declineButton);
  item.append(actions);
  return item;
}

function dropOffer(jobId) {
  if (offers.delete(jobId)) renderFeed();
}

/** The feed as the server has it, and this driver's state: on every (re)connect and
 * `feed:reload`, since events sent while the socket was down are gone for good. */
async function reload() {
  const changesThen = availabilityChanges;
  try {
    const [feed, profile] = await Promise.all([api("GET", "/drivers/me/offers"), api("GET", "/drivers/me")]);
    offers = new Map(feed.offers.map((offer) => [offer.job.id, offer]));
    renderFeed();
    showProfile(profile, changesThen);
    // The job ended while the socket was down: fetch how.
    if (current && !profile.current_job) showJob(await api("GET", `/jobs/${current.id}`));
  } catch (error) {
    say(describe(error));
  }
}

// The current job ------------------------------------------------------------------------

/** Shows a Job this driver holds or held, if it is news (see newestKeeper). */
function showJob(job) {
  if (!isNews(job)) return;
  const mine = job.driver?.id === session.user.id;
  if (mine && ACTIVE.has(job.status)) {
    current = job;
    dropOffer(job.id);
  } else if (current?.id === job.id) {
    current = null; // completed, cancelled by the customer, or released by this driver
    const ending = job.status === "pending" ? "released: offered to other drivers" : STATUS_TEXT[job.status];
    $("last-job").textContent = `Job #${job.id}: ${ending}.`;
  }
  renderCurrent();
}

function renderCurrent() {
  plane.mark("pickup", current?.pickup ?? null, current ? `Pickup #${current.id}` : "");
  if (!current) {
    $("current").replaceChildren(node("p", "No current job."));
    $("steps").replaceChildren();
    return;
  }
  const status = node("strong", current.status, { id: "current-status" });
  const line = node("p", `Job #${current.id} for ${current.customer.name}: `);
  line.append(status);
  $("current").replaceChildren(
    line,
    node("p", `Pickup: ${current.pickup.address || formatCoordinates(current.pickup)}`),
    ...(current.notes ? [node("p", `Notes: ${current.notes}`)] : []),
  );
  $("steps").replaceChildren(
    ...(STEPS[current.status] ?? []).map(([step, text]) => {
      const button = node("button", text, { type: "button" });
      if (step === "release") button.className = "secondary";
      button.addEventListener("click", () => takeStep(current.id, step));
      return button;
    }),
  );
}

async function accept(jobId) {
  try {
    showJob(await retrying(() => api("POST", `/jobs/${jobId}/accept`)));
  } catch (error) {
    if (!(error instanceof ApiError)) return say(describe(error)); // unknown: reload tells
    say(error.code === "job_not_available" ? `Job #${jobId} was taken by another driver or is no longer open.` : describe(error));
  }
  dropOffer(jobId);
}

async function decline(jobId) {
  try {
    await retrying(() => api("POST", `/jobs/${jobId}/decline`));
    dropOffer(jobId);
  } catch (error) {
    say(describe(error));
  }
}

async function takeStep(jobId, step) {
  try {
    showJob(await retrying(() => api("POST", `/jobs/${jobId}/${step}`)));
  } catch (error) {
    say(describe(error));
  }
}

// Signing in and out ----------------------------------------------------------------------

async function start(signedIn) {
  session = signedIn;
  isNews = newestKeeper();
  const changesThen = availabilityChanges;
  showProfile(await api("GET", "/drivers/me"), changesThen);
  renderCurrent();
  renderFeed();
  reporting = setInterval(() => $("online").checked && reportPosition(), REPORT_EVERY_MS);
  socket = await connectLive(session.token, {
    reload,
    showState: showLive,
    events: {
      "job:new": (offer) => {
        offers.set(offer.job.id, offer);
        renderFeed();
      },
      // Taken (by this driver or another): it leaves the feed; the winner also gets job:status.
      "job:accepted": ({ job_id: jobId }) => dropOffer(jobId),
      "job:removed": ({ job_id: jobId, reason }) => {
        dropOffer(jobId);
        say(`Job #${jobId} is no longer offered to you: ${reason}.`);
      },
      "job:status": showJob,
      "driver:approved": showStanding,
      "driver:suspended": showStanding,
    },
  });
}

function stop() {
  socket?.disconnect();
  clearInterval(reporting);
  [socket, current, position] = [null, null, null];
  offers = new Map();
  plane.markers.forEach((_, name) => plane.mark(name, null));
  $("position").textContent = "No position reported yet.";
  $("last-job").textContent = "";
  showLive("idle", "Live feed: signed out");
}

$("online").addEventListener("change", async (event) => {
  const online = event.target.checked;
  availabilityChanges += 1;
  try {
    const answer = await api("PUT", "/drivers/me/availability", { online });
    event.target.checked = answer.online;
    say(online ? "You are online." : "You are offline: you are offered nothing.");
    if (online) reportPosition();
  } catch (error) {
    event.target.checked = !online;
    say(describe(error));
  }
});

$("position-form").addEventListener("submit", (event) => {
  event.preventDefault();
  choosePosition({ lat: Number($("lat").value), lng: Number($("lng").value) });
});
plane.onPick(choosePosition);
runApp("driver", { start, stop });
