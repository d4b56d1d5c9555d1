// Laravel Echo (over pusher-js's Node build) against the gateway, and a tiny stand-in for the
// Laravel app behind it: `POST /broadcasting/auth` and `POST /broadcasting/user-auth` signing
// with the `pusher` SDK as Laravel's broadcaster does, and `POST /messages`, which triggers an event the way a controller calling
// `broadcast(...)->toOthers()` does: with the `X-Socket-ID` the client sent as `socket_id`.
import http from "node:http";
import Echo from "laravel-echo";
import PusherClient from "pusher-js";
import { env, server, WAIT_MS } from "./common.mjs";

/** Whole-script bound: a hang fails the test instead of blocking it. */
export function watchdog(ms = 100_000) {
  setTimeout(() => {
    console.error(`script still running after ${ms} ms`);
    process.exit(2);
  }, ms).unref();
}

/** Resolves with the first value `register(callback)` calls back with, or rejects after WAIT_MS. */
export function once(what, register) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => (text += chunk));
    req.on("end", () => resolve(text));
    req.on("error", reject);
  });
}

/**
 * Starts the app on a free loopback port. `users` maps a bearer token to a presence member
 * (`{ user_id, user_info }`); `forbidden(user, channel)` says which subscriptions the app
 * refuses (403); `sdk` are extra options of its `pusher` SDK (an encryption master key).
 * Resolves `{ url, api, close }`; `api` is the app's SDK.
 */
export async function startApp({ users = {}, forbidden = () => false, sdk = {} } = {}) {
  const api = server(sdk);
  const httpServer = http.createServer(async (req, res) => {
    const reply = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    try {
      const body = await readBody(req);
      if (req.method === "POST" && req.url === "/broadcasting/auth") {
        const form = new URLSearchParams(body);
        const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
        const user = users[token];
        const channel = form.get("channel_name") ?? "";
        if (!user || forbidden(user, channel)) return reply(403, { message: "Forbidden" });
        const presence = channel.startsWith("presence-") ? user : undefined;
        return reply(200, api.authorizeChannel(form.get("socket_id") ?? "", channel, presence));
      }
      if (req.method === "POST" && req.url === "/broadcasting/user-auth") {
        const form = new URLSearchParams(body);
        const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
        const user = users[token];
        if (!user) return reply(403, { message: "Forbidden" });
        const userData = { id: String(user.user_id), user_info: user.user_info };
        return reply(200, api.authenticateUser(form.get("socket_id") ?? "", userData));
      }
      if (req.method === "POST" && req.url === "/messages") {
        const { channel, event, data } = JSON.parse(body);
        const socketId = req.headers["x-socket-id"];
        await api.trigger(channel, event, data, socketId ? { socket_id: socketId } : {});
        return reply(201, {});
      }
      reply(404, {});
    } catch (e) {
      reply(500, { message: String(e) });
    }
  });
  await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${httpServer.address().port}`;
  return { url, api, close: () => httpServer.close() };
}

/**
 * An Echo instance as a Laravel page configures it (`broadcaster: 'pusher'`, host and port of
 * the gateway, forceTLS), authenticating to `app` as bearer `user`. `auth` is built per
 * instance: Echo's default `auth.headers` object is shared by every instance in a process.
 */
export function echo(app, { user, port } = {}) {
  const e = new Echo({
    broadcaster: "pusher",
    Pusher: PusherClient,
    key: env.key,
    cluster: "wsgate",
    wsHost: env.host,
    wssPort: port ?? env.port,
    forceTLS: true,
    enabledTransports: ["ws", "wss"],
    disableStats: true,
    authEndpoint: `${app.url}/broadcasting/auth`,
    auth: { headers: user ? { Authorization: `Bearer ${user}` } : {} },
    userAuthentication: {
      endpoint: `${app.url}/broadcasting/user-auth`,
      transport: "ajax",
      headers: user ? { Authorization: `Bearer ${user}` } : {},
    },
  });
  e.connected = once("connection", (done) => e.connector.pusher.connection.bind("connected", done));
  return e;
}

/** Echo's `subscribed` callback as a promise: the subscription to `channel` succeeded. */
export function subscribed(channel, what) {
  return once(what ?? `subscription to ${channel.name}`, (done) => channel.subscribed(done));
}

/** The app's `/messages` with Echo's socket id in X-Socket-ID (Laravel's `toOthers()`). */
export async function postMessage(app, e, message) {
  const res = await fetch(`${app.url}/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-socket-id": e.socketId() },
    body: JSON.stringify(message),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  if (res.status !== 201) throw new Error(`/messages answered ${res.status}: ${await res.text()}`);
}
