/**
 * Browser client for the wsgate WebSocket gateway (wire protocol `wsgate.v1`).
 *
 * One `WsGate` owns one logical connection to the gateway. It:
 *
 * - authenticates with the `bearer.<jwt>` subprotocol, so the token never
 *   appears in a URL, a proxy log or the browser history;
 * - reconnects after a drop with exponential backoff and full jitter, and
 *   stops for good on the close codes that mean "retrying cannot help";
 * - asks `getToken()` for a fresh token before every connection attempt and
 *   refreshes the live session's token before it expires;
 * - tracks a position in each room (see `RoomState`), re-joins its rooms
 *   after a reconnect with `since` from it, drops replayed messages it
 *   already delivered, and reports a `gap` when the gateway's history could
 *   not cover the outage;
 * - turns `join` / `leave` / `publish` into promises settled by the
 *   gateway's reply to the request's `id`.
 *
 * The module has no dependencies and runs in browsers and in Node (tests
 * inject a fake `WebSocket`, timers and randomness through the options).
 *
 * @module wsgate
 */

/** The subprotocol that names the wire protocol; the gateway echoes it back. */
const PROTOCOL = "wsgate.v1";
/** Prefix of the subprotocol that carries the JWT. */
const BEARER_PREFIX = "bearer.";
/** `WebSocket.OPEN`, spelled out so an injected constructor needs no statics. */
const WS_OPEN = 1;

/**
 * Close codes after which reconnecting would fail the same way again:
 * binary frame, invalid UTF-8, policy violation, message too big, kicked.
 * Every other code reconnects: shutdown 1001, drop 1006, internal error 1011,
 * a cluster node that missed messages 1012 (the re-joins with `since` recover
 * them, or report a `gap`), too slow 1013, idle 4000, and codes this client
 * does not know.
 */
const FATAL_CLOSE_CODES = new Set([1003, 1007, 1008, 1009, 4003]);
/** The token expired without a refresh: reconnecting needs a new token. */
const CLOSE_TOKEN_EXPIRED = 4001;
/** Code used when the page itself calls `close()`. */
const CLOSE_NORMAL = 1000;

/** Refresh the token this long before `expires_at`... */
const REFRESH_LEAD_MS = 30_000;
/** ...or at this fraction of its remaining life, whichever comes first. */
const REFRESH_LIFE_FRACTION = 0.8;
/**
 * Never refresh sooner than this after scheduling, so a token that is
 * already (nearly) expired, or a skewed clock, cannot make a busy loop.
 */
const MIN_REFRESH_DELAY_MS = 1_000;
/** Timers overflow (and fire at once) beyond a signed 32-bit delay. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Cap on the backoff exponent; 2^30 s is far past any sane `capMs`. */
const MAX_BACKOFF_EXPONENT = 30;

/** Server frames that answer a request and carry its `id`. */
const REPLY_TYPES = new Set(["joined", "left", "ack", "refreshed", "error"]);

/** Every event `on()` accepts. */
export const EVENT_NAMES = Object.freeze([
  "state",
  "welcome",
  "joined",
  "message",
  "presence",
  "gap",
  "left",
  "refreshed",
  "backoff",
  "error",
]);
const EVENTS = new Set(EVENT_NAMES);

/**
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} WsGateState
 *
 * @typedef {object} WsGateOptions
 * @property {string} [token] A fixed JWT. Give this or `getToken`.
 * @property {() => string | Promise<string>} [getToken] Called before every
 *   connection attempt and before the token expires.
 * @property {number} [baseMs=1000] Backoff base: attempt n waits up to base·2ⁿ.
 * @property {number} [capMs=30000] Longest backoff wait.
 * @property {number} [stableMs=10000] A connection open this long resets the backoff.
 * @property {number} [requestTimeoutMs=10000] How long a request waits for its reply once sent.
 * @property {new (url: string, protocols: string[]) => WebSocket} [WebSocket]
 *   WebSocket constructor; defaults to `globalThis.WebSocket`.
 * @property {() => number} [random] Uniform in [0, 1); defaults to `Math.random`.
 * @property {() => number} [now] Epoch milliseconds; defaults to `Date.now`.
 * @property {(fn: () => void, ms: number) => unknown} [setTimeout]
 * @property {(handle: unknown) => void} [clearTimeout]
 * @property {EventTarget | null} [onlineTarget] Where to listen for the
 *   `online` event; defaults to `globalThis` when it is an event target.
 */

