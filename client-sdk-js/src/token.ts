/**
 * Where the visitor token comes from: a fixed `token`, the app's `getToken`, or an anonymous
 * token from `POST /v1/anonymous`, kept in `storage` so the visitor keeps its id across loads.
 */
import { post } from "./http.js";
import type { FetchLike, GetToken, TokenStorage } from "./types.js";

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** The `exp` claim (epoch s) of a JWT, read without verification (the server verifies). */
export function jwtExp(token: string): number | undefined {
  try {
    // base64url by hand: atob is missing in older React Native engines.
    let s = "";
    let acc = 0;
    let bits = 0;
    for (const ch of token.split(".")[1]) {
      acc = (acc << 6) | B64.indexOf(ch);
      if ((bits += 6) >= 8) s += String.fromCharCode((acc >> (bits -= 8)) & 255);
    }
    const exp = JSON.parse(s).exp;
    return typeof exp == "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** A storage that lives as long as the page (used when there is no localStorage). */
export function memoryStorage(): TokenStorage {
  const m = new Map<string, string>();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => void m.set(k, v) };
}

export interface TokenOptions {
  base: string;
  token?: string;
  getToken?: GetToken;
  storage: TokenStorage;
  key: string;
  fetch: FetchLike;
  now: () => number;
}

export class Tokens {
  /** The token in use; undefined until the first get(). */
  token?: string;
  /** The identified user, passed to getToken. */
  userId?: string;
  /** Set when the server refused the token: the stored anonymous one must not be reused. */
  private stale = false;

  constructor(private o: TokenOptions) {
    this.token = o.token;
  }

  /** A fixed token without getToken cannot be renewed; every other mode can. */
  refreshable(): boolean {
    return !!this.o.getToken || !this.o.token;
  }

  set(token: string, userId?: string): void {
    this.token = token;
    this.userId = userId;
    this.stale = false;
  }

  /** Forget the token the server refused (4501), so the next get() fetches another. */
  invalidate(): void {
    this.token = undefined;
    this.stale = true;
  }

  /** The current token; a new one when there is none or it expires within 1 s (a live one is
   * renewed over the connection, on schedule: a 5 s token is not renewed on every connect). */
  async get(): Promise<string> {
    const t = this.token;
    if (t && !(this.refreshable() && this.expiring(t, 1000))) return t;
    return this.refresh(!!t || this.stale);
  }

  /** A new token. `force` false lets an anonymous visitor reuse its stored token. */
  async refresh(force = true): Promise<string> {
    const { getToken, token } = this.o;
    let t = getToken ? await getToken({ userId: this.userId }) : token;
    if (!t) {
      if (this.userId) throw new Error("getToken returned no token for " + this.userId);
      t = await this.anonymous(force);
    }
    this.set(t, this.userId);
    return t;
  }

  /** A token for another user (identify). */
  async forUser(userId: string): Promise<string> {
    const t = this.o.getToken && (await this.o.getToken({ userId }));
    if (!t) throw new Error("identify needs getToken to return a token for " + userId);
    return t;
  }

  private expiring(t: string, margin = 30000): boolean {
    const exp = jwtExp(t);
    return !!exp && exp * 1000 - this.o.now() < margin;
  }

  private async anonymous(force: boolean): Promise<string> {
    const { storage, key, base, fetch } = this.o;
    let saved: string | undefined;
    try {
      saved = JSON.parse((await storage.getItem(key)) || "{}").token;
    } catch {
      // unreadable storage: behave as a new visitor
    }
    if (saved && !force && !this.expiring(saved)) return saved;
    // A still valid token renews the same anonymous id; a refused one (401) or an expired one
    // cannot, and the visitor gets a new id.
    const live = saved && !this.expiring(saved, 0) ? saved : undefined;
    const url = base + "/v1/anonymous";
    let r = await post(fetch, url, undefined, live);
    if (r.status == 401 && live) r = await post(fetch, url);
    if (!r.ok) throw new Error("POST /v1/anonymous: HTTP " + r.status);
    const body = await r.json();
    if (typeof body?.token != "string") throw new Error("POST /v1/anonymous: no token");
    try {
      await storage.setItem(key, JSON.stringify(body));
    } catch {
      // quota or private mode: the token still works for this page
    }
    return body.token;
  }
}
