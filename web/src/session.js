// Signing up and in: POST /auth/register or /auth/login answers `{user, token}`; every
// later request carries the token (REST: Authorization header; Socket.IO: `auth: {token}`).
// The session is kept in this tab's sessionStorage, per role, so a reload keeps it and the
// driver and customer pages can be open side by side in one browser.
import { call, describe } from "./api.js";

const storageKey = (role) => `dispatch.session.${role}`;

export function savedSession(role) {
  const saved = sessionStorage.getItem(storageKey(role));
  return saved ? JSON.parse(saved) : null;
}

export function forgetSession(role) {
  sessionStorage.removeItem(storageKey(role));
}

/**
 * Wires the page's account form: "Create account" registers a `role` account, "Sign in"
 * signs one in; `onSignedIn({user, token})` runs with the session. `say` shows a message.
 */
export function accountForm(form, role, onSignedIn, say) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    const registering = event.submitter?.value === "register";
    const body = { email: fields.get("email"), password: fields.get("password") };
    if (registering) Object.assign(body, { role, name: fields.get("name") });
    try {
      const session = await call("POST", registering ? "/auth/register" : "/auth/login", { body });
      if (session.user.role !== role) {
        say(`That account's role is ${session.user.role}; this page is the ${role}'s app.`);
        return;
      }
      sessionStorage.setItem(storageKey(role), JSON.stringify(session));
      form.reset();
      onSignedIn(session);
    } catch (error) {
      say(describe(error));
    }
  });
}
