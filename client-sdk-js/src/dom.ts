/**
 * Optional DOM helper (separate entry, "pushrec/dom"): keeps an element filled with the items of
 * a feed. Nodes are reused by item id, and an item whose payload object did not change is not
 * re-rendered (the client keeps unchanged items' identity across diffs), so focus, images and
 * CSS transitions survive updates. It also reports what it shows: an `impression` of every list
 * that carries a `rec` (A/B experiments), and a `click` when an item node is clicked.
 */
import type { Client } from "./client.js";
import type { Item } from "./types.js";

/** Builds the node of an item, or updates `node` (the one rendered before for that id). */
export type RenderItem = (item: Item, node?: HTMLElement) => HTMLElement;

/** Default rendering: a `div.pushrec-item` with the title and the price, as text only. */
export const defaultRenderItem: RenderItem = (item, node) => {
  const el = node || document.createElement("div");
  el.className = "pushrec-item";
  const title = document.createElement("span");
  title.className = "pushrec-title";
  title.textContent = item.title || item.id;
  el.replaceChildren(title);
  if (typeof item.price == "number") {
    const price = document.createElement("span");
    price.className = "pushrec-price";
    price.textContent = item.price.toFixed(2);
    el.append(price);
  }
  return el;
};

/**
 * Render `feed` into `element` now and on every change. `element` should be dedicated to the
 * strip: its children are the item nodes, in feed order. Each non-empty list rendered with a
 * `rec` is reported once with `client.impression(feed)`; a click inside an item node is tracked
 * with `client.click(feed, id)`. Returns a function that stops updates and click tracking.
 */
export function renderStrip(
  element: HTMLElement,
  client: Client,
  feed = "home",
  renderItem: RenderItem = defaultRenderItem,
): () => void {
  let shown = new Map<string, [HTMLElement, Item]>();
  /** The rec whose impression was sent last: one impression per list, however often drawn. */
  let seen: string | undefined;
  const draw = (items: readonly Item[], rec: string | undefined) => {
    const next = new Map<string, [HTMLElement, Item]>();
    items.forEach((item, i) => {
      const prev = shown.get(item.id);
      let node = prev?.[0];
      if (!node || prev![1] !== item) {
        node = renderItem(item, node);
        if (prev && prev[0] !== node) prev[0].remove();
      }
      node.dataset.id = item.id;
      next.set(item.id, [node, item]);
      const at = element.children[i];
      if (at !== node) element.insertBefore(node, at || null);
    });
    shown.forEach(([node], id) => next.has(id) || node.remove());
    shown = next;
    if (rec && rec != seen && items.length) {
      seen = rec;
      client.impression(feed);
    }
  };
  const onClick = (e: Event) => {
    // The item node is the child of `element` that holds the click's target.
    let n = e.target as Node | null;
    while (n && n.parentNode != element) n = n.parentNode;
    const id = (n as HTMLElement | null)?.dataset?.id;
    if (id && shown.get(id)?.[0] == n) client.click(feed, id);
  };
  draw(client.items(feed), client.rec(feed));
  element.addEventListener("click", onClick);
  const off = client.on("feed", (e) => e.feed == feed && draw(e.items, e.rec));
  return () => {
    off();
    element.removeEventListener("click", onClick);
  };
}
