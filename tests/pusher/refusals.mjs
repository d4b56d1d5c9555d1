// The HTTP API refuses what Pusher refuses: a bad signature (401), an unknown app (404).
import { server, run, env } from "./common.mjs";

async function status(promise) {
  try {
    await promise;
    return 200;
  } catch (e) {
    return e.status ?? `error: ${e.message}`;
  }
}

run(async () => {
  const badSecret = await status(
    server({ secret: "not-the-secret-0123456789abcdef0123" }).trigger("news", "x", {}),
  );
  const unknownApp = await status(server({ appId: "99999" }).trigger("news", "x", {}));
  const good = await status(server().trigger("news", "x", {}));
  return { badSecret, unknownApp, good, appId: env.appId };
});
