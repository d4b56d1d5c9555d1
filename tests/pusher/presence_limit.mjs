// max_presence_members (2 in this test's config): Alice and Bob fill presence-full; Carol's
// subscription is refused with LimitReached and her socket stays connected; a second tab of
// Alice is still let in. Then the HTTP API lists the channel's users and answers a trigger's
// `info`.
import { authedClient, subscribed, next, server, run } from "./common.mjs";

run(async () => {
  const alice = authedClient({ user: { user_id: 1, user_info: { name: "Alice" } } });
  const bob = authedClient({ user: { user_id: "bob", user_info: { name: "Bob" } } });
  await subscribed(alice, "presence-full");
  await subscribed(bob, "presence-full");

  const carol = authedClient({ user: { user_id: "carol" } });
  const refusedChannel = carol.subscribe("presence-full");
  const refused = await next(refusedChannel, "pusher:subscription_error", "Carol's refusal");
  // Still connected: a channel with room in it works.
  await subscribed(carol, "presence-other");
  const carolState = carol.connection.state;

  const aliceTab2 = authedClient({ user: { user_id: 1, user_info: { name: "Alice" } } });
  const tab2 = await subscribed(aliceTab2, "presence-full");
  const count = tab2.members.count;

  const api = server();
  const users = await (await api.get({ path: "/channels/presence-full/users" })).json();
  let notPresence;
  try {
    await api.get({ path: "/channels/public-one/users" });
  } catch (e) {
    notPresence = e.status;
  }
  // Trigger with info: the channels' counts after the publish (users, then sockets).
  const triggered = await (
    await api.trigger(["presence-full", "public-one"], "ping", {}, {
      info: "user_count,subscription_count",
    })
  ).json();
  const batched = await (
    await api.triggerBatch([
      { channel: "presence-full", name: "ping", data: {}, info: "user_count" },
      { channel: "presence-other", name: "ping", data: {} },
    ])
  ).json();
  for (const p of [alice, bob, carol, aliceTab2]) p.disconnect();
  return { refused, carolState, count, users, notPresence, triggered, batched };
});
