import { test } from "node:test";
import assert from "node:assert/strict";
import { connected, flush } from "./fakes.mjs";

const message = (room, epoch, offset, text = `m${offset}`) => ({
  type: "message",
  room,
  from: "bob",
  data: { text },
  epoch,
  offset,
  ts: 1767225000000 + offset,
});

/** Joins `room`, answering with a joined reply whose offset is `offset`. */
async function joinRoom(h, room, offset = 57) {
  const join = h.gate.join(room);
  const { id } = h.socket().sent.at(-1);
  h.socket().receive({ type: "joined", room, epoch: "e1", offset, recovered: true, members: ["bob"], id });
  return join;
}

/** Drops the connection, waits out the backoff, and opens the next socket. */
async function reconnect(h) {
  h.socket().drop(1006);
  await h.clock.advance(h.of("backoff").at(-1).delayMs);
  h.socket().accept();
  return h.socket();
}

test("after a reconnect rooms are re-joined with since = the last message seen", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 57);
  await joinRoom(h, "quiet", 12);
  h.socket().receive(message("lobby", "e1", 58));
  h.socket().receive(message("lobby", "e1", 59));
  const socket = await reconnect(h);
  const joins = socket.sentOf("join");
  assert.deepEqual(joins, [
    { type: "join", room: "lobby", since: { epoch: "e1", offset: 59 }, id: joins[0].id },
    // No message seen in "quiet": since = the position its plain join's joined reply gave.
    { type: "join", room: "quiet", since: { epoch: "e1", offset: 12 }, id: joins[1].id },
  ]);
  assert.ok(joins[1].id > joins[0].id);
});

test("a room with no message seen recovers from its plain join's joined offset", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 7);
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  assert.deepEqual(rejoin, { type: "join", room: "lobby", since: { epoch: "e1", offset: 7 }, id: rejoin.id });
  socket.receive({ type: "joined", room: "lobby", epoch: "e1", offset: 9, recovered: true, members: [], id: rejoin.id });
  socket.receive(message("lobby", "e1", 8));
  socket.receive(message("lobby", "e1", 9));
  socket.receive(message("lobby", "e1", 10));
  assert.deepEqual(h.of("message").map((m) => m.offset), [8, 9, 10]);
  assert.deepEqual(h.of("gap"), []);
  // The outage is covered from there on too.
  const again = await reconnect(h);
  assert.deepEqual(again.sentOf("join")[0].since, { epoch: "e1", offset: 10 });
});

test("a room with no message seen reports gap when its outage cannot be replayed", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 7);
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  assert.deepEqual(rejoin.since, { epoch: "e1", offset: 7 });
  socket.receive({ type: "joined", room: "lobby", epoch: "e2", offset: 4, recovered: false, members: [], id: rejoin.id });
  assert.deepEqual(h.of("gap"), [{ room: "lobby" }]);
});

test("the joined offset of a join with since does not move the position before the replay", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 10);
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  assert.deepEqual(rejoin.since, { epoch: "e1", offset: 10 });
  socket.receive({ type: "joined", room: "lobby", epoch: "e1", offset: 12, recovered: true, members: [], id: rejoin.id });
  socket.receive(message("lobby", "e1", 11));
  socket.receive(message("lobby", "e1", 12));
  socket.receive(message("lobby", "e1", 13));
  assert.deepEqual(h.of("message").map((m) => m.offset), [11, 12, 13]);
});

test("the joined reply to a join with since never sets the position, even in a new epoch", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 10);
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  assert.deepEqual(rejoin.since, { epoch: "e1", offset: 10 });
  socket.receive({ type: "joined", room: "lobby", epoch: "e2", offset: 2, recovered: false, members: [], id: rejoin.id });
  assert.deepEqual(h.of("gap"), [{ room: "lobby" }]);
  // Messages of the new epoch up to joined.offset that still reach the client are not dropped.
  socket.receive(message("lobby", "e2", 1));
  socket.receive(message("lobby", "e2", 2));
  socket.receive(message("lobby", "e2", 3));
  assert.deepEqual(h.of("message").map((m) => [m.epoch, m.offset]), [["e2", 1], ["e2", 2], ["e2", 3]]);
});

