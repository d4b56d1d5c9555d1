// An end-to-end encrypted channel (`private-encrypted-`): the app's auth endpoint hands
// pusher-js the channel's shared secret (derived by the `pusher` SDK from its master key),
// the backend triggers with the SDK's encryption, Echo's listener gets the plaintext. The
// gateway only relays: what crosses the socket is the SDK's nonce and ciphertext.
import { randomBytes } from "node:crypto";
import { run } from "./common.mjs";
import { echo, once, startApp, subscribed, watchdog } from "./echo_common.mjs";

watchdog();

run(async () => {
  const encryptionMasterKeyBase64 = randomBytes(32).toString("base64");
  const app = await startApp({
    users: { "alice-token": { user_id: 1, user_info: { name: "Alice" } } },
    sdk: { encryptionMasterKeyBase64 },
  });
  const alice = echo(app, { user: "alice-token" });
  // Every frame as it came off the socket, before pusher-js decrypts it.
  const wire = [];
  alice.connector.pusher.connection.bind("message", (m) => {
    if (m.channel === "private-encrypted-vault") wire.push(m);
  });
  const vault = alice.encryptedPrivate("vault");
  await subscribed(vault);
  const secret = { pin: "4711", note: "héllo" };
  const got = once("the decrypted event", (done) => vault.listen(".unlocked", done));
  await app.api.trigger("private-encrypted-vault", "unlocked", secret);
  const decrypted = await got;
  alice.disconnect();
  app.close();
  const relayed = wire.find((m) => m.event === "unlocked");
  const raw = JSON.stringify(relayed?.data ?? null);
  return {
    decrypted,
    relayedKeys: Object.keys(
      typeof relayed?.data === "string" ? JSON.parse(relayed.data) : (relayed?.data ?? {}),
    ).sort(),
    plaintextOnTheWire: raw.includes("4711") || raw.includes("pin"),
  };
});
