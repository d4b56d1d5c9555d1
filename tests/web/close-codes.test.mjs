import { test } from "node:test";
import assert from "node:assert/strict";
import { connected, flush, harness } from "./fakes.mjs";

/** getToken handing out tok-1, tok-2, ... and counting calls. */
function tokenSource() {
  const source = {
    calls: 0,
    getToken: async () => `tok-${++source.calls}`,
  };
  return source;
}

const bearerOf = (socket) => socket.protocols[1];

// CONTRACT §6: reconnect after 1001, 1006, 1011, 1012, 1013 and 4000; other codes the
// client does not know are retried too.
for (const code of [1001, 1006, 1011, 1012, 1013, 4000, 1000, 4999]) {
  test(`close ${code} reconnects after a backoff wait`, async () => {
    const h = await connected();
    h.socket().drop(code, "bye");
    assert.equal(h.gate.state, "reconnecting");
    const [backoff] = h.of("backoff");
    assert.equal(backoff.code, code);
    await h.clock.advance(backoff.delayMs);
    assert.equal(h.sockets.length, 2);
    h.socket().accept();
    assert.equal(h.gate.state, "open");
    assert.deepEqual(h.of("error"), []);
  });
}

for (const code of [1003, 1007, 1008, 1009, 4003]) {
  test(`close ${code} stops for good and reports the close`, async () => {
    const h = await connected();
    const publish = h.gate.publish("lobby", { text: "hi" });
    h.socket().drop(code, "bye");
    assert.equal(h.gate.state, "closed");
    assert.deepEqual(h.of("error"), [{ type: "close", code, reason: "bye" }]);
    await assert.rejects(publish, (err) => {
      assert.deepEqual(err, { type: "close", code, reason: "bye" });
      return true;
    });
    await h.clock.advance(120_000);
    assert.equal(h.sockets.length, 1, "no reconnect");
    assert.deepEqual(h.of("backoff"), []);
    await assert.rejects(h.gate.join("lobby"), { type: "close", code });
  });
}

test("close 4001 with getToken reconnects with a new token", async () => {
  const tokens = tokenSource();
  const h = await connected({ token: undefined, getToken: tokens.getToken });
  assert.equal(bearerOf(h.socket()), "bearer.tok-1");
  h.socket().drop(4001, "token expired");
  assert.equal(h.gate.state, "reconnecting");
  await h.clock.advance(h.of("backoff")[0].delayMs);
  assert.equal(tokens.calls, 2);
  assert.equal(h.sockets.length, 2);
  assert.equal(bearerOf(h.socket()), "bearer.tok-2");
  assert.deepEqual(h.of("error"), []);
});

test("close 4001 with a fixed token stops: it cannot get a new one", async () => {
  const h = await connected();
  h.socket().drop(4001, "token expired");
  assert.equal(h.gate.state, "closed");
  assert.deepEqual(h.of("error"), [{ type: "close", code: 4001, reason: "token expired" }]);
  await h.clock.advance(120_000);
  assert.equal(h.sockets.length, 1);
});

test("a refused handshake (1006 before open) gets a fresh token before the next attempt", async () => {
  const tokens = tokenSource();
  const h = harness({ token: undefined, getToken: tokens.getToken });
  h.gate.connect();
  await flush();
  assert.equal(tokens.calls, 1);
  assert.equal(bearerOf(h.socket()), "bearer.tok-1");

  h.socket().drop(1006);
  assert.equal(tokens.calls, 1, "no token fetched during the wait");
  await h.clock.advance(h.of("backoff")[0].delayMs);
  assert.equal(tokens.calls, 2);
  assert.equal(bearerOf(h.socket()), "bearer.tok-2");

  h.socket().drop(1006);
  const backoffs = h.of("backoff");
  assert.deepEqual(backoffs.map((b) => b.attempt), [0, 1], "still backing off");
  await h.clock.advance(backoffs[1].delayMs);
  assert.equal(bearerOf(h.socket()), "bearer.tok-3");
  assert.equal(h.gate.state, "reconnecting");
  h.socket().accept();
  assert.equal(h.gate.state, "open");
});

test("a failing getToken reports an error and backs off", async () => {
  let calls = 0;
  const getToken = async () => {
    calls++;
    if (calls === 1) throw new Error("auth server down");
    return "tok-ok";
  };
  const h = harness({ token: undefined, getToken });
  h.gate.connect();
  await flush();
  assert.equal(h.sockets.length, 0);
  assert.deepEqual(h.of("error"), [{ type: "token", message: "auth server down" }]);
  assert.equal(h.gate.state, "reconnecting");
  await h.clock.advance(h.of("backoff")[0].delayMs);
  assert.equal(calls, 2);
  assert.equal(bearerOf(h.socket()), "bearer.tok-ok");
});

test("a getToken that returns no token counts as a failed attempt", async () => {
  const h = harness({ token: undefined, getToken: () => "" });
  h.gate.connect();
  await flush();
  assert.equal(h.sockets.length, 0);
  assert.equal(h.of("error")[0].type, "token");
  assert.equal(h.of("backoff").length, 1);
});
