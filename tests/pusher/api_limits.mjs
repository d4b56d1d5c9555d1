// The HTTP API's refusals (CONTRACT §10) with requests signed by hand: a stale or future
// timestamp and a body_md5 of another body (401), event data over 10 KB (413), a batch of 11
// events and an event to 101 channels (400). A pusher-js subscriber of `news` sees none of
// the refused events: only the accepted ones and a final marker arrive.
import { client, subscribed, next, run } from "./common.mjs";
import { signedPost } from "./signed.mjs";

const event = (data) => ({ name: "update", channel: "news", data: JSON.stringify(data) });

run(async () => {
  const pusher = client();
  const channel = await subscribed(pusher, "news");
  const received = [];
  channel.bind("update", (d) => received.push(d));

  const now = Math.floor(Date.now() / 1000);
  const status = async (promise) => {
    const { status, body } = await promise;
    return { status, error: body?.error ?? null };
  };
  const results = {
    stale: await status(
      signedPost("events", event({ n: "stale" }), { auth_timestamp: String(now - 700) }),
    ),
    future: await status(
      signedPost("events", event({ n: "future" }), { auth_timestamp: String(now + 700) }),
    ),
    // Signed with the MD5 of another body: the signature is right, the body is not the one signed.
    bodyMd5: await status(
      signedPost("events", event({ n: "md5" }), {
        body_md5: "0123456789abcdef0123456789abcdef",
      }),
    ),
    // Exactly 10 KB of data passes; one byte more is 413.
    at10k: await status(
      signedPost("events", { name: "update", channel: "news", data: "x".repeat(10 * 1024) }),
    ),
    over10k: await status(
      signedPost("events", { name: "update", channel: "news", data: "y".repeat(10 * 1024 + 1) }),
    ),
    batchOf10: await status(
      signedPost("batch_events", {
        batch: Array.from({ length: 10 }, (_, i) => event({ n: `b${i}` })),
      }),
    ),
    batchOf11: await status(
      signedPost("batch_events", {
        batch: Array.from({ length: 11 }, (_, i) => event({ n: `c${i}` })),
      }),
    ),
    channels101: await status(
      signedPost("events", {
        name: "update",
        channels: ["news", ...Array.from({ length: 100 }, (_, i) => `ch-${i}`)],
        data: JSON.stringify({ n: "wide" }),
      }),
    ),
    channels100: await status(
      signedPost("events", {
        name: "update",
        channels: ["news", ...Array.from({ length: 99 }, (_, i) => `ch-${i}`)],
        data: JSON.stringify({ n: "wide-ok" }),
      }),
    ),
  };
  const marker = next(channel, "marker", "the marker event");
  const last = await status(signedPost("events", { name: "marker", channel: "news", data: "{}" }));
  await marker;
  pusher.disconnect();
  // What arrived, in order: the 10 KB event (its text's length), the batch of 10, the 100 channels.
  const seen = received.map((d) => (typeof d === "string" ? `len:${d.length}` : d.n));
  return { ...results, marker: last, seen };
});