test("a reconnect before the replay ends resumes from the last replayed message, not joined.offset", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 10);
  let socket = await reconnect(h);
  let [rejoin] = socket.sentOf("join");
  assert.deepEqual(rejoin.since, { epoch: "e1", offset: 10 });
  socket.receive({ type: "joined", room: "lobby", epoch: "e1", offset: 12, recovered: true, members: [], id: rejoin.id });
  socket.receive(message("lobby", "e1", 11));
  socket = await reconnect(h);
  [rejoin] = socket.sentOf("join");
  assert.deepEqual(rejoin.since, { epoch: "e1", offset: 11 });
});

test("a plain join's joined reply in a new epoch resets the position to it", async () => {
  const h = await connected();
  const join = h.gate.join("lobby");
  const { id } = h.socket().sent.at(-1);
  assert.equal(h.socket().sent.at(-1).since, undefined);
  // A straggler from the room's previous epoch lands before the reply.
  h.socket().receive(message("lobby", "e1", 40));
  h.socket().receive({ type: "joined", room: "lobby", epoch: "e2", offset: 3, recovered: true, members: [], id });
  await join;
  let socket = await reconnect(h);
  let [rejoin] = socket.sentOf("join");
  assert.deepEqual(rejoin.since, { epoch: "e2", offset: 3 });
  socket.receive({ type: "joined", room: "lobby", epoch: "e2", offset: 4, recovered: true, members: [], id: rejoin.id });
  socket.receive(message("lobby", "e2", 4));
  assert.deepEqual(h.of("message").map((m) => [m.epoch, m.offset]), [["e1", 40], ["e2", 4]]);
  socket = await reconnect(h);
  assert.deepEqual(socket.sentOf("join")[0].since, { epoch: "e2", offset: 4 });
});

test("a plain join's joined reply in the same epoch keeps the position messages gave", async () => {
  // Guards the fix's limit: joined.offset only fills in a missing position (or a new epoch).
  const h = await connected();
  const join = h.gate.join("lobby");
  const { id } = h.socket().sent.at(-1);
  h.socket().receive(message("lobby", "e1", 40));
  h.socket().receive({ type: "joined", room: "lobby", epoch: "e1", offset: 45, recovered: true, members: [], id });
  await join;
  const socket = await reconnect(h);
  assert.deepEqual(socket.sentOf("join")[0].since, { epoch: "e1", offset: 40 });
});

test("replayed messages already delivered are dropped; new ones come through in order", async () => {
  const h = await connected();
  await joinRoom(h, "lobby");
  h.socket().receive(message("lobby", "e1", 58));
  h.socket().receive(message("lobby", "e1", 59));
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  socket.receive({ type: "joined", room: "lobby", epoch: "e1", offset: 60, recovered: true, members: [], id: rejoin.id });
  socket.receive(message("lobby", "e1", 58));
  socket.receive(message("lobby", "e1", 59));
  socket.receive(message("lobby", "e1", 60));
  socket.receive(message("lobby", "e1", 60));
  socket.receive(message("lobby", "e1", 61));
  assert.deepEqual(
    h.of("message").map((m) => m.offset),
    [58, 59, 60, 61],
  );
});

test("a new epoch is accepted and becomes the recovery position", async () => {
  const h = await connected();
  await joinRoom(h, "lobby");
  h.socket().receive(message("lobby", "e1", 80));
  h.socket().receive(message("lobby", "e2", 1, "fresh start"));
  h.socket().receive(message("lobby", "e2", 2));
  assert.deepEqual(
    h.of("message").map((m) => [m.epoch, m.offset]),
    [["e1", 80], ["e2", 1], ["e2", 2]],
  );
  const socket = await reconnect(h);
  assert.deepEqual(socket.sentOf("join")[0].since, { epoch: "e2", offset: 2 });
});

test("a re-join answered recovered:false emits gap", async () => {
  const h = await connected();
  await joinRoom(h, "lobby");
  h.socket().receive(message("lobby", "e1", 58));
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  socket.receive({ type: "joined", room: "lobby", epoch: "e1", offset: 300, recovered: false, members: [], id: rejoin.id });
  assert.deepEqual(h.of("gap"), [{ room: "lobby" }]);
});

