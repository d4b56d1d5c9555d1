// Private and presence channels with channel auth signed by the `pusher` SDK: a refused
// signature, whispers (client events) between members, and presence with two tabs of one
// user counted once. With WSGATE_PORT2 set, Bob and Alice's second tab are on a second node
// of the cluster.
import { authedClient, subscribed, next, server, run, env } from "./common.mjs";

const alice = { user_id: 1, user_info: { name: "Alice" } };
const bob = { user_id: "bob", user_info: { name: "Bob" } };

run(async () => {
  // A signature made with another secret: pusher:subscription_error, AuthError 401.
  const intruder = authedClient({ badAuth: true });
  const refusedChannel = intruder.subscribe("private-chat");
  const refused = await next(refusedChannel, "pusher:subscription_error", "the refusal");
  intruder.disconnect();

  // Whispers on a private channel: delivered to the other member, sanitized, not echoed.
  const a = authedClient({ user: alice });
  const b = authedClient({ user: bob, port: env.port2 });
  const pa = await subscribed(a, "private-chat");
  const pb = await subscribed(b, "private-chat");
  const echoed = [];
  pa.bind("client-typing", (d) => echoed.push(d));
  const whisper = next(pb, "client-typing", "the whisper");
  pa.trigger("client-typing", { text: "hi\u202e\u0007 there" });
  const whispered = await whisper;

  // Presence: Bob is there first; Alice opens two tabs: one member_added, one member_removed.
  const bobPresence = await subscribed(b, "presence-room");
  const added = [];
  const removed = [];
  bobPresence.bind("pusher:member_added", (m) => added.push(m));
  bobPresence.bind("pusher:member_removed", (m) => removed.push(m));
  const firstAdded = next(bobPresence, "pusher:member_added", "member_added");
  const tab1 = await subscribed(a, "presence-room");
  const member = await firstAdded;
  const a2 = authedClient({ user: alice, port: env.port2 });
  const tab2 = await subscribed(a2, "presence-room");
  const membersSeenByTab2 = { count: tab2.members.count, me: tab2.members.me };
  const ids = [];
  tab2.members.each((m) => ids.push(m.id));
  // A whisper from the second tab after its join: any member_added it caused came first.
  const presenceWhisper = new Promise((resolve) =>
    bobPresence.bind("client-hello", (data, metadata) => resolve({ data, metadata })),
  );
  tab2.trigger("client-hello", { from: "tab2" });
  const hello = await presenceWhisper;
  const helloUser = hello.metadata?.user_id;

  // The first tab goes; the second stays: no member_removed. Then the second goes: one.
  a.disconnect();
  const lastRemoved = next(bobPresence, "pusher:member_removed", "member_removed");
  a2.disconnect();
  const gone = await lastRemoved;
  // A server event after the removal: anything the first tab's departure caused came before.
  const marker = next(bobPresence, "marker", "the marker event");
  await server().trigger("presence-room", "marker", {});
  await marker;
  b.disconnect();
  return {
    refused,
    whispered,
    echoed,
    member,
    membersSeenByTab2,
    ids: ids.sort(),
    helloUser,
    gone,
    added: added.length,
    removed: removed.length,
  };
});
