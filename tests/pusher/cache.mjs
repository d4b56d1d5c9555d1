// Cache channels: the first subscriber of an empty one gets pusher:cache_miss; events
// triggered through the `pusher` SDK are kept, and a later subscriber gets the last one right
// after its subscription succeeds (and no cache_miss).
import { client, server, next, run } from "./common.mjs";

/** Subscribes to `name`, recording what arrives on it from the start. */
function watch(pusher, name) {
  const channel = pusher.subscribe(name);
  const seen = [];
  channel.bind_global((event, data) => {
    if (event === "pusher:subscription_succeeded") seen.push("subscribed");
    else if (event === "pusher:cache_miss") seen.push("cache_miss");
    else if (!event.startsWith("pusher")) seen.push({ event, data });
  });
  return { channel, seen };
}

run(async () => {
  const api = server();
  const first = client();
  const a = watch(first, "cache-scores");
  await next(a.channel, "pusher:cache_miss", "the cache miss");
  const live = next(a.channel, "score", "the live events");
  await api.trigger("cache-scores", "score", { n: 1 });
  await live;
  const second = next(a.channel, "score", "the second event");
  await api.trigger("cache-scores", "score", { n: 2 });
  await second;

  const late = client();
  const b = watch(late, "cache-scores");
  await next(b.channel, "score", "the cached event");
  // A live event after the cached one: anything the subscription caused came before it.
  const marker = next(b.channel, "marker", "the marker");
  await api.trigger("cache-scores", "marker", {});
  await marker;
  first.disconnect();
  late.disconnect();
  return { first: a.seen, late: b.seen };
});
