/**
 * Test doubles for driving `WsGate` without a network or real time:
 * a manual clock, a scriptable WebSocket, and a harness wiring them up.
 */

import { WsGate, EVENT_NAMES } from "../../web/wsgate.js";

/** Every event a `WsGate` emits; the harness records them all. */
export { EVENT_NAMES };

/** Lets pending promise chains and async functions run to their next wait. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A clock that moves only when told to; timers fire in due order. */
export class FakeClock {
  now = Date.UTC(2026, 0, 1);
  #timers = new Map();
  #seq = 0;

  nowFn = () => this.now;

  setTimeout = (fn, ms) => {
    const id = ++this.#seq;
    this.#timers.set(id, { id, at: this.now + Math.max(0, ms), fn });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** Number of timers still due. */
  get timerCount() {
    return this.#timers.size;
  }

  /**
   * Moves time forward by `ms`, firing every timer due on the way and letting
   * the async work each one starts settle before the next.
   */
  async advance(ms) {
    const target = this.now + ms;
    for (;;) {
      await flush();
      let next = null;
      for (const timer of this.#timers.values()) {
        if (timer.at <= target && (!next || timer.at < next.at)) next = timer;
      }
      if (!next) break;
      this.#timers.delete(next.id);
      this.now = next.at;
      next.fn();
    }
    this.now = target;
    await flush();
  }
}

/**
 * A fresh fake WebSocket class plus the list of sockets it created. The test
 * plays the server: `accept()`, `receive(frame)`, `drop(code)`.
 */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      /** Parsed frames the client sent. */
      this.sent = [];
      /** `{code, reason}` once the client called close(). */
      this.closedByClient = null;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("send() on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }

    /** The handshake succeeded. */
    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }

    /** The server sends a frame (an object is serialized). */
    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    /** The connection ends with `code` (1006 before accept = refused handshake). */
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** Frames of one type the client sent. */
    sentOf(type) {
      return this.sent.filter((frame) => frame.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

/**
 * A `WsGate` on a fake clock and fake sockets, recording every event.
 * `random` defaults to 0.5; `options` override anything.
 */
export function harness(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const gate = new WsGate(options.url ?? "wss://gw.example.test/ws", {
    token: "header.payload.sig",
    WebSocket: FakeWebSocket,
    now: clock.nowFn,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    onlineTarget: null,
    ...options,
  });
  const events = [];
  for (const name of EVENT_NAMES) gate.on(name, (payload) => events.push({ event: name, payload }));
  return {
    gate,
    clock,
    sockets,
    events,
    /** Payloads of one event, in order. */
    of: (name) => events.filter((e) => e.event === name).map((e) => e.payload),
    /** The most recent socket. */
    socket: () => sockets.at(-1),
  };
}

/** Connects and completes the handshake of the first socket. */
export async function connected(options) {
  const h = harness(options);
  h.gate.connect();
  await flush();
  h.socket().accept();
  return h;
}

/** Random source giving the largest delay the backoff bound allows. */
export const maxRandom = () => 1 - Number.EPSILON;

/**
 * Tracks whether a promise settled, without awaiting it.
 * @returns {{ settled: boolean, value?: unknown, error?: unknown, promise: Promise<void> }}
 */
export function watch(promise) {
  const state = { settled: false };
  state.promise = promise.then(
    (value) => Object.assign(state, { settled: true, value }),
    (error) => Object.assign(state, { settled: true, error }),
  );
  return state;
}