/**
 * A request waiting to be sent (in the queue) or for its reply (pending).
 *
 * @typedef {object} Request
 * @property {"join" | "leave" | "publish" | "refresh"} type
 * @property {Record<string, unknown>} body Frame fields other than type, id and since.
 * @property {(reply: object) => void} resolve
 * @property {(reason: unknown) => void} reject
 * @property {number} id Assigned when sent; 0 while queued.
 * @property {unknown} timer The reply timeout, once sent.
 * @property {boolean} since Whether the sent join carried `since`.
 */

/**
 * Where the client stands in one room it wants to be in.
 *
 * The position (epoch, offset) is what the next join sends as `since`. It
 * normally comes from the `message` offsets delivered. It also comes from
 * the `joined` reply to a join sent WITHOUT `since`, when the room has no
 * position yet or the reply names another epoch: no replay follows such a
 * join, so everything after `joined.offset` arrives live, and a re-join
 * after an outage can then recover what was published meanwhile (or report
 * a `gap`) even in a room where nothing had been received. The `joined`
 * reply to a join WITH `since` never sets it: its offset is where the
 * replay will end, and taking it would drop the replayed messages as
 * duplicates.
 *
 * @typedef {object} RoomState
 * @property {string | null} epoch Epoch of the position, or null when there is none yet.
 * @property {number} offset Offset of the position: the last message delivered,
 *   or `joined.offset` of a join sent without `since`.
 * @property {boolean} joined Whether the gateway confirmed the join on the current connection.
 */

/** A client of one wsgate endpoint. See the module documentation. */
export class WsGate {
  /** @type {string} */ #url;
  /** @type {string | undefined} */ #token;
  /** @type {(() => string | Promise<string>) | undefined} */ #getToken;
  #baseMs;
  #capMs;
  #stableMs;
  #requestTimeoutMs;
  #WebSocket;
  #random;
  #now;
  #setTimeout;
  #clearTimeout;
  /** @type {EventTarget | null} */ #onlineTarget;

  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();
  /** @type {WsGateState} */
  #state = "closed";

  /** True between `connect()` and a stop (by `close()` or a fatal close code). */
  #active = false;
  /**
   * Why the client stopped, once it has; requests are then refused at once.
   * Null before the first `connect()`, so early calls queue instead.
   * @type {{ code: number, reason: string } | null}
   */
  #stopped = null;
  /** Bumped on every attempt and stop, so stale async work can tell it is stale. */
  #generation = 0;
  /** The backoff exponent n of the next wait. */
  #attempt = 0;

  /** @type {WebSocket | null} */ #ws = null;
  /** The token the live session authenticated (or last refreshed) with. */
  #sessionToken = "";
  #retryTimer = null;
  #stableTimer = null;
  #refreshTimer = null;

  #nextId = 0;
  /** @type {Request[]} */ #queue = [];
  /** @type {Map<number, Request>} */ #pending = new Map();
  /** @type {Map<string, RoomState>} */ #rooms = new Map();

  /** @type {string | null} */ #user = null;
  /** @type {string | null} */ #session = null;

