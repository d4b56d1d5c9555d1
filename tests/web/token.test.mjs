import { test } from "node:test";
import assert from "node:assert/strict";
import { WsGate } from "../../web/wsgate.js";
import { connected, flush, harness } from "./fakes.mjs";

const JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
const URL = "wss://chat.example.test/ws";

test("a fixed token travels only in the subprotocol, never in the URL", async () => {
  const h = harness({ url: URL, token: JWT });
  h.gate.connect();
  await flush();
  const socket = h.socket();
  assert.equal(socket.url, URL);
  assert.ok(!socket.url.includes(JWT));
  assert.deepEqual(socket.protocols, ["wsgate.v1", `bearer.${JWT}`]);
});

test("a token from getToken travels only in the subprotocol, never in the URL", async () => {
  const h = harness({ url: URL, token: undefined, getToken: async () => JWT });
  h.gate.connect();
  await flush();
  assert.equal(h.socket().url, URL);
  assert.deepEqual(h.socket().protocols, ["wsgate.v1", `bearer.${JWT}`]);
});

test("the constructor needs a token or getToken", () => {
  assert.throws(() => new WsGate(URL, {}), TypeError);
  assert.throws(() => new WsGate(URL, { token: "" }), TypeError);
  assert.throws(() => new WsGate(URL, { getToken: "nope" }), TypeError);
});

test("welcome is reported and names the user and session", async () => {
  const h = await connected();
  const welcome = { type: "welcome", user: "alice", session: "s-1", expires_at: 2_000_000_000 };
  h.socket().receive(welcome);
  assert.deepEqual(h.of("welcome"), [welcome]);
  assert.equal(h.gate.user, "alice");
  assert.equal(h.gate.session, "s-1");
});

/** A gate using getToken (tok-1, tok-2, ...) with an open socket. */
async function refreshing() {
  const tokens = { calls: 0 };
  const getToken = async () => `tok-${++tokens.calls}`;
  const h = await connected({ token: undefined, getToken });
  return { h, tokens, nowSec: () => h.clock.now / 1000 };
}

test("a long-lived token is refreshed at 80% of its remaining life", async () => {
  const { h, tokens, nowSec } = await refreshing();
  h.socket().receive({ type: "welcome", user: "alice", session: "s", expires_at: nowSec() + 3600 });
  // min(3600 s - 30 s, 0.8 · 3600 s) = 2880 s
  await h.clock.advance(2_880_000 - 1);
  assert.equal(tokens.calls, 1);
  assert.deepEqual(h.socket().sentOf("refresh"), []);
  await h.clock.advance(1);
  assert.equal(tokens.calls, 2);
  const [refresh] = h.socket().sentOf("refresh");
  assert.equal(refresh.token, "tok-2");
  assert.equal(typeof refresh.id, "number");

  const refreshed = { type: "refreshed", expires_at: nowSec() + 3600, id: refresh.id };
  h.socket().receive(refreshed);
  assert.deepEqual(h.of("refreshed"), [refreshed]);
  await h.clock.advance(2_880_000);
  const second = h.socket().sentOf("refresh")[1];
  assert.equal(second.token, "tok-3", "the next refresh follows the new expires_at");
  assert.ok(second.id > refresh.id);
  assert.deepEqual(h.of("error"), []);
});

test("a short-lived token is refreshed 30 s before it expires", async () => {
  const { h, nowSec } = await refreshing();
  h.socket().receive({ type: "welcome", user: "alice", session: "s", expires_at: nowSec() + 60 });
  // min(60 s - 30 s, 0.8 · 60 s) = 30 s
  await h.clock.advance(29_999);
  assert.equal(h.socket().sentOf("refresh").length, 0);
  await h.clock.advance(1);
  assert.equal(h.socket().sentOf("refresh").length, 1);
});

test("a refused refresh is reported as an error event", async () => {
  const { h, nowSec } = await refreshing();
  h.socket().receive({ type: "welcome", user: "alice", session: "s", expires_at: nowSec() + 60 });
  await h.clock.advance(30_000);
  const [refresh] = h.socket().sentOf("refresh");
  const error = { type: "error", id: refresh.id, code: "token_invalid", message: "expired" };
  h.socket().receive(error);
  await flush();
  assert.deepEqual(h.of("error"), [error]);
});

test("no refresh is sent when getToken returns the session's own token", async () => {
  let calls = 0;
  const getToken = () => {
    calls++;
    return "same-token";
  };
  const h = await connected({ token: undefined, getToken });
  h.socket().receive({ type: "welcome", user: "a", session: "s", expires_at: h.clock.now / 1000 + 60 });
  await h.clock.advance(60_000);
  assert.equal(calls, 2, "getToken was asked");
  assert.deepEqual(h.socket().sentOf("refresh"), []);
});

test("with a fixed token nothing is refreshed", async () => {
  const h = await connected();
  h.socket().receive({ type: "welcome", user: "a", session: "s", expires_at: h.clock.now / 1000 + 60 });
  assert.equal(h.clock.timerCount, 1, "only the stable-connection timer");
  await h.clock.advance(120_000);
  assert.deepEqual(h.socket().sentOf("refresh"), []);
});

test("a drop cancels the planned refresh", async () => {
  const { h, tokens, nowSec } = await refreshing();
  h.socket().receive({ type: "welcome", user: "a", session: "s", expires_at: nowSec() + 60 });
  h.socket().drop(1006);
  const first = h.sockets[0];
  await h.clock.advance(h.of("backoff")[0].delayMs);
  assert.equal(tokens.calls, 2, "one token for the reconnect");
  await h.clock.advance(60_000);
  assert.equal(tokens.calls, 2, "no refresh for the dead connection");
  assert.deepEqual(first.sentOf("refresh"), []);
});
