// A pusher-js client subscribes to a public channel; the `pusher` SDK triggers events to it
// through the HTTP API. One event excludes the client's own socket_id and must not arrive.
import { client, server, next, run } from "./common.mjs";

run(async () => {
  const pusher = client();
  const connected = next(pusher.connection, "connected");
  const channel = pusher.subscribe("news");
  await next(channel, "pusher:subscription_succeeded");
  await connected;
  const socketId = pusher.connection.socket_id;
  const api = server();
  const received = [];
  channel.bind("update", (data) => received.push(data));
  const first = next(channel, "update", "the first event");
  await api.trigger("news", "update", { n: 1, text: "héllo" });
  await first;
  // Excluded, then not: the second must never arrive, the third must.
  await api.trigger("news", "update", { n: 2 }, { socket_id: socketId });
  const third = next(channel, "update", "the third event");
  await api.trigger(["news", "other"], "update", { n: 3 });
  await third;
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
  return { socketId, received, info, list, empty };
});
