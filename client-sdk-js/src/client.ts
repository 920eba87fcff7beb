/**
 * The pushrec client: one live connection (WebSocket, or SSE as fallback) that keeps the
 * subscribed feeds current, reconnects and resumes, renews the token, and tracks events.
 * Wire protocol: docs/PROTOCOL.md. No DOM needed: host objects come from the options or
 * globalThis, and page lifecycle events are used only where they exist.
 */
import { backoffDelay } from "./backoff.js";
import { closeAction } from "./codes.js";
import { Emitter } from "./emitter.js";
import { applyDiff, checksum, ItemTable, sameVersion } from "./feed.js";
import { post } from "./http.js";
import { jwtExp, memoryStorage, Tokens } from "./token.js";
import { Tracker, uuid } from "./tracker.js";
import type { Conn, Sink } from "./transport.js";
import { openSse } from "./transport-sse.js";
import { openWs } from "./transport-ws.js";
import type {
  ClientEvents,
  ClientOptions,
  DiffMessage,
  EventType,
  FeedEvent,
  Item,
  Message,
  State,
  TokenStorage,
  TrackEvent,
  TrackProps,
  Transport,
  Version,
} from "./types.js";

const G: any = globalThis;
/** Slack on top of two heartbeat intervals before a silent connection counts as dead. */
const HEARTBEAT_MARGIN = 5000;
/** Largest `track` message for the socket: the server closes with 4509 (terminal) at 16 KiB. */
const MAX_WS_MESSAGE = 15000;
/** setTimeout fires at once for delays above 2^31-1 ms (a 30-day token would do that). */
const MAX_TIMER = 2 ** 31 - 1;
/** What a pending request is rejected with when its connection ends. */
const CLOSED = { type: "closed", code: "closed", message: "connection closed" };
/** ... when an SSE `POST /v1/sse/{conn}` was not taken (non-2xx, e.g. 404 `no_stream` when it
 * reached another node, or a network error): the caller reconnects instead. */
const UNSENT = { type: "unsent" };

type Resolved = ClientOptions &
  Required<
    Pick<
      ClientOptions,
      | "feeds"
      | "transports"
      | "minDelay"
      | "maxDelay"
      | "connectTimeout"
      | "hiddenTimeout"
      | "flushInterval"
      | "batchSize"
      | "storageKey"
      | "fetch"
      | "timers"
      | "now"
      | "random"
    >
  >;

interface FeedState {
  items: Item[];
  /** Absent while the list is broken (waiting for a snapshot): nothing to resume from. */
  version?: Version;
  broken?: boolean;
  /** Recommendation id of the held list (absent: the list was not made by an experiment). */
  rec?: string;
}

interface PendingIdentify {
  token: string;
  userId: string;
  res(): void;
  rej(e: unknown): void;
}

function defaultStorage(): TokenStorage {
  try {
    // Reading localStorage throws in sandboxed frames and with storage disabled.
    if (G.localStorage) return G.localStorage;
  } catch {
    // fall through
  }
  return memoryStorage();
}

/** UTF-8 length, overestimating astral characters (6 instead of 4): only used as a bound. */
function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : 3;
  }
  return n;
}

const enc = encodeURIComponent;

export class Client extends Emitter<ClientEvents> {
  /** The connection state, also emitted as `state`. */
  state: State = "connecting";
  /** The user of the connection (from `hello`, then from an `identify` ack). */
  user?: string;

  /** The transport in use: null until the first `hello`, then fixed for the client's life. */
  get transport(): Transport | null {
    return this.sticky || null;
  }