  /**
   * @param {string} url The gateway endpoint, e.g. `wss://chat.example.com/ws`.
   *   Never put the token in it.
   * @param {WsGateOptions} options `token` or `getToken` is required.
   */
  constructor(url, options = {}) {
    if (typeof url !== "string" || url === "") {
      throw new TypeError("WsGate: url must be a non-empty string");
    }
    const {
      token,
      getToken,
      baseMs = 1000,
      capMs = 30000,
      stableMs = 10000,
      requestTimeoutMs = 10000,
      WebSocket: WebSocketCtor = globalThis.WebSocket,
      random = Math.random,
      now = Date.now,
      setTimeout: setTimer = globalThis.setTimeout,
      clearTimeout: clearTimer = globalThis.clearTimeout,
      onlineTarget = typeof globalThis.addEventListener === "function" ? globalThis : null,
    } = options;
    if (getToken !== undefined && typeof getToken !== "function") {
      throw new TypeError("WsGate: getToken must be a function");
    }
    if (getToken === undefined && (typeof token !== "string" || token === "")) {
      throw new TypeError("WsGate: pass { token } or { getToken }");
    }
    if (typeof WebSocketCtor !== "function") {
      throw new TypeError("WsGate: no WebSocket implementation available");
    }
    this.#url = url;
    this.#token = token;
    this.#getToken = getToken;
    this.#baseMs = baseMs;
    this.#capMs = capMs;
    this.#stableMs = stableMs;
    this.#requestTimeoutMs = requestTimeoutMs;
    this.#WebSocket = WebSocketCtor;
    this.#random = random;
    this.#now = now;
    // Called as plain functions: browsers refuse a native setTimeout whose
    // `this` is not the window.
    this.#setTimeout = (fn, ms) => setTimer(fn, ms);
    this.#clearTimeout = (handle) => clearTimer(handle);
    this.#onlineTarget = onlineTarget;
  }

  /** The connection state. @returns {WsGateState} */
  get state() {
    return this.#state;
  }

  /** The user id from the last `welcome`, or null. @returns {string | null} */
  get user() {
    return this.#user;
  }

  /** The session id from the last `welcome`, or null. @returns {string | null} */
  get session() {
    return this.#session;
  }

