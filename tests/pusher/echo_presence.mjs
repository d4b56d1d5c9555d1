// Laravel Echo's presence API against the gateway: `here`, `joining`, `leaving`, with Bob
// in two tabs (two connections of one user: one `joining`, one `leaving`), and `whisper`
// received by the other members, never by the sender.
import { run } from "./common.mjs";
import { echo, once, startApp, watchdog } from "./echo_common.mjs";

watchdog();

run(async () => {
  const app = await startApp({
    users: {
      "alice-token": { user_id: 1, user_info: { id: 1, name: "Alice" } },
      "bob-token": { user_id: "bob", user_info: { id: "bob", name: "Bob" } },
    },
  });
  const alice = echo(app, { user: "alice-token" });
  const joining = [];
  const leaving = [];
  const aliceRoom = alice.join("room.1");
  const aliceHere = once("Alice's here", (done) => aliceRoom.here(done));
  aliceRoom.joining((m) => joining.push(m)).leaving((m) => leaving.push(m));
  const hereAlone = await aliceHere;

  // Bob's first tab: Alice sees him join; his `here` has both.
  const bobJoined = once("joining", (done) => aliceRoom.joining(done));
  const bob1 = echo(app, { user: "bob-token" });
  const bobRoom1 = bob1.join("room.1");
  const hereBob1 = await once("Bob's here", (done) => bobRoom1.here(done));
  const joined = await bobJoined;

  // Bob's second tab: no second `joining` for Alice; this tab's `here` has both too.
  const bob2 = echo(app, { user: "bob-token" });
  const bobRoom2 = bob2.join("room.1");
  const hereBob2 = await once("Bob's second here", (done) => bobRoom2.here(done));

  // Alice whispers: both of Bob's tabs get it; Alice does not.
  const aliceWhispers = [];
  aliceRoom.listenForWhisper("typing", (d) => aliceWhispers.push(d));
  const toBob1 = once("the whisper in tab 1", (done) => bobRoom1.listenForWhisper("typing", done));
  const toBob2 = once("the whisper in tab 2", (done) => bobRoom2.listenForWhisper("typing", done));
  aliceRoom.whisper("typing", { name: "Alice", typing: true });
  const whispered = await Promise.all([toBob1, toBob2]);
  // Bob whispers back from tab 2: Alice gets it with his user id as the sender.
  const back = once("Bob's whisper", (done) =>
    alice.connector.pusher
      .channel("presence-room.1")
      .bind("client-reply", (data, meta) => done({ data, meta })),
  );
  bobRoom2.whisper("reply", { text: "hi" });
  const reply = await back;

  // Tab 1 closes: Bob is still there (tab 2). Tab 2 closes: Alice sees him leave, once.
  bob1.disconnect();
  const bobLeft = once("leaving", (done) => aliceRoom.leaving(done));
  bob2.disconnect();
  const left = await bobLeft;
  // A backend event after the last leave: anything the first tab's departure or Alice's own
  // whisper caused came before it.
  const marker = once("the marker", (done) => aliceRoom.listen(".marker", done));
  await app.api.trigger("presence-room.1", "marker", {});
  await marker;
  alice.disconnect();
  app.close();
  return {
    hereAlone,
    hereBob1: hereBob1.map((m) => m.id).sort(),
    hereBob2: hereBob2.map((m) => m.id).sort(),
    joined,
    joining,
    left,
    leaving,
    whispered,
    aliceWhispers,
    reply,
  };
});