test("close 1012 (a cluster node that missed messages) re-joins with since and reports what it cannot replay", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 57);
  await joinRoom(h, "quiet", 3);
  h.socket().receive(message("lobby", "e1", 58));
  h.socket().drop(1012, "missed messages");
  assert.equal(h.gate.state, "reconnecting");
  assert.deepEqual(h.of("error"), [], "1012 is not a stop");
  await h.clock.advance(h.of("backoff")[0].delayMs);
  h.socket().accept();
  const [lobby, quiet] = h.socket().sentOf("join");
  assert.deepEqual(lobby.since, { epoch: "e1", offset: 58 });
  assert.deepEqual(quiet.since, { epoch: "e1", offset: 3 });
  // The node reached now replays the lobby; the quiet room's history is gone.
  h.socket().receive({ type: "joined", room: "lobby", epoch: "e1", offset: 59, recovered: true, members: [], id: lobby.id });
  h.socket().receive(message("lobby", "e1", 59));
  h.socket().receive({ type: "joined", room: "quiet", epoch: "e2", offset: 0, recovered: false, members: [], id: quiet.id });
  assert.deepEqual(h.of("message").map((m) => m.offset), [58, 59]);
  assert.deepEqual(h.of("gap"), [{ room: "quiet" }]);
});

test("a re-join answered recovered:true emits no gap", async () => {
  const h = await connected();
  await joinRoom(h, "lobby");
  h.socket().receive(message("lobby", "e1", 58));
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  socket.receive({ type: "joined", room: "lobby", epoch: "e1", offset: 58, recovered: true, members: [], id: rejoin.id });
  assert.deepEqual(h.of("gap"), []);
  assert.equal(h.of("joined").length, 2, "re-joins are reported as joined events");
});

test("a plain join (nothing to recover) emits no gap whatever recovered says", async () => {
  const h = await connected();
  const join = h.gate.join("lobby");
  h.socket().receive({ type: "joined", room: "lobby", epoch: "e1", offset: 5, recovered: false, members: [], id: 1 });
  await join;
  assert.deepEqual(h.of("gap"), []);
});

test("a room left is not re-joined", async () => {
  const h = await connected();
  await joinRoom(h, "lobby");
  await joinRoom(h, "other");
  const leave = h.gate.leave("other");
  h.socket().receive({ type: "left", room: "other", id: h.socket().sent.at(-1).id });
  await leave;
  const socket = await reconnect(h);
  assert.deepEqual(socket.sentOf("join").map((j) => j.room), ["lobby"]);
  assert.deepEqual(h.gate.rooms, ["lobby"]);
});

test("a refused re-join is reported and the room dropped", async () => {
  const h = await connected();
  await joinRoom(h, "team:1");
  const socket = await reconnect(h);
  const [rejoin] = socket.sentOf("join");
  const error = { type: "error", id: rejoin.id, code: "forbidden", message: "room not allowed" };
  socket.receive(error);
  await flush();
  assert.deepEqual(h.of("error"), [error]);
  assert.deepEqual(h.gate.rooms, []);
});

test("re-joins go out before calls queued while disconnected", async () => {
  const h = await connected();
  await joinRoom(h, "lobby");
  h.socket().drop(1006);
  h.gate.publish("lobby", { text: "queued" });
  await h.clock.advance(h.of("backoff")[0].delayMs);
  h.socket().accept();
  assert.deepEqual(h.socket().sent.map((f) => f.type), ["join", "publish"]);
});

test("a room the gateway takes the session out of is reported and not re-joined", async () => {
  const h = await connected();
  await joinRoom(h, "lobby", 3);
  await joinRoom(h, "team:1", 5);
  const revoked = { type: "left", room: "team:1", reason: "forbidden" };
  h.socket().receive(revoked);
  assert.deepEqual(h.of("left"), [revoked]);
  assert.deepEqual(h.gate.rooms, ["lobby"]);
  const socket = await reconnect(h);
  assert.deepEqual(socket.sentOf("join").map((j) => j.room), ["lobby"]);
});
