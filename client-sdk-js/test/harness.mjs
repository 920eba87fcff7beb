// Test doubles: a fake clock/timers, fake WebSocket, EventSource and fetch, and `setup()`, which
// builds a Client on them and offers one "server" API for both transports, so that the same test
// body runs over WebSocket and SSE.
import { Client, checksum, crc32 } from "../dist/index.js";

export const T0 = 1_700_000_000_000;
export const BASE = "https://push.test";

/** Let pending promise callbacks and I/O-less async steps run. */
export async function settle(rounds = 8) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

/** Deterministic timers: nothing fires until advance(). */
export function fakeTimers(start = T0) {
  let now = start;
  let seq = 0;
  const q = new Map();
  return {
    now: () => now,
    setTimeout(fn, ms) {
      q.set(++seq, { at: now + ms, fn, ms });
      return seq;
    },
    clearTimeout(id) {
      q.delete(id);
    },
    /** Delays (ms) of the timers waiting now. */
    pending: () => [...q.values()].map((t) => t.ms),
    /** Run every timer due within `ms`, in order, letting promises settle after each. */
    async advance(ms) {
      const end = now + ms;
      await settle();
      for (;;) {
        let next;
        for (const [id, t] of q) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
        if (!next) break;
        q.delete(next[0]);
        now = next[1].at;
        next[1].fn();
        await settle();
      }
      now = end;
    },
  };
}

const b64url = (s) => Buffer.from(s).toString("base64url");
export const jwt = (claims) =>
  `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}.sig`;
export const tokenFor = (sub, expInS = 3600, now = T0) => jwt({ sub, exp: Math.floor(now / 1000) + expInS });

/** fetch double: records calls; `handler(call)` may return {status, body}. */
export function fakeFetch(handler) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const call = {
      url,
      method: init.method || "GET",
      headers: init.headers || {},
      body: init.body === undefined ? undefined : JSON.parse(init.body),
      keepalive: init.keepalive,
    };
    calls.push(call);
    const r = (await handler?.(call)) ?? defaultAnswer(call);
    if (r instanceof Error) throw r;
    return { status: r.status, ok: r.status >= 200 && r.status < 300, json: async () => r.body };
  };
  fetch.calls = calls;
  return fetch;
}

let anonCount = 0;
function defaultAnswer(call) {
  const path = call.url.slice(BASE.length).split("?")[0];
  if (path === "/v1/anonymous") {
    const bearer = call.headers.Authorization;
    const user = bearer ? "anon:same" : `anon:${++anonCount}`;
    return { status: 200, body: { user_id: user, token: tokenFor(user, 30 * 86400), expires_at: 0 } };
  }
  if (path === "/v1/events") return { status: 202, body: { accepted: call.body.length, rejected: [] } };
  if (path.startsWith("/v1/sse/")) return { status: 202, body: { ok: true } };
  return { status: 200, body: {} }; // GET /v1/sse probe: a stream
}

export const item = (id, extra = {}) => ({ id, title: `Item ${id}`, category: "c", price: 1, ...extra });
export const snapshot = (feed, version, items) => ({
  type: "snapshot",
  feed,
  version,
  items,
  sum: checksum(items),
});
/** A diff frame; `result` are the ids of the list it produces (for its sum). */
export const diff = (feed, base, version, order, { items = {}, patch = {}, result }) => ({
  type: "diff",
  feed,
  base,
  version,
  order,
  items,
  patch,
  sum: crc32(result.join("\x1f")),
});

/**
 * A client over fake transports. `h.conn` is the latest connection; `h.hello()`, `h.send()`,
 * `h.close()`, `h.fail()` act as the server; `h.sent(type)` lists client messages (socket
 * frames, or the bodies of POST /v1/sse/{conn}).
 */
export function setup(transport, options = {}) {
  const { handler, ...rest } = options;
  const timers = fakeTimers();
  const sockets = [];
  const streams = [];

  class WS {
    constructor(url, protocols) {
      Object.assign(this, { url, protocols, readyState: 0, sent: [], closedWith: undefined });
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("InvalidStateError");
      this.sent.push(JSON.parse(data));
    }
    close(code) {
      if (this.readyState < 2) this.closedWith = code ?? 1005;
      this.readyState = 3;
    }
    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }
    recv(m) {
      this.onmessage?.({ data: JSON.stringify(m) });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    error() {
      this.onerror?.({});
    }
  }

  class ES {
    constructor(url) {
      Object.assign(this, { url, listeners: {}, closed: false });
      streams.push(this);
    }
    addEventListener(type, fn) {
      (this.listeners[type] ||= []).push(fn);
    }
    close() {
      this.closed = true;
    }
    emit(type, m) {
      if (!this.closed) for (const fn of this.listeners[type] || []) fn({ type, data: JSON.stringify(m) });
    }
    error() {
      if (!this.closed) for (const fn of this.listeners.error || []) fn({ type: "error" });
    }
  }

  const fetch = fakeFetch(handler);
  const client = new Client({
    url: BASE,
    token: tokenFor("u1"),
    transports: [transport],
    WebSocket: WS,
    EventSource: ES,
    fetch,
    timers,
    now: timers.now,
    random: () => 0.5,
    ...rest,
  });
  const events = { state: [], open: [], feed: [], error: [] };
  for (const k of Object.keys(events)) client.on(k, (e) => events[k].push(e));

  const ws = () => transport === "websocket";
  let helloCount = 0;
  const h = {
    client,
    timers,
    fetch,
    sockets,
    streams,
    events,
    transport,
    get conn() {
      return ws() ? sockets.at(-1) : streams.at(-1);
    },
    get count() {
      return ws() ? sockets.length : streams.length;
    },
    /** Open the latest connection and greet it. */
    async hello(extra = {}) {
      await settle();
      if (ws()) h.conn.accept();
      h.send({
        type: "hello",
        user: "u1",
        conn: `c${++helloCount}`,
        protocol: 1,
        heartbeat: 25,
        exp: Math.floor(timers.now() / 1000) + 3600,
        ...extra,
      });
      await settle();
    },
    send(m) {
      if (ws()) h.conn.recv(m);
      else h.conn.emit(m.type, m);
    },
    async close(code, reason = "") {
      if (ws()) h.conn.drop(code, reason);
      else h.conn.emit("close", { type: "close", code, reason });
      await settle();
    },
    async fail() {
      h.conn.error();
      await settle();
    },
    /** Client → server messages of `type` (all connections). */
    sent(type) {
      const all = ws()
        ? sockets.flatMap((s) => s.sent)
        : fetch.calls.filter((c) => c.url.startsWith(`${BASE}/v1/sse/`)).map((c) => c.body);
      return type ? all.filter((m) => m.type === type) : all;
    },
    /** The query parameters of the latest connection. */
    query() {
      return new URL(h.conn.url).searchParams;
    },
    /** The token the latest connection authenticated with. */
    token() {
      return ws() ? h.conn.sent.find((m) => m.type === "auth")?.token : h.query().get("token");
    },
    posts(path) {
      return fetch.calls.filter((c) => c.method === "POST" && c.url.startsWith(BASE + path));
    },
  };
  return h;
}
