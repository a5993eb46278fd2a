// What the two apps share about a Job (the contract's Job object).

// A job's life: pending → accepted → arrived → in_progress → completed, or it ends
// cancelled or expired. A release by the driver takes it back to pending, in a new round of
// offers with a later `expires_at`.
const STEP = { pending: 0, accepted: 1, arrived: 2, in_progress: 3, completed: 4, cancelled: 4, expired: 4 };
export const ACTIVE = new Set(["pending", "accepted", "arrived", "in_progress"]);

export const STATUS_TEXT = {
  pending: "pending: looking for a driver",
  accepted: "accepted: the driver is on the way",
  arrived: "arrived: the driver is at the pickup",
  in_progress: "in_progress: the work has started",
  completed: "completed",
  cancelled: "cancelled",
  expired: "expired: no driver took it",
};

/**
 * Whether `incoming` is news about the job `shown` shows. The answer to a request and the
 * `job:status` event it causes arrive in either order, and an event re-sent late (the server
 * re-drives what it could not announce in time) can come after newer ones; so the app keeps
 * the newest: a later round of offers (a later `expires_at`) is newer, and within a round the
 * job only moves forward.
 */
export function isNewer(shown, incoming) {
  if (!shown) return true;
  const round = Date.parse(incoming.expires_at) - Date.parse(shown.expires_at);
  return round > 0 || (round === 0 && STEP[incoming.status] >= STEP[shown.status]);
}

/** A function that says whether a Job is news, remembering the newest of each job it saw. */
export function newestKeeper() {
  const newest = new Map();
  return (job) => {
    if (!isNewer(newest.get(job.id), job)) return false;
    newest.set(job.id, job);
    return true;
  };
}

/** "14:05:09", in the reader's time zone. */
export function clock(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** An element `tag` with `text`, and attributes. */
export function node(tag, text = "", attributes = {}) {
  const made = document.createElement(tag);
  made.textContent = text;
  for (const [key, value] of Object.entries(attributes)) made.setAttribute(key, value);
  return made;
}