  private o: Resolved;
  private base: string;
  private kinds: Transport[];
  private tokens: Tokens;
  private tracker: Tracker;
  private feeds = new Map<string, FeedState>();
  private table = new ItemTable();
  private conn?: Conn;
  /** The token the server bound the current connection to (it changes with `auth`/`identify`
   * acks); SSE POSTs send it as Bearer. */
  private ct = "";
  /** Transport of the current connection; `sticky` once one delivered `hello`. */
  private kind?: Transport;
  private sticky?: Transport;
  /** Index in `kinds` while no transport has delivered `hello` yet. */
  private ti = 0;
  /** Generation: bumped whenever a connection is dropped, so its late callbacks are ignored. */
  private g = 0;
  /** `hello` received on the current connection. */
  private open = false;
  private attempt = 0;
  private authRetried = false;
  private seq = 0;
  private reqs = new Map<number, [(m: Message) => void, (e: unknown) => void]>();
  private idp?: PendingIdentify;
  private hb = 25000;
  private rx = 0;
  private helloT: unknown;
  private watchT: unknown;
  private refreshT: unknown;
  private retryT: unknown;
  private hiddenT: unknown;
  private offline = false;
  private hidden = false;
  private offs: (() => void)[] = [];

  constructor(options: ClientOptions) {
    super();
    const o: Resolved = {
      url: "",
      feeds: ["home"],
      transports: ["websocket", "sse"],
      minDelay: 500,
      maxDelay: 30000,
      connectTimeout: 5000,
      hiddenTimeout: 300000,
      flushInterval: 1000,
      batchSize: 20,
      storageKey: "pushrec.anon",
      WebSocket: G.WebSocket,
      EventSource: G.EventSource,
      // Wrapped: browsers require `this` to be the window for fetch and setTimeout.
      fetch: (url, init) => G.fetch(url, init),
      timers: { setTimeout: (f, ms) => G.setTimeout(f, ms), clearTimeout: (h) => G.clearTimeout(h) },
      now: () => Date.now(),
      random: Math.random,
    };
    for (const k in options) {
      const v = options[k as keyof ClientOptions];
      if (v !== undefined) (o as any)[k] = v;
    }
    if (!o.url) throw new Error("pushrec: url is required");
    this.o = o;
    this.base = o.url.replace(/^ws/, "http").replace(/\/+$/, "");
    this.kinds = o.transports.filter((t) => (t == "websocket" ? o.WebSocket : o.EventSource));
    if (!this.kinds.length) throw new Error("pushrec: no WebSocket/EventSource (pass one in options)");
    this.tokens = new Tokens({
      base: this.base,
      token: o.token,
      getToken: o.getToken,
      storage: o.storage || defaultStorage(),
      key: o.storageKey,
      fetch: o.fetch,
      now: o.now,
    });
    this.tracker = new Tracker({
      timers: o.timers,
      interval: o.flushInterval,
      batch: o.batchSize,
      ws: (events) => {
        if (this.kind != "websocket" || !this.open) return;
        const m = { type: "track", id: ++this.seq, events };
        if (utf8Length(JSON.stringify(m)) > MAX_WS_MESSAGE || !this.conn!.send(m)) return;
        return m.id;
      },
      post: async (events, keepalive) =>
        post(o.fetch, this.base + "/v1/events", events, await this.tokens.get(), keepalive),
      beacon: (events) => {
        const t = this.tokens.token;
        const nav = G.navigator;
        // text/plain keeps it a "simple" request (no CORS preflight, which beacons cannot do);
        // the server reads the body as JSON whatever its type.
        return !!(
          t &&
          nav?.sendBeacon &&
          G.Blob &&
          nav.sendBeacon(
            `${this.base}/v1/events?token=${enc(t)}`,
            new G.Blob([JSON.stringify(events)], { type: "text/plain" }),
          )
        );
      },
      report: (b: any) => {
        const r = b?.rejected?.[0] || (b?.error && { reason: b.error, message: b.message });
        if (r) this.emit("error", { code: r.reason, message: r.message || "", terminal: false });
      },
    });
    this.listen();
    void this.connect();
  }

  /** The current list of a feed (empty until its first snapshot). */
  items(feed: string): readonly Item[] {
    return this.feeds.get(feed)?.items || [];
  }

