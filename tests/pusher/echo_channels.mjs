// Laravel Echo against the gateway as a Laravel page uses it: a public channel receiving a
// backend event, a private channel the app authorizes and one it refuses (403), a whisper on
// a public channel refused by the gateway (pusher:error 4009), and `toOthers()`: an event the
// app triggers with the sender's X-Socket-ID reaches the others, not the sender.
import { next, run } from "./common.mjs";
import { echo, once, postMessage, startApp, subscribed, watchdog } from "./echo_common.mjs";

watchdog();

run(async () => {
  const app = await startApp({
    users: {
      "alice-token": { user_id: 1, user_info: { name: "Alice" } },
      "bob-token": { user_id: 2, user_info: { name: "Bob" } },
    },
    forbidden: (user, channel) => channel === "private-admin" && user.user_id !== 99,
  });
  const alice = echo(app, { user: "alice-token" });
  const bob = echo(app, { user: "bob-token" });
  await Promise.all([alice.connected, bob.connected]);

  // Public: `listen('OrderShipped')` is the event `App\Events\OrderShipped` (Echo's namespace),
  // as Laravel's broadcaster names it.
  const news = alice.channel("news");
  await subscribed(news);
  const shipped = once("OrderShipped", (done) => news.listen("OrderShipped", done));
  await app.api.trigger("news", "App\\Events\\OrderShipped", { order: 7 });
  const publicEvent = await shipped;

  // Private, authorized by the app: a backend event arrives. `.listen('.status')` is a
  // `broadcastAs` name, without the namespace.
  const orders = alice.private("orders.1");
  await subscribed(orders);
  const status = once("status", (done) => orders.listen(".status", done));
  await app.api.trigger("private-orders.1", "status", { state: "packed" });
  const privateEvent = await status;

  // Private, refused by the app: Echo's error callback gets pusher-js's AuthError with 403.
  const refused = await once("the refusal", (done) => alice.private("admin").error(done));

  // A whisper on a public channel: the gateway answers pusher:error 4009 and delivers nothing.
  const bobNews = bob.channel("news");
  await subscribed(bobNews);
  const whispersOnNews = [];
  bobNews.listenForWhisper("typing", (d) => whispersOnNews.push(d));
  const refusal = next(alice.connector.pusher.connection, "error", "the pusher:error");
  alice.connector.pusher.channel("news").trigger("client-typing", { name: "Alice" });
  const whisperError = await refusal;

  // toOthers: both in private-chat; Alice posts through the app with her socket id.
  const aliceChat = alice.private("chat");
  const bobChat = bob.private("chat");
  await Promise.all([subscribed(aliceChat), subscribed(bobChat)]);
  const aliceGot = [];
  aliceChat.listen("MessageSent", (d) => aliceGot.push(d));
  const bobGets = once("MessageSent", (done) => bobChat.listen("MessageSent", done));
  await postMessage(app, alice, {
    channel: "private-chat",
    event: "App\\Events\\MessageSent",
    data: { text: "hello" },
  });
  const bobGot = await bobGets;

  // A marker to both, after everything above: whatever was going to reach Alice (her own
  // message) or Bob (the public whisper) came before it.
  const markers = [aliceChat, bobChat, bobNews].map((ch) =>
    once(`the marker on ${ch.name}`, (done) => ch.listen(".marker", done)),
  );
  await app.api.trigger(["private-chat", "news"], "marker", {});
  await Promise.all(markers);

  alice.disconnect();
  bob.disconnect();
  app.close();
  return {
    publicEvent,
    privateEvent,
    refused,
    whisperError,
    whispersOnNews,
    bobGot,
    aliceGot,
    socketIds: [alice.socketId(), bob.socketId()],
  };
});
