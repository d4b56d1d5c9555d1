import { test } from "node:test";
import assert from "node:assert/strict";
import { connected, flush, harness } from "./fakes.mjs";

test("state goes connecting → open → reconnecting → open → closed", async () => {
  const h = harness();
  assert.equal(h.gate.state, "closed");
  h.gate.connect();
  await flush();
  h.socket().accept();
  h.socket().drop(1006);
  await h.clock.advance(h.of("backoff")[0].delayMs);
  h.socket().accept();
  h.gate.close();
  assert.deepEqual(h.of("state"), ["connecting", "open", "reconnecting", "open", "closed"]);
});

test("connect() while already connecting opens no second socket", async () => {
  const h = harness();
  h.gate.connect();
  h.gate.connect();
  await flush();
  assert.equal(h.sockets.length, 1);
});

test("close() during a backoff wait stops reconnecting", async () => {
  const h = await connected();
  h.socket().drop(1006);
  assert.equal(h.of("backoff").length, 1);
  h.gate.close();
  assert.equal(h.gate.state, "closed");
  await h.clock.advance(120_000);
  assert.equal(h.sockets.length, 1);
  assert.equal(h.clock.timerCount, 0);
});

test("close() of an open socket closes it with 1000 and ignores its later events", async () => {
  const h = await connected();
  const socket = h.socket();
  h.gate.close();
  assert.deepEqual(socket.closedByClient, { code: 1000, reason: "client closed" });
  socket.receive({ type: "message", room: "lobby", from: "bob", data: {}, epoch: "e", offset: 1 });
  socket.drop(1006);
  await h.clock.advance(120_000);
  assert.deepEqual(h.of("message"), []);
  assert.deepEqual(h.of("backoff"), []);
  assert.equal(h.sockets.length, 1);
});

test("close() while getToken is pending opens no socket", async () => {
  let release;
  const getToken = () => new Promise((resolve) => (release = resolve));
  const h = harness({ token: undefined, getToken });
  h.gate.connect();
  await flush();
  h.gate.close();
  release("late-token");
  await flush();
  assert.equal(h.sockets.length, 0);
  assert.equal(h.gate.state, "closed");
});

test("connect() after close() starts afresh", async () => {
  const h = await connected();
  h.gate.close();
  h.gate.connect();
  await flush();
  assert.equal(h.sockets.length, 2);
  h.socket().accept();
  assert.equal(h.gate.state, "open");
});

test("presence frames are passed through as they come", async () => {
  const h = await connected();
  const presence = { type: "presence", room: "lobby", event: "join", user: "carol" };
  h.socket().receive(presence);
  h.socket().receive("not json");
  h.socket().receive({ type: "from-the-future" });
  assert.deepEqual(h.of("presence"), [presence]);
  assert.deepEqual(h.of("error"), []);
});

test("a throwing listener does not break the client or other listeners", async () => {
  const h = harness();
  const seen = [];
  const rethrown = [];
  // The client rethrows a listener's error from a microtask; catch it there.
  const realQueueMicrotask = globalThis.queueMicrotask;
  globalThis.queueMicrotask = (fn) => {
    try {
      fn();
    } catch (err) {
      rethrown.push(err.message);
    }
  };
  try {
    h.gate.on("state", () => {
      throw new Error("listener bug");
    });
    h.gate.on("state", (s) => seen.push(s));
    h.gate.connect();
    await flush();
    h.socket().accept();
  } finally {
    globalThis.queueMicrotask = realQueueMicrotask;
  }
  assert.deepEqual(seen, ["connecting", "open"]);
  assert.equal(h.gate.state, "open");
  assert.deepEqual(rethrown, ["listener bug", "listener bug"]);
});

test("off() and the function on() returns both unsubscribe", async () => {
  const h = harness();
  const a = [];
  const b = [];
  const fa = (s) => a.push(s);
  h.gate.on("state", fa);
  const offB = h.gate.on("state", (s) => b.push(s));
  h.gate.off("state", fa);
  offB();
  h.gate.connect();
  await flush();
  assert.deepEqual([a, b], [[], []]);
  assert.throws(() => h.gate.on("nope", () => {}), TypeError);
});
