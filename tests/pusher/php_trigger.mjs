// examples/pusher-php/trigger.php (PHP CLI, no Packagist) triggers events a pusher-js
// subscriber receives; with the subscriber's socket_id it is left out (toOthers); signed
// with another secret the gateway refuses it (401). PHP_BIN names the php to run.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { client, env, next, run, subscribed, WAIT_MS } from "./common.mjs";

const script = fileURLToPath(new URL("../../examples/pusher-php/trigger.php", import.meta.url));

function php(args, secret = env.secret) {
  return new Promise((resolve) => {
    execFile(
      process.env.PHP_BIN || "php",
      [script, ...args],
      {
        timeout: WAIT_MS,
        env: {
          ...process.env,
          PUSHER_APP_ID: env.appId,
          PUSHER_APP_KEY: env.key,
          PUSHER_APP_SECRET: secret,
          PUSHER_HOST: env.host,
          PUSHER_PORT: String(env.port),
          PUSHER_CA: process.env.NODE_EXTRA_CA_CERTS,
        },
      },
      (error, stdout, stderr) =>
        resolve({ code: error ? (error.code ?? String(error)) : 0, stdout: stdout.trim(), stderr }),
    );
  });
}

run(async () => {
  const pusher = client();
  const channel = await subscribed(pusher, "orders");
  const socketId = pusher.connection.socket_id;
  const received = [];
  channel.bind("App\\Events\\OrderShipped", (d) => received.push(d));

  const first = next(channel, "App\\Events\\OrderShipped", "the first event");
  const sent = await php(["orders", "App\\Events\\OrderShipped", '{"id":42,"note":"héllo"}']);
  await first;
  // Left out by socket_id; then one more that must arrive (after the excluded one).
  const excluded = await php(["orders", "App\\Events\\OrderShipped", '{"id":43}', socketId]);
  const last = next(channel, "App\\Events\\OrderShipped", "the last event");
  const again = await php(["orders", "App\\Events\\OrderShipped", '{"id":44}']);
  await last;
  const refused = await php(
    ["orders", "App\\Events\\OrderShipped", '{"id":45}'],
    "not-the-secret-0123456789abcdef0123",
  );
  pusher.disconnect();
  return { sent, excluded, again, refused, received };
});
