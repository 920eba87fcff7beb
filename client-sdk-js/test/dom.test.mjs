// renderStrip over a minimal fake DOM (enough of Element for the helper).
import assert from "node:assert/strict";
import { test } from "node:test";
import { renderStrip } from "../dist/dom.js";
import { diff, item, setup, snapshot } from "./harness.mjs";

class El {
  constructor(tag) {
    Object.assign(this, { tag, kids: [], parent: null, dataset: {}, textContent: "", className: "" });
  }
  get children() {
    return this.kids;
  }
  insertBefore(node, ref) {
    node.remove();
    const i = ref ? this.kids.indexOf(ref) : -1;
    if (i < 0) this.kids.push(node);
    else this.kids.splice(i, 0, node);
    node.parent = this;
    return node;
  }
  remove() {
    if (!this.parent) return;
    this.parent.kids.splice(this.parent.kids.indexOf(this), 1);
    this.parent = null;
  }
  append(...nodes) {
    for (const n of nodes) this.insertBefore(n, null);
  }
  replaceChildren(...nodes) {
    for (const k of [...this.kids]) k.remove();
    this.append(...nodes);
  }
}

test("renderStrip updates in place, reusing nodes by item id", async (t) => {
  globalThis.document = { createElement: (tag) => new El(tag) };
  t.after(() => delete globalThis.document);
  const h = setup("websocket");
  await h.hello();
  h.send(snapshot("home", ["e", 1], [item("a"), item("b"), item("c")]));
  const strip = new El("div");
  const rendered = [];
  const stop = renderStrip(strip, h.client, "home", (it, node) => {
    rendered.push(it.id);
    const el = node || new El("div");
    el.textContent = `${it.title} ${it.price}`;
    return el;
  });
  assert.deepEqual(strip.kids.map((n) => n.dataset.id), ["a", "b", "c"]);
  const [a, b] = strip.kids;

  h.send(diff("home", ["e", 1], ["e", 2], [[1, 1], "x", [0, 1]], { items: { x: item("x") }, patch: { a: { price: 3 } }, result: ["b", "x", "a"] }));
  assert.deepEqual(strip.kids.map((n) => n.dataset.id), ["b", "x", "a"]);
  assert.equal(strip.kids[0], b, "b reused, not re-rendered");
  assert.equal(strip.kids[2], a, "a reused and updated");
  assert.equal(a.textContent, "Item a 3");
  assert.deepEqual(rendered, ["a", "b", "c", "x", "a"]);

  stop();
  h.send(snapshot("home", ["e", 9], [item("z")]));
  assert.equal(strip.kids.length, 3, "no updates after stop()");

  const plain = new El("div");
  renderStrip(plain, h.client);
  assert.equal(plain.kids[0].className, "pushrec-item");
  assert.deepEqual(plain.kids[0].kids.map((k) => k.textContent), ["Item z", "1.00"]);
  h.client.close();
});