  /** The version held for a feed; undefined before the first snapshot or while resyncing. */
  version(feed: string): Version | undefined {
    return this.feeds.get(feed)?.version;
  }

  /** The recommendation id of the list held for a feed; undefined when an experiment did not
   * make that list (or before the first snapshot). */
  rec(feed: string): string | undefined {
    return this.feeds.get(feed)?.rec;
  }

  /**
   * Track an impression of the list held for `feed`, quoting its `rec`. Returns the `event_id`,
   * or undefined (nothing sent) when the list has no `rec`. The server counts one impression per
   * list, so calling this again on a re-render is harmless.
   */
  impression(feed: string): string | undefined {
    const rec = this.rec(feed);
    return rec && this.track("impression", undefined, { rec });
  }

  /**
   * Track a click on item `itemId` of the list held for `feed`, with that list's `rec` (when it
   * has one) in `props`. Always sent: clicks also feed the visitor's profile. Returns `event_id`.
   */
  click(feed: string, itemId: string, props?: Record<string, unknown>): string {
    const rec = this.rec(feed);
    return this.track("click", itemId, rec ? { ...props, rec } : props);
  }

  /**
   * Record the visitor's decision about personalization (a `consent` event; without consent
   * the server stores nothing about them and sends non-personal lists). Returns `event_id`.
   */
  consent(personalization: boolean): string {
    return this.track("consent", undefined, { personalization });
  }

  /**
   * Record an event: `track("view", "123")`, `track("view", {item_id: "123", slot: 2})` or
   * `track("search", {query: "tv"})`. `item_id` becomes the event's field, the rest its `props`.
   * Returns the generated `event_id`.
   */
  track(type: EventType, itemOrProps?: string | null | TrackProps, props?: Record<string, unknown>): string {
    let item_id: string | null | undefined;
    let p = props;
    if (itemOrProps && typeof itemOrProps == "object") ({ item_id, ...p } = itemOrProps);
    else item_id = itemOrProps;
    const e: TrackEvent = { event_id: uuid(), type, ts: Math.floor(this.o.now()) };
    if (item_id !== undefined) e.item_id = item_id;
    if (p && Object.keys(p).length) e.props = p;
    this.tracker.add(e);
    return e.event_id;
  }

  /** Send queued events now. */
  flush(): void {
    this.tracker.flush();
  }

  /**
   * Switch the visitor to `userId`, with `token` or one from `getToken({userId})`. An anonymous
   * connection sends `identify` (over SSE as a POST) and the server merges the anonymous profile;
   * from a non-anonymous connection, or when the SSE POST is not taken, the client reconnects
   * with the new token. Resolves once the connection is bound to the user (or the reconnect has
   * started). Later reconnects and renewals use the user's token.
   */
  async identify(userId: string, token?: string): Promise<void> {
    this.tracker.flush(); // events so far belong to the previous visitor
    const t = token || (await this.tokens.forUser(userId));
    if (this.state == "closed") throw new Error("pushrec: client closed");
    return new Promise((res, rej) => {
      this.idp?.rej(new Error("pushrec: superseded by another identify"));
      this.idp = { token: t, userId, res, rej };
      if (this.open) void this.identifyNow();
    });
  }

  /** Close for good: no reconnect. Queued and unacked events are sent over HTTP. */
  close(): void {
    if (this.state == "closed") return;
    this.drop();
    this.o.timers.clearTimeout(this.hiddenT);
    this.offs.forEach((off) => off());
    this.idp?.rej(new Error("pushrec: client closed"));
    this.idp = undefined;
    this.setState("closed");
    this.tracker.resend();
  }

  // ------------------------------------------------------------------ connection lifecycle

