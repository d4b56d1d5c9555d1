/**
 * The wsgate demo chat page, on top of the `WsGate` client.
 *
 * Open it as `https://HOST/#token=<jwt>&room=lobby` to connect at once, or
 * paste a token and press Connect. The fragment is acted on once, at load: a
 * token that arrives in it later only fills the field (see `sessionToken`). Every piece of text from the network is
 * put into the page with `textContent`, never parsed as HTML, and the page
 * runs under a strict Content-Security-Policy (no inline script or style).
 *
 * For browser tests the page exposes `window.__wsgate` (the live client)
 * and `window.__wsgateEvents` (every client event as `{event, payload}`).
 */

import { WsGate } from "./wsgate.js";

/** Room names the gateway accepts. */
const ROOM_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
/** Entries kept per room; older ones are dropped from the page. */
const MAX_ENTRIES_PER_ROOM = 500;
/**
 * Every client event; all are logged to `window.__wsgateEvents`.
 * @type {(keyof import("./wsgate.js").WsGateEvents)[]}
 */
const EVENT_NAMES = ["state", "welcome", "joined", "message", "presence", "gap", "refreshed", "backoff", "error"];

/** Words for the close codes that end the connection for good. */
const CLOSE_TEXT = {
  1003: "the gateway does not accept binary frames",
  1007: "the gateway received invalid UTF-8",
  1008: "closed for a policy violation (too many bad requests, or flooding)",
  1009: "a message was too big",
  4001: "the token expired: paste a new one and connect",
  4003: "disconnected by an administrator",
};

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const ui = {
  state: $("state"),
  countdown: $("countdown"),
  whoami: $("whoami"),
  connectForm: /** @type {HTMLFormElement} */ ($("connect-form")),
  token: /** @type {HTMLInputElement} */ ($("token")),
  disconnect: $("disconnect"),
  notice: $("notice"),
  joinForm: /** @type {HTMLFormElement} */ ($("join-form")),
  room: /** @type {HTMLInputElement} */ ($("room")),
  rooms: $("rooms"),
  members: $("members"),
  memberCount: $("member-count"),
  roomTitle: $("room-title"),
  messages: $("messages"),
  sendForm: /** @type {HTMLFormElement} */ ($("send-form")),
  text: /** @type {HTMLInputElement} */ ($("text")),
};

/**
 * What the page shows for one room.
 *
 * @typedef {object} RoomView
 * @property {Set<string>} members
 * @property {HTMLLIElement[]} entries Message, system and divider lines, oldest first.
 * @property {number} unread Messages received while another room was shown.
 * @property {boolean} joined Confirmed by the gateway at least once.
 */

/** @type {Map<string, RoomView>} */
const rooms = new Map();
/** @type {string | null} The room shown and published to. */
let activeRoom = null;
/** @type {WsGate | null} */
let gate = null;
/**
 * The token the connection uses for every reconnect and refresh: the field's
 * value when the connection was made, then whatever the user types or pastes
 * there. Never a token that a later `#token=` put in the field: whoever can
 * navigate this tab (an opener, a link) could otherwise sign the page in to
 * their own account, and the user would chat as them (login CSRF).
 */
let sessionToken = "";
let countdownTimer = 0;
/**
 * Backoff base in ms from the fragment's optional `backoff=N` (1–60000), or
 * undefined for the client's default (1 s). Browser tests pass a short one
 * so a reconnect takes a fraction of a second; users never need it.
 * @type {number | undefined}
 */
let backoffBaseMs;

window.__wsgate = null;
window.__wsgateEvents = [];

// -------------------------------------------------------------------------
// Connection

/** (Re)connects with the token in the field and joins the room in the room field. */
function connect() {
  if (!ui.token.value.trim()) {
    showNotice("Paste a token first.", "error");
    return;
  }
  disconnect();
  clearRooms();
  hideNotice();

  // getToken is asked before every attempt and refresh, so a fresh token the
  // user pastes into the field is picked up by the next one.
  sessionToken = ui.token.value.trim();
  gate = new WsGate(`wss://${location.host}/ws`, {
    getToken: () => sessionToken,
    baseMs: backoffBaseMs,
  });
  window.__wsgate = gate;
  const current = gate;
  for (const name of EVENT_NAMES) {
    gate.on(name, (payload) => {
      window.__wsgateEvents.push({ event: name, payload });
      if (gate === current) handlers[name]?.(payload);
    });
  }
  gate.connect();
  joinRoom(ui.room.value.trim() || "lobby");
}

/** Closes the connection; the page keeps what it shows. */
function disconnect() {
  gate?.close();
  gate = null;
  renderState("closed");
}

