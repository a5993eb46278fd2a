// REST under /api/v1, as the contract describes it. The pages are served by the API process,
// so these are same-origin requests: no CORS, and the token goes in the Authorization header
// (never a cookie).

/** The contract's one error body, `{error: {code, message, fields?}}`, as an exception. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.fields = error.fields || {};
  }

  /** The message, with the reason for each field a 422 names. */
  explain() {
    const fields = Object.entries(this.fields).map(([field, why]) => `${field} ${why}`);
    return fields.length ? `${this.message} (${fields.join("; ")})` : this.message;
  }
}

/** One request; answers the parsed body (null for a 204), or throws an ApiError. */
export async function call(method, path, { token, body, headers = {} } = {}) {
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers: {
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, answer?.error ?? {
      code: "unexpected_answer",
      message: `The server answered ${response.status}.`,
    });
  }
  return answer;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Sends a request again when its answer is lost: the network failed, or the server (or a
 * proxy) answered 5xx, so the app cannot know whether it was applied. That is safe for what
 * these pages send this way: a driver repeating the step they just made (accept, arrive,
 * start, complete, release) gets 200 and the same Job, and nothing is announced twice; a
 * booking repeated with the same Idempotency-Key returns the first job. A 4xx is an answer
 * (the job was taken, the step is out of order) and is never retried.
 */
export async function retrying(send, attempts = 3) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await send();
    } catch (error) {
      const lost = !(error instanceof ApiError) || error.status >= 500;
      if (!lost || attempt === attempts) throw error;
      await sleep(500 * 2 ** (attempt - 1));
    }
  }
}

/** A message for the person, from whatever a request threw. */
export function describe(error) {
  if (error instanceof ApiError) return error.explain();
  return "The server cannot be reached. Check the connection and try again.";
}