  private async connect(): Promise<void> {
    this.drop();
    const g = this.g;
    if (this.state != "connecting") this.setState("reconnecting");
    let token: string;
    try {
      token = await this.tokens.get();
    } catch (e) {
      if (g == this.g) {
        this.emit("error", { code: "token", message: String((e as Error)?.message || e), terminal: false });
        this.retry();
      }
      return;
    }
    if (g != this.g) return;
    this.table = new ItemTable(); // the item table lives as long as one connection
    const kind = (this.kind = this.sticky || this.kinds[this.ti]);
    this.ct = token;
    const sink: Sink = {
      msg: (m) => g == this.g && this.onMessage(m),
      end: (code, reason) => g == this.g && this.ended(code, reason),
    };
    let q = "feeds=" + enc(this.o.feeds.join(","));
    const have: string[] = [];
    this.feeds.forEach((s, f) => s.version && have.push(`${f}:${s.version[0]}:${s.version[1]}`));
    if (have.length) q += "&have=" + enc(have.join(","));
    try {
      this.conn =
        kind == "websocket"
          ? openWs(this.o.WebSocket!, `${this.base.replace(/^http/, "ws")}/v1/ws?${q}`, token, sink)
          : openSse(this.o.EventSource!, this.o.fetch, this.base, q, () => this.ct, sink);
    } catch (e) {
      return void sink.end(1006, String(e));
    }
    this.helloT = this.after(() => this.ended(1006, "no hello in time"), this.o.connectTimeout);
  }

  /** Forget the current connection (closing it) and everything that depends on it. */
  private drop(): void {
    this.g++;
    this.conn?.close();
    this.conn = undefined;
    this.open = false;
    for (const h of [this.helloT, this.watchT, this.refreshT, this.retryT]) this.o.timers.clearTimeout(h);
    this.reqs.forEach(([, rej]) => rej(CLOSED));
    this.reqs.clear();
  }

  /** The connection ended (close code, SSE `close` event, failure or timeout). */
  private ended(code: number, reason: string): void {
    const wasOpen = this.open;
    this.drop();
    const action = closeAction(code);
    // First connect: a transport that failed before `hello` is skipped for the next one.
    if (!wasOpen && !this.sticky && action == "network" && ++this.ti < this.kinds.length) {
      return void this.connect();
    }
    if (!this.sticky) this.ti = 0;
    if (code == 4501 && this.tokens.refreshable() && !this.authRetried) {
      // Once per successful connection: a fresh token that is refused again is terminal.
      this.authRetried = true;
      this.tokens.invalidate();
      return void this.connect();
    }
    if (action == "terminal") {
      this.close();
      return this.emit("error", { code, message: reason, terminal: true });
    }
    this.retry();
  }

  private retry(): void {
    this.setState("reconnecting");
    const { minDelay, maxDelay, random } = this.o;
    this.retryT = this.after(() => this.connect(), backoffDelay(this.attempt++, minDelay, maxDelay, random));
  }

  private pause(): void {
    if (this.state == "closed") return;
    this.drop();
    this.setState("paused");
  }

  /** Back online or visible: reconnect now, with a fresh backoff. */
  private resume(): void {
    if (this.state == "closed" || this.state == "open" || this.offline || this.hidden) return;
    this.attempt = 0;
    void this.connect();
  }

  /** Page lifecycle, only where globalThis is an event target (browsers; not RN or Node). */
  private listen(): void {
    if (typeof G.addEventListener != "function") return;
    const on = (target: any, type: string, fn: () => void) => {
      target.addEventListener(type, fn);
      this.offs.push(() => target.removeEventListener(type, fn));
    };
    on(G, "offline", () => {
      this.offline = true;
      this.pause();
    });
    on(G, "online", () => {
      this.offline = false;
      this.resume();
    });
    on(G, "pagehide", () => this.tracker.beacon());
    const doc = G.document;
    if (doc?.addEventListener)
      on(doc, "visibilitychange", () => {
        this.o.timers.clearTimeout(this.hiddenT);
        if (doc.visibilityState == "hidden") {
          // The page may never come back (mobile browsers kill hidden tabs): send events now.
          this.tracker.beacon();
          this.hiddenT = this.after(() => {
            this.hidden = true;
            this.pause();
          }, this.o.hiddenTimeout);
        } else if (this.hidden) {
          this.hidden = false;
          this.resume();
        }
      });
  }

