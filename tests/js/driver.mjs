// A driver app's live feed, as the official Socket.IO client speaks it.
// Usage: node driver.mjs URL TOKEN [LAT LNG]
// Prints one JSON line per thing that happens: {"kind": "connected"|"connect_error"|"event"|"ack", ...}.
// Stops on a refused connection, after 60 s, or when stdin closes once connected.
import { io } from "socket.io-client";

const [url, token, lat, lng] = process.argv.slice(2);
const say = (record) => process.stdout.write(JSON.stringify(record) + "\n");

const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });

socket.on("connect", async () => {
  say({ kind: "connected" });
  process.stdin.on("end", stop);
  if (lat !== undefined) {
    const ack = await socket.timeout(10000).emitWithAck("driver:location", {
      lat: Number(lat),
      lng: Number(lng),
    });
    say({ kind: "ack", event: "driver:location", data: ack });
  }
});
socket.on("connect_error", (err) => {
  say({ kind: "connect_error", message: err.message });
  process.exit(0);
});
socket.onAny((event, data) => say({ kind: "event", event, data }));

function stop() {
  socket.close();
  process.exit(0);
}
process.stdin.resume();
setTimeout(stop, 60000);