/** Client event → page update. */
const handlers = {
  state: renderState,

  welcome(welcome) {
    ui.whoami.textContent = `signed in as ${welcome.user}`;
  },

  backoff({ at }) {
    startCountdown(at);
  },

  joined(joined) {
    const room = rooms.get(joined.room);
    if (!room) return;
    room.joined = true;
    room.members = new Set(joined.members);
    if (joined.room === activeRoom) renderMembers();
  },

  message(message) {
    const room = rooms.get(message.room);
    if (!room) return;
    addEntry(message.room, messageEntry(message.from, messageText(message.data), message.ts));
    if (message.room !== activeRoom) {
      room.unread++;
      renderRooms();
    }
  },

  presence({ room: name, event, user }) {
    const room = rooms.get(name);
    if (!room) return;
    if (event === "join") room.members.add(user);
    else room.members.delete(user);
    addEntry(name, systemEntry(`${user} ${event === "join" ? "joined" : "left"}`));
    if (name === activeRoom) renderMembers();
  },

  gap({ room }) {
    addEntry(room, dividerEntry("some messages were missed here"));
    showNotice(
      `Some messages in ${room} were missed while offline: the gateway no longer had them.`,
      "warn",
    );
  },

  error(error) {
    showNotice(describeError(error), "error");
  },
};

/** @param {import("./wsgate.js").WsGateState} state */
function renderState(state) {
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  if (state !== "reconnecting") stopCountdown();
  if (state === "closed") ui.whoami.textContent = "";
}

/** Shows "retrying in N s" until the epoch-ms time `at`. */
function startCountdown(at) {
  stopCountdown();
  const tick = () => {
    const seconds = Math.ceil((at - Date.now()) / 1000);
    ui.countdown.textContent = seconds > 0 ? `retrying in ${seconds} s` : "retrying…";
  };
  tick();
  ui.countdown.hidden = false;
  countdownTimer = setInterval(tick, 250);
}

function stopCountdown() {
  clearInterval(countdownTimer);
  ui.countdown.hidden = true;
  ui.countdown.textContent = "";
}

// -------------------------------------------------------------------------
// Rooms

/** Joins a room (if not already in it) and shows it. */
function joinRoom(name) {
  if (!ROOM_NAME.test(name)) {
    showNotice(`"${name}" is not a room name: use 1–64 of A–Z a–z 0–9 _ . : -`, "error");
    return;
  }
  if (!gate) {
    showNotice("Connect first.", "error");
    return;
  }
  const known = rooms.has(name);
  if (!known) rooms.set(name, { members: new Set(), entries: [], unread: 0, joined: false });
  showRoom(name);
  if (known) return;
  const client = gate;
  client.join(name).catch((error) => {
    if (client !== gate) return;
    showNotice(`Could not join ${name}: ${describeError(error)}`, "error");
    if (!rooms.get(name)?.joined) removeRoom(name);
  });
}

function leaveRoom(name) {
  gate?.leave(name).catch(() => {
    // The gateway forgets the membership with the connection anyway.
  });
  removeRoom(name);
}

function removeRoom(name) {
  rooms.delete(name);
  if (activeRoom === name) activeRoom = null;
  showRoom(activeRoom ?? rooms.keys().next().value ?? null);
}

function clearRooms() {
  rooms.clear();
  showRoom(null);
}

/** Makes `name` the room shown and published to. */
function showRoom(name) {
  activeRoom = name;
  const room = name === null ? undefined : rooms.get(name);
  if (room) room.unread = 0;
  ui.roomTitle.textContent = name ?? "No room";
  ui.messages.replaceChildren(...(room?.entries ?? []));
  scrollToEnd();
  renderRooms();
  renderMembers();
}

function renderRooms() {
  const items = [...rooms].map(([name, room]) => {
    const li = el("li", name === activeRoom ? "room active" : "room");
    const open = el("button", "room-open");
    open.type = "button";
    open.append(el("span", "room-name", name));
    if (room.unread > 0) open.append(el("span", "badge", String(room.unread)));
    open.addEventListener("click", () => showRoom(name));
    const leave = el("button", "room-leave", "×");
    leave.type = "button";
    leave.title = `Leave ${name}`;
    leave.setAttribute("aria-label", `Leave ${name}`);
    leave.addEventListener("click", () => leaveRoom(name));
    li.append(open, leave);
    return li;
  });
  ui.rooms.replaceChildren(...items);
}

