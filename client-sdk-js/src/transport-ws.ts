/**
 * WebSocket transport (`GET /v1/ws`, subprotocol `pushrec.v1.json`). The token travels in an
 * `auth` first message rather than `?token=`, so it does not end up in proxy access logs.
 */
import { parse, type Conn, type Sink } from "./transport.js";
import type { WebSocketCtor } from "./types.js";

export const SUBPROTOCOL = "pushrec.v1.json";

export function openWs(WS: WebSocketCtor, url: string, token: string, sink: Sink): Conn {
  const ws = new WS(url, SUBPROTOCOL);
  let done = false;
  const end = (code: number, reason: string) => {
    if (done) return;
    done = true;
    ws.close();
    sink.end(code, reason);
  };
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
  ws.onmessage = (e) => {
    const m = done ? undefined : parse(e.data); // binary frames: we asked for JSON
    if (m) sink.msg(m);
  };
  ws.onclose = (e) => end(e.code, e.reason);
  // Browsers fire `error` only for a failed connection (then close with 1006); React Native may
  // fire it alone, so it ends the connection by itself.
  ws.onerror = () => end(1006, "websocket error");
  return {
    send: (m) => !done && ws.readyState == 1 && (ws.send(JSON.stringify(m)), true),
    close() {
      done = true;
      ws.close(1000);
    },
  };
}
