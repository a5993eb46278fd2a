// The live feed: Socket.IO (socket.io-client, the official client) on the gateway, a
// separate process on its own port; /try/config.json says where it is.
import { io } from "socket.io-client";

const STATES = {
  connecting: "Live feed: connecting…",
  connected: "Live feed: connected",
  reconnecting: "Live feed: connection lost, reconnecting…",
  refused: "Live feed: refused; sign in again",
  closed: "Live feed: closed by the server",
};

async function socketUrl() {
  const response = await fetch("/try/config.json");
  return (await response.json()).socket_url;
}

/**
 * Connects with the session's token and calls `events[name](payload)` for each server
 * event. Pub/sub keeps nothing: whatever happened while the socket was down is lost, so
 * `reload()` runs on every connect, the first and every reconnect, and whenever the gateway
 * sends `feed:reload` (it does after its own Redis subscription was lost and is back): the
 * page then fetches its state again over REST. `showState(state, text)` shows the
 * connection's state, so nobody trusts a feed that is not live.
 */
export async function connectLive(token, { events, reload, showState }) {
  showState("connecting", STATES.connecting);
  // WebSocket only, like the iOS client: no long-polling, so no sticky sessions are needed
  // behind a load balancer.
  const socket = io(await socketUrl(), { auth: { token }, transports: ["websocket"] });
  socket.on("connect", () => {
    showState("connected", STATES.connected);
    reload();
  });
  socket.on("feed:reload", reload);
  socket.on("disconnect", (reason) => {
    // "io server disconnect": the server closed this socket, and the client does not
    // reconnect by itself. Anything else (network, gateway restart): it reconnects.
    const closed = reason === "io server disconnect";
    showState(closed ? "closed" : "reconnecting", closed ? STATES.closed : STATES.reconnecting);
  });
  socket.on("connect_error", () => {
    // Refused at connect (a bad or expired token) leaves the socket inactive; a gateway
    // that cannot be reached is retried with backoff.
    const refused = !socket.active;
    showState(refused ? "refused" : "reconnecting", STATES[refused ? "refused" : "reconnecting"]);
  });
  for (const [name, handler] of Object.entries(events)) socket.on(name, handler);
  return socket;
}

/** `show(state, text)` for a status element: its text, and `data-state` for styling. */
export function stateShower(element) {
  return (state, text) => {
    element.dataset.state = state;
    element.textContent = text;
  };
}
