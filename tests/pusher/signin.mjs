// Signed-in users: two tabs of Alice and one of Bob sign in (user auth signed by the `pusher`
// SDK); the SDK's sendToUser reaches both of Alice's tabs and not Bob; Bob's socket asking for
// Alice's own channel is refused. With WSGATE_PORT2 set, Alice's second tab is on a second
// node of the cluster.
import { server, next, run, env } from "./common.mjs";
import { userClient, signedIn, rawEvent } from "./users.mjs";

run(async () => {
  const tab1 = userClient("alice");
  const tab2 = userClient("alice", { port: env.port2 });
  const bob = userClient("bob");
  const channels = await Promise.all([signedIn(tab1), signedIn(tab2), signedIn(bob)]);
  const got = { tab1: [], tab2: [], bob: [] };
  tab1.user.bind("note", (d) => got.tab1.push(d));
  tab2.user.bind("note", (d) => got.tab2.push(d));
  bob.user.bind("note", (d) => got.bob.push(d));

  const api = server();
  const toAlice = [next(tab1.user, "note", "tab 1's note"), next(tab2.user, "note", "tab 2's note")];
  await api.sendToUser("alice", "note", { text: "for alice" });
  await Promise.all(toAlice);
  // Bob's own note comes after Alice's: had hers reached him, it would have come first.
  const toBob = next(bob.user, "note", "Bob's note");
  await api.sendToUser("bob", "note", { text: "for bob" });
  await toBob;

  // Bob's socket asks for Alice's channel itself (pusher-js would not build that channel).
  const refusal = rawEvent(bob, "pusher:subscription_error");
  bob.send_event("pusher:subscribe", { channel: "#server-to-user-alice", auth: "" });
  const refused = await refusal;
  const stillConnected = bob.connection.state;

  for (const p of [tab1, tab2, bob]) p.disconnect();
  return { channels: channels.map((c) => c.name), got, refused, stillConnected };
});