  // ------------------------------------------------------------------ messages

  private onMessage(m: Message): void {
    this.rx = this.o.now(); // any message is a sign of life
    const type = m.type;
    if (type == "hello") this.onHello(m);
    else if (type == "snapshot") {
      const items: Item[] = Array.isArray(m.items) ? m.items : [];
      items.forEach((i) => this.table.put(i));
      this.setFeed(m.feed, items, m.version, m.rec);
    } else if (type == "diff") this.onDiff(m as DiffMessage);
    else if (type == "ping") {
      // Over SSE there is nothing to answer with (POST /v1/sse/{conn} takes no pong).
      if (this.kind == "websocket") this.conn?.send({ type: "pong" });
    } else if (type == "ack" || type == "error") {
      if (type == "error") this.emit("error", { code: m.code, message: m.message || "", terminal: false });
      if (this.tracker.answer(m.ref, m)) return;
      const r = this.reqs.get(m.ref);
      this.reqs.delete(m.ref);
      r?.[type == "ack" ? 0 : 1](m);
    }
  }

  private onHello(m: Message): void {
    this.o.timers.clearTimeout(this.helloT);
    this.open = true;
    this.sticky = this.kind; // from now on this transport only
    this.attempt = 0;
    this.authRetried = false;
    this.user = m.user;
    this.hb = (m.heartbeat > 0 ? m.heartbeat : 25) * 1000;
    this.schedRefresh(m.exp);
    this.watch();
    this.tracker.resend(); // unacked batches of the previous socket, and anything queued
    void this.identifyNow();
    this.emit("open", { transport: this.kind!, user: m.user });
    this.setState("open");
  }

  private onDiff(d: DiffMessage): void {
    const st = this.feeds.get(d.feed);
    if (st?.broken) return; // a resync is under way: only a snapshot repairs the list
    const held = st?.items || [];
    if (!st || !sameVersion(st.version, d.base)) return this.resync(d.feed, held, "base is not the held version");
    const items = applyDiff(held, d, this.table);
    if (!items) return this.resync(d.feed, held, "diff does not apply");
    if (checksum(items) != d.sum) return this.resync(d.feed, held, "checksum mismatch");
    this.setFeed(d.feed, items, d.version, d.rec, d);
  }

  /** Hold a new list; `rec` replaces the previous one (a list without it clears it). */
  private setFeed(feed: string, items: Item[], version: Version, rec: unknown, diff?: DiffMessage): void {
    const e: FeedEvent = { feed, items, version };
    if (diff) e.diff = diff;
    if (rec && typeof rec == "string") e.rec = rec;
    this.feeds.set(feed, { items, version, rec: e.rec });
    this.emit("feed", e);
  }

  /**
   * The held list of `feed` is broken: ask for a snapshot and ignore its diffs until then. The
   * list stays visible meanwhile. Over SSE the request is a POST; when it cannot be delivered the
   * client reconnects, and since a broken feed holds no version, it gets a snapshot.
   */
  private resync(feed: string, items: Item[], why: string): void {
    // The last good list stays shown, and with it its rec.
    this.feeds.set(feed, { items, broken: true, rec: this.rec(feed) });
    const g = this.g;
    void Promise.resolve(this.conn?.send({ type: "resync", feed })).then((ok) => {
      if (!ok && g == this.g) void this.connect();
    });
    this.emit("error", { code: "resync", message: `${feed}: ${why}`, terminal: false });
  }

  /** Watchdog: probe with `ping` after one silent interval, reconnect after two (+ margin). */
  private watch = (): void => {
    const idle = this.o.now() - this.rx;
    const limit = 2 * this.hb + HEARTBEAT_MARGIN;
    if (idle >= limit) return this.ended(1006, "heartbeat timeout");
    if (idle >= this.hb) void this.conn?.send({ type: "ping" });
    this.watchT = this.after(this.watch, Math.min(this.hb, limit - idle));
  };

