import type { Message } from "./types.js";

/** What a transport reports to the client. `end` is called at most once per connection. */
export interface Sink {
  msg(m: Message): void;
  end(code: number, reason: string): void;
}

/** An open connection. `send` resolves to false when the message could not be handed over. */
export interface Conn {
  send(m: Message): boolean | Promise<boolean>;
  /** Close without reporting `end`. */
  close(): void;
}

export function parse(data: unknown): Message | undefined {
  try {
    const m = JSON.parse(data as string);
    return m && typeof m == "object" && typeof m.type == "string" ? m : undefined;
  } catch {
    return undefined;
  }
}
