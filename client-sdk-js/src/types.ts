/**
 * Public types of the SDK. They describe the wire messages of docs/PROTOCOL.md and the host
 * objects the SDK needs. The host objects are declared here (not taken from the DOM lib) so the
 * core type-checks and runs in browsers, React Native and Node alike.
 */

/** `[epoch, n]`: versions of one epoch are ordered by `n`; other epochs are unrelated. */
export type Version = [epoch: string, n: number];

/** An item payload. Fields are never null on the wire; absent fields are omitted. */
export interface Item {
  id: string;
  title?: string;
  category?: string;
  price?: number;
  image?: string;
  [field: string]: unknown;
}

/** An order op of a diff: an item id, or `[start, length]` copying a run of the base list. */
export type OrderOp = string | [start: number, length: number];

export interface DiffMessage {
  type: "diff";
  feed: string;
  base: Version;
  version: Version;
  order: OrderOp[];
  items?: Record<string, Item>;
  patch?: Record<string, Record<string, unknown>>;
  sum: string;
  /** The recommendation id of the list it produces, when an experiment made that list. */
  rec?: string;
}

/** Any server message; the SDK narrows on `type`. */
export type Message = { type: string; [field: string]: any };

export type Transport = "websocket" | "sse";

/** "paused": closed on purpose while offline or hidden; "closed": for good (close() or terminal). */
export type State = "connecting" | "open" | "reconnecting" | "paused" | "closed";

export interface FeedEvent {
  feed: string;
  /** The whole new list (treat as read-only; unchanged items keep their object identity). */
  items: readonly Item[];
  version: Version;
  /** The diff that produced this list; absent for a snapshot. */
  diff?: DiffMessage;
  /**
   * The list's recommendation id (`<epoch>.<n>~<tag>`), present only when the list was made for
   * the user in an A/B experiment. `impression(feed)` and `click(feed, itemId)` quote it.
   */
  rec?: string;
}

export interface ErrorEvent {
  /** A close code (number) or an error code string (server `error` message, "token", ...). */
  code: number | string;
  message: string;
  /** True when the client gave up: state is "closed" and it will not reconnect. */
  terminal: boolean;
}

/** Emitted on every `hello` (each connection that opened), just before `state` "open". */
export interface OpenEvent {
  /** The transport of this connection (also `client.transport`). */
  transport: Transport;
  /** The user the connection is bound to. */
  user: string;
}

export interface ClientEvents {
  state: State;
  open: OpenEvent;
  feed: FeedEvent;
  error: ErrorEvent;
}

export type EventType =
  | "view"
  | "click"
  | "add_to_cart"
  | "remove_from_cart"
  | "purchase"
  | "search"
  | "impression"
  | "consent";

/** An event as sent to `POST /v1/events` or in a `track` message. */
export interface TrackEvent {
  event_id: string;
  type: EventType;
  item_id?: string | null;
  ts: number;
  props?: Record<string, unknown>;
}

/** Props of `track()`; `item_id` is lifted to the event's top-level field. */
export type TrackProps = { item_id?: string | null; [prop: string]: unknown };

/** Returns a token for the user (`userId` undefined: the current visitor); null/undefined
 * means "no user token: use an anonymous one" (only valid while `userId` is undefined). */
export type GetToken = (ctx: {
  userId?: string;
}) => string | null | undefined | Promise<string | null | undefined>;

/** localStorage, React Native AsyncStorage, or anything with these two methods. */
export interface TokenStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
}

export interface ResponseLike {
  ok: boolean;
  status: number;
  json(): Promise<any>;
}

export type FetchLike = (
  url: string,
  init?: {
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    keepalive?: boolean;
    signal?: unknown;
  },
) => Promise<ResponseLike>;

export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface EventSourceLike {
  addEventListener(type: string, listener: (ev: { type: string; data?: unknown }) => void): void;
  close(): void;
}
export type EventSourceCtor = new (url: string) => EventSourceLike;

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ClientOptions {
  /** Base URL of the push server, e.g. "https://push.example.com" (ws(s):// also accepted). */
  url: string;
  /** A visitor JWT. Without `getToken` it cannot be renewed. */
  token?: string;
  /** Called for the first token (when `token` is absent), before expiry, after a 4501 close,
   * and by `identify(userId)`. */
  getToken?: GetToken;
  /** Feeds to subscribe to. Default `["home"]`. */
  feeds?: string[];
  /** Transports in order of preference. Default `["websocket", "sse"]`. */
  transports?: Transport[];
  /** Reconnect backoff (full jitter): delay = random(0, min(maxDelay, minDelay * 2^attempt)). */
  minDelay?: number;
  maxDelay?: number;
  /** A transport that has not delivered `hello` after this many ms failed. Default 5000. */
  connectTimeout?: number;
  /** Close the connection after the page was hidden this long (ms). Default 300000. */
  hiddenTimeout?: number;
  /** Track batching: flush after this many ms or `batchSize` events. Defaults 1000 / 20. */
  flushInterval?: number;
  batchSize?: number;
  /** Where the anonymous token is kept. Default localStorage when present, else memory. */
  storage?: TokenStorage;
  /** Storage key of the anonymous token. Default "pushrec.anon". */
  storageKey?: string;
  /** Host objects; default to the globals of the same name. */
  WebSocket?: WebSocketCtor;
  EventSource?: EventSourceCtor;
  fetch?: FetchLike;
  /** Test hooks: timers, clock (ms) and random source (backoff). */
  timers?: Timers;
  now?: () => number;
  random?: () => number;
}