  // ------------------------------------------------------------------ token and identity

  /**
   * Renew at 80 % of the remaining lifetime, or 60 s before expiry when that is earlier and
   * still leaves half of it (tokens of two minutes or more). So a 5 s token renews after 4 s,
   * never at once on connect, unless it is expired or expires within 1 s. `min` (after a renewal)
   * keeps a clock far ahead of the server's from renewing in a tight loop.
   */
  private schedRefresh(exp?: number, min = 0): void {
    this.o.timers.clearTimeout(this.refreshT);
    const t = this.tokens.token;
    const e = typeof exp == "number" ? exp : t && jwtExp(t);
    if (!e || !this.tokens.refreshable()) return;
    const left = e * 1000 - this.o.now();
    const d = left <= 1000 ? 0 : left < 120000 ? left * 0.8 : Math.min(left * 0.8, left - 60000);
    this.refreshT = this.after(() => this.refresh(), Math.max(d, min));
  }

  /**
   * Renew the token over the open connection: an `auth` message (over SSE, a POST whose `ack`
   * arrives on the stream). When the POST is not taken, reconnect (resuming) with the new token.
   */
  private async refresh(): Promise<void> {
    const g = this.g;
    try {
      const token = await this.tokens.refresh();
      if (g != this.g) return;
      const exp = (await this.request({ type: "auth", token })).exp;
      this.ct = token;
      this.schedRefresh(exp, 1000);
    } catch (e: any) {
      if (g != this.g) return;
      if (e == UNSENT) return void this.connect();
      // Server answers (`error` messages, a closed connection) were reported already.
      if (!e?.type) this.emit("error", { code: "token", message: String(e?.message || e), terminal: false });
    }
  }

  /**
   * Send `identify` (WebSocket message, or SSE POST) and wait for its `ack`: the server merges
   * the anonymous profile, rebinds the connection and sends the user's snapshots. Reconnect as
   * the user instead when the connection is not anonymous (`forbidden`) or the POST was not taken.
   */
  private async identifyNow(): Promise<void> {
    const p = this.idp;
    if (!p) return;
    this.idp = undefined;
    try {
      this.user = (await this.request({ type: "identify", token: p.token })).user;
      this.tokens.set(p.token, p.userId);
      this.ct = p.token;
      this.schedRefresh();
      return p.res();
    } catch (e: any) {
      // The connection dropped: identify again after the reconnect.
      if (e == CLOSED && this.state != "closed") return void (this.idp ||= p);
      if (e?.code != "forbidden" && e != UNSENT) return p.rej(e);
    }
    // Not resuming the previous user's versions.
    this.tokens.set(p.token, p.userId);
    this.feeds.forEach((s) => (s.version = undefined));
    p.res();
    void this.connect();
  }

  /**
   * A request, settled by its `ack` (resolve) or `error` (reject); rejected with CLOSED when the
   * socket cannot take it or the connection ends, UNSENT when an SSE POST is not taken.
   */
  private request(m: Message): Promise<Message> {
    return new Promise((res, rej) => {
      const id = ++this.seq;
      this.reqs.set(id, [res, rej]); // first: over SSE the ack may come before the POST's answer
      void Promise.resolve(this.conn?.send({ ...m, id })).then((ok) => {
        if (!ok && this.reqs.delete(id)) rej(this.kind == "sse" ? UNSENT : CLOSED);
      });
    });
  }

  // ------------------------------------------------------------------ helpers

  private setState(s: State): void {
    if (s == this.state) return;
    this.state = s;
    this.emit("state", s);
  }

  private after(fn: () => void, ms: number): unknown {
    return this.o.timers.setTimeout(fn, Math.min(Math.max(ms, 0), MAX_TIMER));
  }
}
