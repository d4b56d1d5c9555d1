import { test } from "node:test";
import assert from "node:assert/strict";
import { connected, flush, harness, maxRandom } from "./fakes.mjs";

/** Fails the current socket's handshake and returns the backoff it caused. */
function refuse(h) {
  h.socket().drop(1006);
  return h.of("backoff").at(-1);
}

test("attempt n waits at most min(cap, base·2^n): the bound doubles up to the cap", async () => {
  const h = harness({ random: maxRandom });
  h.gate.connect();
  await flush();
  const delays = [];
  for (let n = 0; n < 7; n++) {
    const { attempt, delayMs } = refuse(h);
    assert.equal(attempt, n);
    delays.push(delayMs);
    const before = h.sockets.length;
    await h.clock.advance(delayMs - 1);
    assert.equal(h.sockets.length, before, "no attempt before the wait is over");
    await h.clock.advance(1);
    assert.equal(h.sockets.length, before + 1, "a new attempt right after the wait");
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
});

test("full jitter: every delay is drawn from [0, bound] by the random source", async () => {
  let seed = 7;
  const values = [];
  const random = () => {
    seed = (seed * 48271) % 2147483647;
    const value = seed / 2147483647;
    values.push(value);
    return value;
  };
  const h = harness({ random, baseMs: 100, capMs: 5000 });
  h.gate.connect();
  await flush();
  for (let n = 0; n < 12; n++) {
    const { attempt, delayMs, at } = refuse(h);
    const bound = Math.min(5000, 100 * 2 ** n);
    assert.equal(attempt, n);
    assert.ok(delayMs >= 0 && delayMs <= bound, `attempt ${n}: ${delayMs} outside [0, ${bound}]`);
    assert.equal(delayMs, Math.floor(values.at(-1) * (bound + 1)));
    assert.equal(at, h.clock.now + delayMs);
    await h.clock.advance(delayMs);
  }
});

test("random 0 retries at once", async () => {
  const h = harness({ random: () => 0 });
  h.gate.connect();
  await flush();
  refuse(h);
  refuse(h); // the same socket's second close is ignored
  await h.clock.advance(0);
  assert.equal(h.sockets.length, 2);
  assert.deepEqual(h.of("backoff").map((b) => b.delayMs), [0]);
});

test("a connection that stayed open stableMs resets n to 0", async () => {
  const h = harness({ random: maxRandom });
  h.gate.connect();
  await flush();
  for (let n = 0; n < 3; n++) await h.clock.advance(refuse(h).delayMs);
  h.socket().accept();
  await h.clock.advance(10_000);
  h.socket().drop(1006);
  const backoff = h.of("backoff").at(-1);
  assert.equal(backoff.attempt, 0);
  assert.equal(backoff.delayMs, 1000);
});

test("a connection that dropped before stableMs keeps growing the wait", async () => {
  const h = harness({ random: maxRandom });
  h.gate.connect();
  await flush();
  for (let n = 0; n < 3; n++) await h.clock.advance(refuse(h).delayMs);
  h.socket().accept();
  await h.clock.advance(9_999);
  h.socket().drop(1006);
  const backoff = h.of("backoff").at(-1);
  assert.equal(backoff.attempt, 3);
  assert.equal(backoff.delayMs, 8000);
});

test("the backoff event carries the close that caused it", async () => {
  const h = await connected();
  h.socket().drop(1011, "internal");
  const [backoff] = h.of("backoff");
  assert.equal(backoff.code, 1011);
  assert.equal(backoff.reason, "internal");
});

test("an online event skips the rest of the wait", async () => {
  const onlineTarget = new EventTarget();
  const h = await connected({ onlineTarget, random: maxRandom });
  onlineTarget.dispatchEvent(new Event("online"));
  await flush();
  assert.equal(h.sockets.length, 1, "online while connected does nothing");

  h.socket().drop(1006);
  assert.equal(h.of("backoff")[0].delayMs, 1000);
  onlineTarget.dispatchEvent(new Event("online"));
  await flush();
  assert.equal(h.sockets.length, 2, "reconnects without waiting");
  assert.equal(h.clock.timerCount, 0, "the backoff timer is gone");
});

test("close() removes the online listener, so online no longer reconnects", async () => {
  const listeners = new Set();
  const onlineTarget = {
    addEventListener: (type, fn) => type === "online" && listeners.add(fn),
    removeEventListener: (type, fn) => type === "online" && listeners.delete(fn),
  };
  const h = await connected({ onlineTarget });
  assert.equal(listeners.size, 1);
  h.socket().drop(1006);
  h.gate.close();
  assert.equal(listeners.size, 0);
  await flush();
  assert.equal(h.sockets.length, 1);
});
