/**
 * Event batching. Events wait up to `interval` ms or until `batch` are queued, then go as a
 * `track` message over an open WebSocket (kept until acked, re-sent after a reconnect) or as
 * `POST /v1/events`. Every event has an `event_id`, so re-sending is always safe: the server
 * ignores ids it has seen.
 */
import type { Message, ResponseLike, Timers, TrackEvent } from "./types.js";

/** Events per message: the protocol allows 50 per `track` message (500 per POST). */
const CHUNK = 50;
/** Queue bound while nothing can be sent (offline): the oldest events are dropped. */
const MAX_QUEUED = 1000;

export interface TrackerDeps {
  timers: Timers;
  interval: number;
  batch: number;
  /** Send over the socket; returns the message id, or undefined when that is not possible. */
  ws(events: TrackEvent[]): number | undefined;
  post(events: TrackEvent[], keepalive?: boolean): Promise<ResponseLike>;
  /** navigator.sendBeacon; false when unavailable or refused. */
  beacon(events: TrackEvent[]): boolean;
  /** Reports events the server rejected (body of an ack or of POST /v1/events). */
  report(body: unknown): void;
}

export function uuid(): string {
  const c = (globalThis as any).crypto;
  if (c?.randomUUID) return c.randomUUID();
  // crypto.randomUUID needs a secure context (and is missing in React Native): a v4 UUID from
  // getRandomValues, or Math.random as a last resort (ids only need to be unique per user).
  return "10000000-1000-4000-8000-100000000000".replace(/[018]/g, (d) => {
    const r = c?.getRandomValues ? c.getRandomValues(new Uint8Array(1))[0] : Math.random() * 256;
    return (+d ^ (r & (15 >> (+d / 4)))).toString(16);
  });
}

export class Tracker {
  private q: TrackEvent[] = [];
  /** Batches sent over the socket, by message id, until acked. */
  private sent = new Map<number, TrackEvent[]>();
  private t: unknown;

  constructor(private d: TrackerDeps) {}

  add(e: TrackEvent): void {
    if (this.q.push(e) > MAX_QUEUED) this.q.shift();
    if (this.q.length >= this.d.batch) this.flush();
    else this.later(this.d.interval);
  }

  /** Send everything queued now. */
  flush(): void {
    this.d.timers.clearTimeout(this.t);
    this.t = undefined;
    while (this.q.length) {
      const b = this.q.splice(0, CHUNK);
      const id = this.d.ws(b);
      if (id === undefined) this.http(b);
      else this.sent.set(id, b);
    }
  }

  /** An `ack` or `error` answering message `id`; false when it was not a track batch. */
  answer(id: unknown, m: Message): boolean {
    const b = this.sent.get(id as number);
    if (!b) return false;
    this.sent.delete(id as number);
    if (m.type == "ack") this.d.report(m);
    // Dropped by the rate limiter or the bus was down: the batch was not taken, try again.
    else if (m.code == "rate_limited" || m.code == "unavailable") this.retry(b);
    return true;
  }

  /** Re-send unacked batches: after a reconnect (new ids) or, once closed, over HTTP. */
  resend(): void {
    this.sent.forEach((b) => this.q.unshift(...b));
    this.sent.clear();
    this.flush();
  }

  /** The page is going away: hand everything (unacked too) to sendBeacon, else keepalive fetch. */
  beacon(): void {
    const all = [...this.sent.values()].flat().concat(this.q.splice(0));
    while (all.length) {
      const b = all.splice(0, CHUNK);
      if (!this.d.beacon(b)) this.http(b, true);
    }
  }

  private later(ms: number): void {
    this.t ??= this.d.timers.setTimeout(() => {
      this.t = undefined;
      this.flush();
    }, ms);
  }

  private retry(b: TrackEvent[]): void {
    this.q.unshift(...b);
    this.later(this.d.interval * 5);
  }

  private async http(b: TrackEvent[], keepalive?: boolean): Promise<void> {
    let r: ResponseLike;
    try {
      r = await this.d.post(b, keepalive);
    } catch {
      return this.retry(b); // network: keep the events
    }
    // 429/5xx (503 when the event bus is full): nothing or part was taken; re-send all.
    if (r.status == 429 || r.status >= 500) return this.retry(b);
    // Otherwise done: 202 (maybe with rejected events) or a 4xx that re-sending cannot fix.
    this.d.report(await r.json().catch(() => ({ rejected: [{ reason: "http_" + r.status }] })));
  }
}
