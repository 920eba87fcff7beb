// renderStrip over a minimal fake DOM (enough of Element for the helper).
import assert from "node:assert/strict";
import { test } from "node:test";
import { renderStrip } from "../dist/dom.js";
import { diff, item, settle, setup, snapshot } from "./harness.mjs";

class El {
  constructor(tag) {
    Object.assign(this, { tag, kids: [], parent: null, dataset: {}, textContent: "", className: "", on: {} });
  }
  get children() {
    return this.kids;
  }
  get parentNode() {
    return this.parent;
  }
  addEventListener(type, fn) {
    (this.on[type] ||= []).push(fn);
  }
  removeEventListener(type, fn) {
    this.on[type] = (this.on[type] || []).filter((f) => f !== fn);
  }
  /** A click on this node, bubbling up to the root. */
  click() {
    const e = { type: "click", target: this };
    for (let n = this; n; n = n.parent) for (const fn of n.on.click || []) fn(e);
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

test("renderStrip sends one impression per list rec, and a click per item click", async (t) => {
  globalThis.document = { createElement: (tag) => new El(tag) };
  t.after(() => delete globalThis.document);
  const h = setup("websocket", { feeds: ["home", "cart"] });
  const sent = async () => {
    h.client.flush();
    await settle();
    return h.sent("track").flatMap((m) => m.events).map(({ type, item_id, props }) => ({ type, item_id, props }));
  };
  await h.hello();
  h.send({ ...snapshot("home", ["e", 1], [item("a"), item("b")]), rec: "e.1~x:1:a" });
  const strip = new El("div");
  const stop = renderStrip(strip, h.client, "home", (it, node) => {
    if (node) return node;
    const el = new El("div");
    el.append(new El("span")); // a click on a descendant counts for the item
    return el;
  });
  assert.deepEqual(await sent(), [{ type: "impression", item_id: undefined, props: { rec: "e.1~x:1:a" } }], "the list drawn at once");

  // a diff patching "a" re-renders it; a list of another feed and a redraw of the same rec do not count
  h.send({ ...diff("home", ["e", 1], ["e", 2], [[0, 2]], { patch: { a: { price: 5 } }, result: ["a", "b"] }), rec: "e.2~x:1:a" });
  h.send({ ...snapshot("cart", ["k", 1], [item("z")]), rec: "k.1~x:1:a" });
  h.send({ ...snapshot("home", ["e", 2], [item("a", { price: 5 }), item("b")]), rec: "e.2~x:1:a" });
  // a list without rec (no experiment) and an empty list are not reported
  h.send(diff("home", ["e", 2], ["e", 3], [[1, 1], [0, 1]], { result: ["b", "a"] }));
  h.send({ ...snapshot("home", ["e", 4], []), rec: "e.4~x:1:a" });
  h.send({ ...snapshot("home", ["e", 5], [item("c"), item("d")]), rec: "e.5~x:1:b" });
  assert.deepEqual(
    (await sent()).slice(1).map((e) => e.props.rec),
    ["e.2~x:1:a", "e.5~x:1:b"],
  );

  const before = h.sent("track").length;
  strip.kids[1].kids[0].click(); // inside "d"
  strip.click(); // on the strip, not on an item: nothing
  assert.deepEqual((await sent()).slice(3), [{ type: "click", item_id: "d", props: { rec: "e.5~x:1:b" } }]);
  assert.equal(h.sent("track").length, before + 1);

  h.send(snapshot("home", ["e", 6], [item("c")]));
  strip.kids[0].click();
  assert.deepEqual((await sent()).slice(4), [{ type: "click", item_id: "c", props: undefined }], "still sent without rec");

  stop();
  strip.kids[0].click();
  h.send({ ...snapshot("home", ["e", 7], [item("c")]), rec: "e.7~x:1:b" });
  assert.equal((await sent()).length, 5, "nothing after stop()");
  h.client.close();
});