  /** Rooms the client is in or joining, re-joined after every reconnect. @returns {string[]} */
  get rooms() {
    return [...this.#rooms.keys()];
  }

  /**
   * Subscribes to an event.
   *
   * @param {string} event One of state, welcome, joined, message, presence,
   *   gap, refreshed, backoff, error.
   * @param {(payload: any) => void} fn
   * @returns {() => void} A function that unsubscribes.
   */
  on(event, fn) {
    if (!EVENTS.has(event)) throw new TypeError(`WsGate: unknown event "${event}"`);
    if (typeof fn !== "function") throw new TypeError("WsGate: listener must be a function");
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /**
   * Removes a listener added with `on`.
   *
   * @param {string} event
   * @param {(payload: any) => void} fn
   */
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /**
   * Starts connecting, and keeps the connection up until `close()` or a
   * fatal close code. Calling it while already active does nothing; calling
   * it after a stop starts afresh.
   */
  connect() {
    if (this.#active) return;
    this.#active = true;
    this.#stopped = null;
    this.#attempt = 0;
    this.#onlineTarget?.addEventListener("online", this.#onOnline);
    this.#setState("connecting");
    this.#open();
  }

  /**
   * Closes the connection for good: no reconnect, every waiting request
   * rejects with `{type:"close", code:1000}`, and the room list is cleared.
   */
  close() {
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(CLOSE_NORMAL, "client closed");
      } catch {
        // Already closing: nothing more to do.
      }
    }
    this.#stop(CLOSE_NORMAL, "closed by client");
    this.#rooms.clear();
    this.#setState("closed");
  }

  /**
   * Joins a room. The room is re-joined after every reconnect until `leave`.
   * Before the socket is open the request waits for it; a join in flight
   * when the connection drops is repeated on the next connection.
   *
   * @param {string} room
   * @returns {Promise<object>} The `joined` reply; rejects with the server's
   *   `error` object, a timeout `Error`, or `{type:"close"}` on a stop.
   */
  join(room) {
    if (this.#stopped) return Promise.reject(closeError(this.#stopped));
    if (!this.#rooms.has(room)) this.#rooms.set(room, { epoch: null, offset: 0, joined: false });
    return this.#request("join", { room });
  }

  /**
   * Leaves a room; it is no longer re-joined. While disconnected, with no
   * join of that room outstanding, there is nothing to tell the gateway (the
   * room simply is not re-joined) and the promise resolves at once with
   * `{type:"left", room}`.
   *
   * @param {string} room
   * @returns {Promise<object>} The `left` reply.
   */
  leave(room) {
    if (this.#stopped) return Promise.reject(closeError(this.#stopped));
    this.#rooms.delete(room);
    const joinOutstanding = [...this.#queue, ...this.#pending.values()].some(
      (req) => req.type === "join" && req.body.room === room,
    );
    if (!this.#isOpen() && !joinOutstanding) return Promise.resolve({ type: "left", room });
    return this.#request("leave", { room });
  }

  /**
   * Publishes `data` to every other session in a joined room. A publish in
   * flight when the connection drops rejects with `{type:"close"}` rather
   * than being repeated, since it may already have been delivered.
   *
   * @param {string} room
   * @param {unknown} data Any JSON value.
   * @returns {Promise<object>} The `ack` reply.
   */
  publish(room, data) {
    if (this.#stopped) return Promise.reject(closeError(this.#stopped));
    return this.#request("publish", { room, data });
  }

  // ---------------------------------------------------------------------
  // Connection lifecycle

  /**
   * Makes one connection attempt: token first, then the socket. The state
   * stays as it is: "connecting" at first, "reconnecting" after a failure.
   */
  async #open() {
    const generation = ++this.#generation;
    let token;
    try {
      token = await this.#fetchToken();
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#emit("error", { type: "token", message: errorMessage(err) });
      this.#scheduleRetry();
      return;
    }
    if (generation !== this.#generation) return;

    let ws;
    try {
      ws = new this.#WebSocket(this.#url, [PROTOCOL, BEARER_PREFIX + token]);
    } catch (err) {
      this.#emit("error", { type: "socket", message: errorMessage(err) });
      this.#scheduleRetry();
      return;
    }
    this.#ws = ws;
    this.#sessionToken = token;
    ws.onopen = () => this.#handleOpen(ws);
    ws.onmessage = (event) => this.#handleFrame(ws, event.data);
    ws.onclose = (event) => this.#handleClose(ws, event);
    // A close event always follows an error event, and carries more.
    ws.onerror = () => {};
  }

  /** @returns {Promise<string>} The token for the next attempt or refresh. */
  async #fetchToken() {
    if (!this.#getToken) return /** @type {string} */ (this.#token);
    const token = await this.#getToken();
    if (typeof token !== "string" || token === "") {
      throw new Error("getToken() returned no token");
    }
    return token;
  }

  /**
   * Waits a random time in [0, min(cap, base·2ⁿ)] (full jitter), then tries
   * again. n grows with every wait and resets after a stable connection.
   *
   * @param {number} [code] Close code of the drop that caused the wait.
   * @param {string} [reason]
   */
  #scheduleRetry(code, reason) {
    const attempt = this.#attempt++;
    const bound = Math.min(this.#capMs, this.#baseMs * 2 ** Math.min(attempt, MAX_BACKOFF_EXPONENT));
    const delayMs = Math.min(bound, Math.floor(this.#random() * (bound + 1)));
    this.#setState("reconnecting");
    this.#retryTimer = this.#setTimeout(() => {
      this.#retryTimer = null;
      this.#open();
    }, delayMs);
    const payload = { attempt, delayMs, at: this.#now() + delayMs };
    if (code !== undefined) Object.assign(payload, { code, reason });
    this.#emit("backoff", payload);
  }

  /** The browser is back online: skip the rest of the backoff wait. */
  #onOnline = () => {
    if (this.#retryTimer === null) return;
    this.#retryTimer = this.#cancel(this.#retryTimer);
    this.#open();
  };

  /** @param {WebSocket} ws */
  #handleOpen(ws) {
    if (ws !== this.#ws) return;
    this.#stableTimer = this.#setTimeout(() => {
      this.#stableTimer = null;
      this.#attempt = 0;
    }, this.#stableMs);

    // Re-join every room first (with `since` where there is a position), then
    // send what was queued while disconnected, in call order.
    const queuedJoins = new Set(
      this.#queue.filter((req) => req.type === "join").map((req) => req.body.room),
    );
    const rejoins = [];
    for (const room of this.#rooms.keys()) {
      if (!queuedJoins.has(room)) rejoins.push(this.#internalRequest("join", { room }));
    }
    const queued = this.#queue;
    this.#queue = [];
    for (const req of [...rejoins, ...queued]) this.#transmit(req);

    this.#setState("open");
  }

  /**
   * Sorts a close into stop / retry, per the gateway's close codes.
   *
   * @param {WebSocket} ws
   * @param {{ code?: number, reason?: string }} event
   */
  #handleClose(ws, event) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    this.#stableTimer = this.#cancel(this.#stableTimer);
    this.#refreshTimer = this.#cancel(this.#refreshTimer);
    for (const room of this.#rooms.values()) room.joined = false;
    const code = event.code ?? 1006;
    const reason = event.reason ?? "";

    // Without getToken an expired token cannot be replaced: retrying would
    // only be refused (401) forever.
    if (FATAL_CLOSE_CODES.has(code) || (code === CLOSE_TOKEN_EXPIRED && !this.#getToken)) {
      this.#stop(code, reason);
      this.#emit("error", { type: "close", code, reason });
      this.#setState("closed");
      return;
    }

    // Joins are repeated on the next connection; anything else may already
    // have taken effect, so it fails rather than risk doing it twice.
    const retried = [];
    for (const req of this.#pending.values()) {
      this.#cancel(req.timer);
      if (req.type === "join") retried.push(req);
      else req.reject(closeError({ code, reason }));
    }
    this.#pending.clear();
    this.#queue = [...retried, ...this.#queue];
    this.#scheduleRetry(code, reason);
  }

  /**
   * Ends all activity and refuses every waiting request.
   *
   * @param {number} code
   * @param {string} reason
   */
  #stop(code, reason) {
    this.#active = false;
    this.#stopped = { code, reason };
    this.#generation++;
    this.#retryTimer = this.#cancel(this.#retryTimer);
    this.#stableTimer = this.#cancel(this.#stableTimer);
    this.#refreshTimer = this.#cancel(this.#refreshTimer);
    this.#onlineTarget?.removeEventListener("online", this.#onOnline);
    const waiting = [...this.#pending.values(), ...this.#queue];
    this.#pending.clear();
    this.#queue = [];
    for (const req of waiting) {
      this.#cancel(req.timer);
      req.reject(closeError(this.#stopped));
    }
  }

  // ---------------------------------------------------------------------
  // Requests

  /** @returns {boolean} Whether frames can be sent right now. */
  #isOpen() {
    return this.#ws !== null && this.#ws.readyState === WS_OPEN;
  }

  /**
   * Sends a request now, or queues it until the socket opens.
   *
   * @param {Request["type"]} type
   * @param {Record<string, unknown>} body
   * @returns {Promise<object>}
   */
  #request(type, body) {
    return new Promise((resolve, reject) => {
      const req = newRequest(type, body, resolve, reject);
      if (this.#isOpen()) this.#transmit(req);
      else this.#queue.push(req);
    });
  }

  /**
   * A request the client makes on its own (re-join, refresh). Nobody awaits
   * it, so a refusal or timeout is reported as an `error` event instead.
   *
   * @param {Request["type"]} type
   * @param {Record<string, unknown>} body
   * @returns {Request}
   */
  #internalRequest(type, body) {
    return newRequest(type, body, () => {}, (/** @type {any} */ err) => {
      if (err?.type !== "close") this.#emit("error", err);
    });
  }

  /** @param {Request} req */
  #transmit(req) {
    req.id = ++this.#nextId;
    /** @type {Record<string, unknown>} */
    const frame = { type: req.type, ...req.body };
    if (req.type === "join") {
      const room = this.#rooms.get(/** @type {string} */ (req.body.room));
      req.since = room !== undefined && room.epoch !== null;
      if (req.since) frame.since = { epoch: room.epoch, offset: room.offset };
    }
    frame.id = req.id;
    this.#pending.set(req.id, req);
    req.timer = this.#setTimeout(() => {
      if (this.#pending.get(req.id) !== req) return;
      this.#pending.delete(req.id);
      if (req.type === "join") this.#forgetUnjoined(/** @type {string} */ (req.body.room));
      const err = new Error(`wsgate: no reply to ${req.type} #${req.id} within ${this.#requestTimeoutMs} ms`);
      Object.assign(err, { type: "timeout", request: req.type });
      req.reject(err);
    }, this.#requestTimeoutMs);
    /** @type {WebSocket} */ (this.#ws).send(JSON.stringify(frame));
  }

  /**
   * A join failed: stop tracking the room, unless the gateway had already
   * confirmed it on this connection.
   *
   * @param {string} room
   */
  #forgetUnjoined(room) {
    if (this.#rooms.get(room)?.joined === false) this.#rooms.delete(room);
  }

  // ---------------------------------------------------------------------
  // Incoming frames

  /**
   * @param {WebSocket} ws
   * @param {unknown} data
   */
  #handleFrame(ws, data) {
    if (ws !== this.#ws || typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg === null || typeof msg !== "object") return;

    if (REPLY_TYPES.has(msg.type)) {
      this.#handleReply(msg);
    } else if (msg.type === "message") {
      this.#handleMessage(msg);
    } else if (msg.type === "presence") {
      this.#emit("presence", msg);
    } else if (msg.type === "welcome") {
      this.#user = msg.user ?? null;
      this.#session = msg.session ?? null;
      this.#emit("welcome", msg);
      this.#scheduleRefresh(msg.expires_at);
    }
    // Unknown types are ignored, so the gateway can add some.
  }

  /**
   * Delivers a message unless it repeats one already delivered, and records
   * the room's position for recovery.
   *
   * @param {any} msg
   */
  #handleMessage(msg) {
    const room = this.#rooms.get(msg.room);
    if (room && msg.epoch != null && typeof msg.offset === "number") {
      if (msg.epoch === room.epoch && msg.offset <= room.offset) return;
      // Same epoch: the next offset. New epoch: the room started afresh.
      room.epoch = msg.epoch;
      room.offset = msg.offset;
    }
    this.#emit("message", msg);
  }

  /** @param {any} msg A reply frame: joined, left, ack, refreshed or error. */
  #handleReply(msg) {
    const req = typeof msg.id === "number" ? this.#pending.get(msg.id) : undefined;
    if (!req) {
      // An error for no request of ours (or a late reply to a timed-out one).
      if (msg.type === "error") this.#emit("error", msg);
      // The gateway took the session out of a room (a refreshed token no longer allows it):
      // forget it, so a reconnect does not try to join it again.
      if (msg.type === "left" && msg.id === undefined && this.#rooms.delete(msg.room)) {
        this.#emit("left", msg);
      }
      return;
    }
    this.#pending.delete(msg.id);
    this.#cancel(req.timer);

    if (msg.type === "error") {
      if (req.type === "join") this.#forgetUnjoined(/** @type {string} */ (req.body.room));
      req.reject(msg);
      return;
    }
    if (msg.type === "joined") {
      const room = this.#rooms.get(/** @type {string} */ (req.body.room));
      if (room) {
        room.joined = true;
        // See RoomState: only a join without `since` may set the position.
        if (
          !req.since &&
          typeof msg.epoch === "string" &&
          Number.isInteger(msg.offset) &&
          msg.offset >= 0 &&
          room.epoch !== msg.epoch // no position yet (null), or the room started afresh
        ) {
          room.epoch = msg.epoch;
          room.offset = msg.offset;
        }
      }
      this.#emit("joined", msg);
      if (req.since && msg.recovered === false) this.#emit("gap", { room: req.body.room });
    } else if (msg.type === "refreshed") {
      this.#sessionToken = /** @type {string} */ (req.body.token);
      this.#emit("refreshed", msg);
      this.#scheduleRefresh(msg.expires_at);
    }
    req.resolve(msg);
  }

  // ---------------------------------------------------------------------
  // Token refresh

  /**
   * Plans the next refresh: 30 s before `expiresAt`, or at 80 % of the
   * token's remaining life when that comes first. Needs `getToken`.
   *
   * @param {unknown} expiresAt Epoch seconds, from `welcome` or `refreshed`.
   */
  #scheduleRefresh(expiresAt) {
    this.#refreshTimer = this.#cancel(this.#refreshTimer);
    if (!this.#getToken || typeof expiresAt !== "number") return;
    const remaining = expiresAt * 1000 - this.#now();
    const wait = Math.min(remaining - REFRESH_LEAD_MS, remaining * REFRESH_LIFE_FRACTION);
    const delay = Math.min(MAX_TIMER_MS, Math.max(MIN_REFRESH_DELAY_MS, wait));
    const ws = this.#ws;
    this.#refreshTimer = this.#setTimeout(() => {
      this.#refreshTimer = null;
      this.#refresh(ws);
    }, delay);
  }

  /**
   * Sends `refresh` with a token from `getToken()`. If that is the token the
   * session already has, there is nothing to send: the gateway will close
   * with 4001 at expiry, and the reconnect asks `getToken()` again.
   *
   * @param {WebSocket | null} ws The connection the refresh was planned for.
   */
  async #refresh(ws) {
    let token;
    try {
      token = await this.#fetchToken();
    } catch (err) {
      if (ws === this.#ws) this.#emit("error", { type: "token", message: errorMessage(err) });
      return;
    }
    if (ws !== this.#ws || !this.#isOpen() || token === this.#sessionToken) return;
    this.#transmit(this.#internalRequest("refresh", { token }));
  }

  // ---------------------------------------------------------------------
  // Helpers

  /**
   * Cancels a timer if one is set.
   *
   * @param {unknown} handle
   * @returns {null} For `this.#timer = this.#cancel(this.#timer)`.
   */
  #cancel(handle) {
    if (handle !== null) this.#clearTimeout(handle);
    return null;
  }

  /** @param {WsGateState} state */
  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  /**
   * Calls every listener of `event`. A throwing listener neither stops the
   * others nor the client; its error is rethrown asynchronously so it still
   * shows up in the console.
   *
   * @param {string} event
   * @param {unknown} payload
   */
  #emit(event, payload) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

/**
 * @param {Request["type"]} type
 * @param {Record<string, unknown>} body
 * @param {(reply: object) => void} resolve
 * @param {(reason: unknown) => void} reject
 * @returns {Request}
 */
function newRequest(type, body, resolve, reject) {
  return { type, body, resolve, reject, id: 0, timer: null, since: false };
}

/**
 * @param {{ code: number, reason: string }} close
 * @returns {{ type: "close", code: number, reason: string }}
 */
function closeError({ code, reason }) {
  return { type: "close", code, reason };
}

/** @param {unknown} err */
function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}
