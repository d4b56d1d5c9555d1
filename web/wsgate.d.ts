/**
 * Type declarations for `wsgate.js`, the browser client of the wsgate
 * WebSocket gateway (wire protocol `wsgate.v1`).
 */

/** Connection state, reported by the `state` event. */
export type WsGateState = "connecting" | "open" | "reconnecting" | "closed";

/** A JSON value, as carried in `publish` data. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Sent once per connection, right after the handshake. */
export interface Welcome {
  type: "welcome";
  user: string;
  session: string;
  /** Token expiry, epoch seconds. */
  expires_at: number;
}

/** Reply to a join; also emitted as the `joined` event, re-joins included. */
export interface Joined {
  type: "joined";
  room: string;
  epoch: string;
  /**
   * The room's last offset (0 when empty). After a join with `since` it is where the
   * replay will end, not a position; after a join without `since` everything after it
   * arrives live (the client starts tracking the room from it).
   */
  offset: number;
  /** False when a join with `since` could not replay everything missed. */
  recovered: boolean;
  /** Distinct users in the room. */
  members: string[];
  id?: number;
}

/** Reply to a leave. Resolved locally (without `id`) for a leave made while disconnected.
 * Sent unasked, with `reason: "forbidden"`, when a refreshed token no longer allows the room. */
export interface Left {
  type: "left";
  room: string;
  id?: number;
  reason?: string;
}

/** Reply to a publish. */
export interface Ack {
  type: "ack";
  id: number;
  offset: number;
}

/** Reply to a token refresh. */
export interface Refreshed {
  type: "refreshed";
  expires_at: number;
  id?: number;
}

/** A message published in a room. */
export interface Message<D = Json> {
  type: "message";
  room: string;
  /** The publisher's user id; `"@server"` for the admin API. */
  from: string;
  data: D;
  epoch: string;
  offset: number;
  /** Epoch milliseconds. */
  ts: number;
}

/** A user's first session joined, or last session left, a room. */
export interface Presence {
  type: "presence";
  room: string;
  event: "join" | "leave";
  user: string;
}

/** The gateway refused a request (or reported a problem with no request). */
export interface ServerError {
  type: "error";
  id?: number;
  code:
    | "bad_request"
    | "forbidden"
    | "not_joined"
    | "rate_limited"
    | "too_many_rooms"
    | "token_invalid"
    | "internal"
    | (string & {});
  message: string;
}

/** The connection closed: a stop, or a request lost to a drop. */
export interface CloseError {
  type: "close";
  code: number;
  reason: string;
}

/** `getToken()` failed or returned no token. */
export interface TokenError {
  type: "token";
  message: string;
}

/** The WebSocket constructor threw (e.g. a malformed URL). */
export interface SocketError {
  type: "socket";
  message: string;
}

/** A request got no reply within `requestTimeoutMs`. */
export interface TimeoutError extends Error {
  type: "timeout";
  request: "join" | "leave" | "publish" | "refresh";
}

/** What the `error` event carries. */
export type WsGateErrorEvent = ServerError | CloseError | TokenError | SocketError | TimeoutError;

/** What a request promise rejects with. */
export type WsGateRejection = ServerError | CloseError | TimeoutError;

/** A reconnect wait has started. */
export interface Backoff {
  /** The backoff exponent n: the wait was drawn from [0, min(cap, base·2ⁿ)]. */
  attempt: number;
  delayMs: number;
  /** When the next attempt starts, epoch milliseconds (per the `now` option). */
  at: number;
  /** Close code of the drop that caused the wait; absent after a failed `getToken`. */
  code?: number;
  reason?: string;
}

export interface WsGateEvents {
  state: WsGateState;
  welcome: Welcome;
  joined: Joined;
  message: Message;
  presence: Presence;
  /** A re-join came back `recovered: false`: messages were missed; reload from your backend. */
  gap: { room: string };
  /** The gateway took the session out of a room it did not ask to leave: a refreshed token
   * no longer allows it (`reason: "forbidden"`). The room is not re-joined after a reconnect. */
  left: Left;
  refreshed: Refreshed;
  backoff: Backoff;
  error: WsGateErrorEvent;
}

export interface WsGateCommonOptions {
  /** Backoff base in ms: attempt n waits up to base·2ⁿ. Default 1000. */
  baseMs?: number;
  /** Longest backoff wait in ms. Default 30000. */
  capMs?: number;
  /** A connection open this long resets the backoff. Default 10000. */
  stableMs?: number;
  /** How long a sent request waits for its reply. Default 10000. */
  requestTimeoutMs?: number;
  /** WebSocket constructor. Default `globalThis.WebSocket`. */
  WebSocket?: new (url: string, protocols: string[]) => WebSocket;
  /** Uniform in [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Epoch milliseconds. Default `Date.now`. */
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  /** Where to listen for `online`. Default `globalThis` when it is an event target; null disables. */
  onlineTarget?: Pick<EventTarget, "addEventListener" | "removeEventListener"> | null;
}

export type WsGateOptions = WsGateCommonOptions &
  (
    | { /** A fixed JWT. */ token: string; getToken?: undefined }
    | {
        token?: undefined;
        /** Called before every connection attempt and before the token expires. */
        getToken: () => string | Promise<string>;
      }
  );

/** Every event name `on()` accepts. */
export declare const EVENT_NAMES: readonly (keyof WsGateEvents)[];

export declare class WsGate {
  /**
   * @param url The gateway endpoint, e.g. `wss://chat.example.com/ws`. Never put the token in it.
   */
  constructor(url: string, options: WsGateOptions);

  readonly state: WsGateState;
  /** From the last `welcome`. */
  readonly user: string | null;
  /** From the last `welcome`. */
  readonly session: string | null;
  /** Rooms joined or being joined; re-joined after every reconnect. */
  readonly rooms: string[];

  /** Subscribes; returns a function that unsubscribes. */
  on<E extends keyof WsGateEvents>(event: E, fn: (payload: WsGateEvents[E]) => void): () => void;
  off<E extends keyof WsGateEvents>(event: E, fn: (payload: WsGateEvents[E]) => void): void;

  /**
   * Connects and keeps reconnecting until `close()` or a close code that retrying cannot
   * help: 1003, 1007, 1008, 1009, 4003, and 4001 without `getToken`. Any other code
   * (1001, 1006, 1011, 1012, 1013, 4000, …) reconnects with backoff and recovers the rooms.
   */
  connect(): void;
  /** Closes for good: no reconnect; waiting requests reject with `{type:"close", code:1000}`. */
  close(): void;

  /** Rejects with {@link WsGateRejection}. Retried across a reconnect. */
  join(room: string): Promise<Joined>;
  /** Rejects with {@link WsGateRejection}. */
  leave(room: string): Promise<Left>;
  /** Rejects with {@link WsGateRejection}; never repeated after a drop. */
  publish(room: string, data: Json): Promise<Ack>;
}
