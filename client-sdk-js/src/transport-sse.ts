/**
 * SSE transport (`GET /v1/sse`; client messages as `POST /v1/sse/{conn}`, whose `ack`/`error`
 * arrives on the stream; `send` resolves to false unless the POST was answered 2xx).
 * EventSource retries by itself, but the SDK closes it on the first error and reconnects on its
 * own schedule, so both transports share one reconnect/resume path (held versions in `?have=`).
 */
import { post } from "./http.js";
import { parse, type Conn, type Sink } from "./transport.js";
import type { EventSourceCtor, FetchLike } from "./types.js";

const EVENTS = ["hello", "snapshot", "diff", "ack", "error", "ping", "pong", "close", "message"];

export function openSse(
  ES: EventSourceCtor,
  fetch: FetchLike,
  base: string,
  query: string,
  token: () => string,
  sink: Sink,
): Conn {
  // The URL carries the token the stream opens with; POSTs use `token()`, the stream's current
  // one (it changes with an `auth` or `identify` ack).
  const url = `${base}/v1/sse?${query}&token=${encodeURIComponent(token())}`;
  const es = new ES(url);
  let done = false;
  let conn: string | undefined;
  let probing = false;
  const end = (code: number, reason: string) => {
    if (done) return;
    done = true;
    es.close();
    sink.end(code, reason);
  };
  const fail = () => {
    if (conn) return end(1006, "stream error");
    if (probing) return;
    probing = true;
    // EventSource hides the HTTP status: ask once with fetch whether the token was refused
    // (401 before the stream starts), which needs a new token rather than a plain retry.
    es.close();
    const AC = (globalThis as any).AbortController;
    const ac = AC && new AC();
    fetch(url, { signal: ac?.signal }).then(
      (r) => (ac?.abort(), end(r.status == 401 ? 4501 : 1006, "sse: HTTP " + r.status)),
      () => end(1006, "sse: network error"),
    );
  };
  for (const type of EVENTS)
    es.addEventListener(type, (e) => {
      // A server `error` message carries JSON; the browser's own error event has no data.
      const m = done ? undefined : parse(e.data);
      if (!m) return type == "error" && !done && fail();
      if (m.type == "close") return end(m.code, m.reason || "");
      if (m.type == "hello") conn = m.conn;
      sink.msg(m);
    });
  return {
    send: (m) =>
      !done &&
      !!conn &&
      post(fetch, `${base}/v1/sse/${encodeURIComponent(conn)}`, m, token()).then(
        (r) => r.ok,
        () => false,
      ),
    close() {
      done = true;
      es.close();
    },
  };
}