function renderMembers() {
  const room = activeRoom === null ? undefined : rooms.get(activeRoom);
  const members = [...(room?.members ?? [])].sort((a, b) => a.localeCompare(b));
  const me = gate?.user;
  ui.members.replaceChildren(
    ...members.map((user) => {
      const li = el("li", user === me ? "member me" : "member", user);
      li.dataset.user = user;
      return li;
    }),
  );
  ui.memberCount.textContent = room ? String(members.length) : "";
}

// -------------------------------------------------------------------------
// Messages

/** Sends the composer's text to the room shown, and shows it as pending until acked. */
function send() {
  const text = ui.text.value;
  if (!text.trim()) return;
  if (!gate || activeRoom === null) {
    showNotice("Connect and join a room first.", "error");
    return;
  }
  const room = activeRoom;
  const entry = messageEntry(gate.user ?? "me", text, Date.now());
  entry.classList.add("mine", "pending");
  addEntry(room, entry);
  ui.text.value = "";
  gate.publish(room, { text }).then(
    () => entry.classList.remove("pending"),
    (error) => {
      entry.classList.replace("pending", "failed");
      entry.title = "not delivered";
      showNotice(`Not delivered to ${room}: ${describeError(error)}`, "error");
    },
  );
}

/** Appends a line to a room, and to the page when that room is shown. */
function addEntry(name, li) {
  const room = rooms.get(name);
  if (!room) return;
  room.entries.push(li);
  const dropped = room.entries.splice(0, Math.max(0, room.entries.length - MAX_ENTRIES_PER_ROOM));
  if (name !== activeRoom) return;
  const stick = isScrolledToEnd();
  for (const old of dropped) old.remove();
  ui.messages.append(li);
  if (stick) scrollToEnd();
}

/** A message line: `.from`, `.time`, `.text`, all plain text. */
function messageEntry(from, text, ts) {
  const li = el("li", "msg");
  if (from === "@server") li.classList.add("server");
  if (from === gate?.user) li.classList.add("mine"); // also from this user's other tabs
  const time = el("time", "time");
  const date = new Date(ts);
  if (!Number.isNaN(date.getTime())) {
    time.dateTime = date.toISOString();
    time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  li.append(el("span", "from", from), time, el("span", "text", text));
  return li;
}

function systemEntry(text) {
  return el("li", "system", text);
}

function dividerEntry(text) {
  return el("li", "divider", text);
}

/** The text to show for a message's data: its `text`, or the JSON of it. */
function messageText(data) {
  if (data !== null && typeof data === "object" && typeof data.text === "string") return data.text;
  return JSON.stringify(data);
}

function isScrolledToEnd() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function scrollToEnd() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

// -------------------------------------------------------------------------
// Helpers

/** An element with a class and, optionally, text (as text, never HTML). */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A sentence for anything the client reports or rejects with. */
function describeError(error) {
  switch (error?.type) {
    case "close":
      return `Disconnected (${error.code}): ${CLOSE_TEXT[error.code] ?? error.reason ?? "connection closed"}`;
    case "error":
      return `${error.code}: ${error.message}`;
    case "token":
      return `No token: ${error.message}`;
    default:
      return error?.message ?? String(error);
  }
}

/** @param {"info" | "warn" | "error"} kind */
function showNotice(text, kind = "info") {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

/**
 * Reads `#token=...&room=...` (and the tests' optional `&backoff=N`, see
 * `backoffBaseMs`). The token is then removed from the address bar, so it
 * does not linger in the history, bookmarks or screenshots.
 *
 * @returns {boolean} Whether the fragment carried a token.
 */
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const room = params.get("room");
  if (room && ROOM_NAME.test(room)) ui.room.value = room;
  const backoff = Number(params.get("backoff"));
  if (Number.isInteger(backoff) && backoff >= 1 && backoff <= 60_000) backoffBaseMs = backoff;
  const token = params.get("token");
  if (!token) return false;
  ui.token.value = token;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
  return true;
}

// -------------------------------------------------------------------------
// Wiring

ui.connectForm.addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
ui.disconnect.addEventListener("click", disconnect);
ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.room.value.trim();
  if (gate) joinRoom(name);
  else if (ui.token.value.trim()) connect();
  else showNotice("Paste a token first.", "error");
});
ui.sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.notice.addEventListener("click", hideNotice);
// `input` comes from the user only, never from a script setting the value.
ui.token.addEventListener("input", () => {
  if (gate) sessionToken = ui.token.value.trim();
});
window.addEventListener("hashchange", () => {
  if (readFragment()) showNotice("A token arrived in the address: press Connect to use it.");
});

renderState("closed");
if (readFragment()) connect();
