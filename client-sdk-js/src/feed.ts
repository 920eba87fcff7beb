/**
 * Feed state arithmetic of docs/PROTOCOL.md: applying a diff, the per-connection item table, the
 * list checksum. Pure functions, no I/O.
 */
import type { DiffMessage, Item, Version } from "./types.js";

/** Capacity the server counts on (it remembers 256 sent items; 512 leaves a safe margin). */
export const ITEM_TABLE_SIZE = 512;

const hasOwn = Object.prototype.hasOwnProperty;

/**
 * The latest payload of the last 512 distinct items received on one connection. The server
 * omits a payload the connection already received, so a diff may name an item by id only.
 * A Map iterates in insertion order: delete + set moves an id to the young end.
 */
export class ItemTable {
  private m = new Map<string, Item>();

  get(id: string): Item | undefined {
    return this.m.get(id);
  }

  put(item: Item): void {
    const m = this.m;
    m.delete(item.id);
    m.set(item.id, item);
    if (m.size > ITEM_TABLE_SIZE) m.delete(m.keys().next().value as string);
  }
}

export const sameVersion = (a?: Version, b?: Version): boolean =>
  !!a && !!b && a[0] === b[0] && a[1] === b[1];

/** A copy of `item` with `changes` merged in; a field set to null is removed. */
function merge(item: Item, changes: Record<string, unknown>): Item {
  const out: Item = { ...item };
  for (const k in changes) {
    // "__proto__" from JSON.parse is an own key; assigning it would replace the prototype.
    if (k === "__proto__") continue;
    if (changes[k] === null) delete out[k];
    else out[k] = changes[k];
  }
  return out;
}

/**
 * The list a diff produces from `held`, or undefined when the diff does not fit it (a range
 * outside the list, an id without payload, an id twice, a malformed op): the caller resyncs.
 * `held` and its objects are not modified; unchanged items keep their identity, so renderers can
 * skip them. Payloads received here are recorded in `table`.
 */
export function applyDiff(
  held: readonly Item[],
  diff: DiffMessage,
  table: ItemTable,
): Item[] | undefined {
  const fresh = diff.items || {};
  const patch = diff.patch || {};
  const out: Item[] = [];
  const at = new Map<string, number>();
  let byId: Map<string, Item> | undefined;
  const add = (item: Item | undefined) => {
    if (!item || at.has(item.id)) return false;
    at.set(item.id, out.length);
    out.push(item);
    return true;
  };
  for (const id in fresh) {
    const p = fresh[id];
    if (p && typeof p == "object") table.put(p.id === id ? p : { ...p, id });
  }
  for (const op of diff.order) {
    if (typeof op == "string") {
      // Not in `items`: the connection received it before (item table). The base list is a
      // last resort that costs nothing and keeps a moved item even if the table dropped it.
      let p = table.get(op);
      if (!p) p = (byId ||= new Map(held.map((i) => [i.id, i]))).get(op);
      if (!add(p)) return;
    } else if (
      Array.isArray(op) &&
      Number.isInteger(op[0]) &&
      Number.isInteger(op[1]) &&
      op[0] >= 0 &&
      op[1] >= 0 &&
      op[0] + op[1] <= held.length
    ) {
      for (let j = op[0]; j < op[0] + op[1]; j++) if (!add(held[j])) return;
    } else return;
  }
  for (const id in patch) {
    const changes = patch[id];
    if (!hasOwn.call(patch, id) || !changes || typeof changes != "object") continue;
    const i = at.get(id);
    const base = i === undefined ? table.get(id) : out[i];
    if (!base) continue;
    const item = merge(base, changes);
    if (i !== undefined) out[i] = item;
    table.put(item);
  }
  return out;
}

let crcTable: number[] | undefined;

/** CRC-32 (IEEE) of the UTF-8 bytes of `s`, as 8 lower-case hex digits. */
export function crc32(s: string): string {
  const t = (crcTable ||= Array.from({ length: 256 }, (_, n) => {
    for (let k = 0; k < 8; k++) n = n & 1 ? 0xedb88320 ^ (n >>> 1) : n >>> 1;
    return n;
  }));
  let c = -1;
  const put = (b: number) => (c = t[(c ^ b) & 255] ^ (c >>> 8));
  // UTF-8 by hand: TextEncoder is missing in some React Native engines.
  for (const ch of s) {
    const u = ch.codePointAt(0)!;
    if (u < 0x80) put(u);
    else {
      if (u < 0x800) put(0xc0 | (u >> 6));
      else {
        if (u < 0x10000) put(0xe0 | (u >> 12));
        else put(0xf0 | (u >> 18)), put(0x80 | ((u >> 12) & 63));
        put(0x80 | ((u >> 6) & 63));
      }
      put(0x80 | (u & 63));
    }
  }
  return ((c ^ -1) >>> 0).toString(16).padStart(8, "0");
}

/** The `sum` of a list: CRC-32 of its item ids joined by the byte 0x1F. */
export const checksum = (items: readonly Item[]): string =>
  crc32(items.map((i) => i.id).join("\x1f"));
