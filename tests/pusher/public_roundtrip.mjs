// Two pusher-js clients subscribe to a public channel (the second on the cluster's other
// node when the test runs two); the `pusher` SDK triggers events to them through the HTTP API
// of the first. One event excludes the first client's socket_id: it must not reach that
// client, and must reach the other.
import { client, server, next, env, run } from "./common.mjs";

run(async () => {
  const pusher = client();
  const connected = next(pusher.connection, "connected");
  const channel = pusher.subscribe("news");
  await next(channel, "pusher:subscription_succeeded");
  await connected;
  const socketId = pusher.connection.socket_id;
  const other = client({ wssPort: env.port2 });
  const otherChannel = other.subscribe("news");
  await next(otherChannel, "pusher:subscription_succeeded");
  const api = server();
  const received = [];
  const receivedByOther = [];
  channel.bind("update", (data) => received.push(data));
  otherChannel.bind("update", (data) => receivedByOther.push(data));
  const otherThird = new Promise((resolve) =>
    otherChannel.bind("update", (data) => data.n === 3 && resolve()),
  );
  const first = next(channel, "update", "the first event");
  await api.trigger("news", "update", { n: 1, text: "héllo" });
  await first;
  // Excluded, then not: the second must never arrive, the third must.
  await api.trigger("news", "update", { n: 2 }, { socket_id: socketId });
  const third = next(channel, "update", "the third event");
  await api.trigger(["news", "other"], "update", { n: 3 });
  await third;
  await otherThird;
  const batch = next(channel, "batched", "the batch event");
  await api.triggerBatch([{ channel: "news", name: "batched", data: { n: 4 } }]);
  await batch;
  // Channel information through the HTTP API.
  const info = await (
    await api.get({ path: "/channels/news", params: { info: "subscription_count" } })
  ).json();
  const list = await (await api.get({ path: "/channels" })).json();
  const empty = await (await api.get({ path: "/channels/nobody-here" })).json();
  pusher.disconnect();
  other.disconnect();
  return { socketId, received, receivedByOther, info, list, empty };
});
