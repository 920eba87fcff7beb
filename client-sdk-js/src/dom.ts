/**
 * Optional DOM helper (separate entry, "pushrec/dom"): keeps an element filled with the items of
 * a feed. Nodes are reused by item id, and an item whose payload object did not change is not
 * re-rendered (the client keeps unchanged items' identity across diffs), so focus, images and
 * CSS transitions survive updates.
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
 * strip: its children are the item nodes, in feed order. Returns a function that stops updates.
 */
export function renderStrip(
  element: HTMLElement,
  client: Client,
  feed = "home",
  renderItem: RenderItem = defaultRenderItem,
): () => void {
  let shown = new Map<string, [HTMLElement, Item]>();
  const draw = (items: readonly Item[]) => {
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
  };
  draw(client.items(feed));
  return client.on("feed", (e) => e.feed == feed && draw(e.items));
}
