// User sign-in through the app's `/broadcasting/user-auth`, as a Laravel page does it
// (pusher-js's `signin()` under Echo), and the backend's `sendToUser`: Alice's two tabs get her
// notes, Bob gets only his, and his socket is refused Alice's own channel. With WSGATE_PORT2
// set, Alice's second tab is on another node.
import { env, next, run } from "./common.mjs";
import { echo, startApp, watchdog } from "./echo_common.mjs";
import { rawEvent } from "./users.mjs";

watchdog();

/** Signs the Echo's socket in and resolves with its `#server-to-user-<id>` channel's name. */
async function signIn(e) {
  await e.connected;
  const pusher = e.connector.pusher;
  pusher.signin();
  await pusher.user.signinDonePromise;
  const channel = pusher.user.serverToUserChannel;
  if (!channel) throw new Error("the sign-in failed");
  if (!channel.subscribed) await next(channel, "pusher:subscription_succeeded", channel.name);
  return channel.name;
}

run(async () => {
  const app = await startApp({
    users: {
      "alice-token": { user_id: "alice", user_info: { name: "Alice" } },
      "bob-token": { user_id: "bob", user_info: { name: "Bob" } },
    },
  });
  const tab1 = echo(app, { user: "alice-token" });
  const tab2 = echo(app, { user: "alice-token", port: env.port2 });
  const bob = echo(app, { user: "bob-token" });
  const channels = await Promise.all([signIn(tab1), signIn(tab2), signIn(bob)]);
  const user = (e) => e.connector.pusher.user;
  const got = { tab1: [], tab2: [], bob: [] };
  user(tab1).bind("note", (d) => got.tab1.push(d));
  user(tab2).bind("note", (d) => got.tab2.push(d));
  user(bob).bind("note", (d) => got.bob.push(d));

  const toAlice = [next(user(tab1), "note", "tab 1's note"), next(user(tab2), "note", "tab 2's note")];
  await app.api.sendToUser("alice", "note", { text: "for alice" });
  await Promise.all(toAlice);
  // Bob's own note comes after Alice's: had hers reached him, it would have come first.
  const toBob = next(user(bob), "note", "Bob's note");
  await app.api.sendToUser("bob", "note", { text: "for bob" });
  await toBob;

  // Bob's socket asks for Alice's channel itself (pusher-js would not build that channel).
  const bobPusher = bob.connector.pusher;
  const refusal = rawEvent(bobPusher, "pusher:subscription_error");
  bobPusher.send_event("pusher:subscribe", { channel: "#server-to-user-alice", auth: "" });
  const refused = await refusal;
  const stillConnected = bobPusher.connection.state;

  for (const e of [tab1, tab2, bob]) e.disconnect();
  app.close();
  return { channels, got, refused, stillConnected };
});
