// What both apps' pages do the same way: find elements, show a message, and switch between
// the account form (signed out) and the app (signed in).
import { ApiError } from "./api.js";
import { accountForm, forgetSession, savedSession } from "./session.js";

export const $ = (id) => document.getElementById(id);

/** Shows `text` in the page's message line (a polite live region for screen readers). */
export function say(text) {
  $("message").textContent = text;
}

/**
 * Runs the app of `role`: `start(session)` when signed in (from the form, or the session
 * this tab kept), `stop()` on sign-out. A token the server no longer takes (401) signs out.
 */
export function runApp(role, { start, stop }) {
  async function signIn(session) {
    $("account").hidden = true;
    $("app").hidden = false;
    $("who").textContent = `Signed in as ${session.user.name} (${session.user.email}).`;
    say("");
    try {
      await start(session);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) throw error;
      signOut();
      say("Your session has ended; sign in again.");
    }
  }

  function signOut() {
    stop();
    forgetSession(role);
    $("app").hidden = true;
    $("account").hidden = false;
  }

  accountForm($("account-form"), role, signIn, say);
  $("sign-out").addEventListener("click", signOut);
  const saved = savedSession(role);
  if (saved) signIn(saved);
}
