import { test } from "node:test";
import assert from "node:assert/strict";
import { connected, flush, harness, watch } from "./fakes.mjs";

const joinedReply = (room, id, extra = {}) => ({
  type: "joined",
  room,
  epoch: "e1",
  offset: 0,
  recovered: true,
  members: ["alice"],
  id,
  ...extra,
});

test("join, publish and leave send increasing ids and resolve with their replies", async () => {
  const h = await connected();
  const socket = h.socket();
  const join = h.gate.join("lobby");
  const publish = h.gate.publish("lobby", { text: "hi" });
  const leave = h.gate.leave("lobby");
  assert.deepEqual(socket.sent, [
    { type: "join", room: "lobby", id: 1 },
    { type: "publish", room: "lobby", data: { text: "hi" }, id: 2 },
    { type: "leave", room: "lobby", id: 3 },
  ]);
  // Replies may come in any order; each settles the request with its id.
  socket.receive({ type: "ack", id: 2, offset: 58 });
  socket.receive({ type: "left", room: "lobby", id: 3 });
  socket.receive(joinedReply("lobby", 1));
  assert.deepEqual(await join, joinedReply("lobby", 1));
  assert.deepEqual(await publish, { type: "ack", id: 2, offset: 58 });
  assert.deepEqual(await leave, { type: "left", room: "lobby", id: 3 });
});

test("an error reply rejects with the server's error object", async () => {
  const h = await connected();
  const publish = h.gate.publish("nowhere", { text: "hi" });
  const error = { type: "error", id: 1, code: "not_joined", message: "join nowhere first" };
  h.socket().receive(error);
  await assert.rejects(publish, (err) => {
    assert.deepEqual(err, error);
    return true;
  });
  assert.deepEqual(h.of("error"), [], "the caller got it; no duplicate event");
});

test("a refused join drops the room from the re-join list", async () => {
  const h = await connected();
  const join = h.gate.join("secret");
  h.socket().receive({ type: "error", id: 1, code: "forbidden", message: "no" });
  await assert.rejects(join, { type: "error", code: "forbidden" });
  assert.deepEqual(h.gate.rooms, []);
});

test("an error without a request id is reported as an error event", async () => {
  const h = await connected();
  const error = { type: "error", code: "bad_request", message: "not JSON" };
  h.socket().receive(error);
  assert.deepEqual(h.of("error"), [error]);
});

test("a request without a reply rejects with a timeout Error", async () => {
  const h = await connected({ requestTimeoutMs: 5000 });
  const publish = watch(h.gate.publish("lobby", { text: "hi" }));
  await h.clock.advance(4999);
  assert.equal(publish.settled, false);
  await h.clock.advance(1);
  await publish.promise;
  assert.ok(publish.error instanceof Error);
  assert.equal(publish.error.type, "timeout");
  // A late reply finds nothing to settle and changes nothing.
  h.socket().receive({ type: "ack", id: 1, offset: 1 });
  await flush();
  assert.deepEqual(h.of("error"), []);
});

test("calls made before connect() wait for the open socket and go out in order", async () => {
  const h = harness();
  const join = watch(h.gate.join("lobby"));
  const publish = watch(h.gate.publish("lobby", { text: "early" }));
  h.gate.connect();
  await flush();
  const socket = h.socket();
  assert.deepEqual(socket.sent, [], "nothing is sent before open");
  const lateCall = watch(h.gate.publish("lobby", { text: "while connecting" }));
  socket.accept();
  assert.deepEqual(socket.sent, [
    { type: "join", room: "lobby", id: 1 },
    { type: "publish", room: "lobby", data: { text: "early" }, id: 2 },
    { type: "publish", room: "lobby", data: { text: "while connecting" }, id: 3 },
  ]);
  socket.receive(joinedReply("lobby", 1));
  socket.receive({ type: "ack", id: 2, offset: 1 });
  socket.receive({ type: "ack", id: 3, offset: 2 });
  await Promise.all([join.promise, publish.promise, lateCall.promise]);
  assert.equal(join.value.type, "joined");
  assert.equal(publish.value.offset, 1);
  assert.equal(lateCall.value.offset, 2);
});

test("on a drop a pending publish rejects with the close, a pending join is retried", async () => {
  const h = await connected();
  const join = watch(h.gate.join("lobby"));
  const publish = watch(h.gate.publish("lobby", { text: "hi" }));
  h.socket().drop(1006);
  await flush();
  assert.deepEqual(publish.error, { type: "close", code: 1006, reason: "" });
  assert.equal(join.settled, false);

  await h.clock.advance(h.of("backoff")[0].delayMs);
  const socket = h.socket();
  socket.accept();
  assert.deepEqual(socket.sent, [{ type: "join", room: "lobby", id: 3 }], "one join, a new id");
  socket.receive(joinedReply("lobby", 3));
  await join.promise;
  assert.equal(join.value.id, 3);
});

test("calls made while reconnecting are queued for the next connection", async () => {
  const h = await connected();
  h.socket().drop(1006);
  const publish = watch(h.gate.publish("lobby", { text: "later" }));
  await h.clock.advance(h.of("backoff")[0].delayMs);
  h.socket().accept();
  assert.deepEqual(h.socket().sentOf("publish"), [
    { type: "publish", room: "lobby", data: { text: "later" }, id: 1 },
  ]);
  h.socket().receive({ type: "ack", id: 1, offset: 9 });
  await publish.promise;
  assert.equal(publish.value.offset, 9);
});

test("leave while disconnected resolves at once and the room is not re-joined", async () => {
  const h = await connected();
  h.gate.join("lobby");
  h.socket().receive(joinedReply("lobby", 1));
  h.socket().drop(1006);
  assert.deepEqual(await h.gate.leave("lobby"), { type: "left", room: "lobby" });
  await h.clock.advance(h.of("backoff")[0].delayMs);
  h.socket().accept();
  assert.deepEqual(h.socket().sent, []);
});

test("close() rejects waiting requests and later calls", async () => {
  const h = await connected();
  const pending = watch(h.gate.publish("lobby", { text: "sent" }));
  h.gate.close();
  await flush();
  assert.deepEqual(pending.error, { type: "close", code: 1000, reason: "closed by client" });
  assert.deepEqual(h.sockets[0].closedByClient, { code: 1000, reason: "client closed" });
  await assert.rejects(h.gate.publish("lobby", {}), { type: "close", code: 1000 });
  await assert.rejects(h.gate.join("lobby"), { type: "close", code: 1000 });
  await assert.rejects(h.gate.leave("lobby"), { type: "close", code: 1000 });
});
