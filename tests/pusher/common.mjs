// Shared set-up of the Pusher end-to-end scripts: a pusher-js client (its Node build) and a
// `pusher` server SDK, both pointed at the gateway under test over TLS (the test CA comes in
// NODE_EXTRA_CA_CERTS). Settings come from the environment the Rust test sets.
import PusherClient from "pusher-js";
import PusherServer from "pusher";

export const env = {
  host: process.env.WSGATE_HOST ?? "localhost",
  port: Number(process.env.WSGATE_PORT),
  /** A second gateway of the same cluster, when the test runs two (else the first). */
  port2: Number(process.env.WSGATE_PORT2 || process.env.WSGATE_PORT),
  appId: process.env.PUSHER_APP_ID,
  key: process.env.PUSHER_KEY,
  secret: process.env.PUSHER_SECRET,
};

/** How long any single expected event may take (a busy machine included). */
export const WAIT_MS = 30_000;

export function client(options = {}) {
  return new PusherClient(options.key ?? env.key, {
    cluster: "wsgate",
    wsHost: env.host,
    wssPort: options.port ?? env.port,
    forceTLS: true,
    enabledTransports: ["ws", "wss"],
    disableStats: true,
    ...options,
  });
}

export function server(options = {}) {
  return new PusherServer({
    appId: env.appId,
    key: env.key,
    secret: env.secret,
    host: env.host,
    port: String(env.port),
    useTLS: true,
    ...options,
  });
}

/** Resolves with the first `event` of `emitter` (a channel or the connection), or rejects after WAIT_MS. */
export function next(emitter, event, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
    const handler = (data) => {
      clearTimeout(timer);
      emitter.unbind(event, handler);
      resolve(data);
    };
    emitter.bind(event, handler);
  });
}

/** Runs `main`, prints its result as one JSON line and exits 0, or prints the error and exits 1. */
export function run(main) {
  main().then(
    (result) => {
      console.log(JSON.stringify(result ?? {}));
      process.exit(0);
    },
    (err) => {
      console.error(err?.stack ?? String(err));
      if (err?.status) console.error(`status ${err.status}: ${err.body}`);
      process.exit(1);
    },
  );
}

/**
 * A pusher-js client whose channel auth comes from the `pusher` SDK (what an app's
 * /broadcasting/auth endpoint does), as `user` on presence channels; `badAuth` signs with
 * another secret.
 */
export function authedClient({ user, badAuth = false, port } = {}) {
  const signer = badAuth ? server({ secret: "another-secret-0123456789abcdef0123456" }) : server();
  return client({
    port,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          callback(null, signer.authorizeChannel(socketId, channelName, user));
        } catch (e) {
          callback(e, null);
        }
      },
    },
  });
}

/** Subscribes and waits for the subscription to succeed; returns the channel. */
export async function subscribed(pusher, name) {
  const channel = pusher.subscribe(name);
  await next(channel, "pusher:subscription_succeeded", `subscription to ${name}`);
  return channel;
}
