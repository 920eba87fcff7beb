// Pure modules: checksum, diff application, item table, backoff, close codes, JWT expiry.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  applyDiff,
  backoffDelay,
  checksum,
  closeAction,
  CloseCode,
  crc32,
  ITEM_TABLE_SIZE,
  ItemTable,
  jwtExp,
  sameVersion,
} from "../dist/index.js";
import { item, jwt } from "./harness.mjs";

describe("checksum", () => {
  // Expected values from Python: "%08x" % zlib.crc32(s.encode())
  for (const [s, want] of [
    ["", "00000000"],
    ["123456789", "cbf43926"],
    ["1005115\x1f1004767\x1fé", "e370b684"],
    ["a\x1f€\x1f😀", "d8cde8c1"],
  ]) {
    test(`crc32(${JSON.stringify(s)}) = ${want}`, () => assert.equal(crc32(s), want));
  }

  test("ids joined by 0x1F", () => {
    assert.equal(checksum([item("1005115"), item("1004767"), item("é")]), "e370b684");
    assert.equal(checksum([]), "00000000");
  });
});

describe("applyDiff", () => {
  const held = ["a", "b", "c", "d"].map((id) => item(id));
  const order = (out) => out?.map((i) => i.id);

  test("ranges and new ids in order; held list untouched", () => {
    const before = JSON.stringify(held);
    const out = applyDiff(held, { order: ["x", [0, 2], "y", [3, 1]], items: { x: item("x"), y: item("y") } }, new ItemTable());
    assert.deepEqual(order(out), ["x", "a", "b", "y", "d"]);
    assert.equal(out[1], held[0]);
    assert.equal(JSON.stringify(held), before);
  });

  test("patch merges into a copy; null removes a field; __proto__ is ignored", () => {
    const out = applyDiff(
      [item("a", { image: "/a.svg" })],
      { order: [[0, 1]], patch: JSON.parse('{"a":{"price":2,"image":null,"__proto__":{"evil":1}}}') },
      new ItemTable(),
    );
    assert.deepEqual(out, [{ id: "a", title: "Item a", category: "c", price: 2 }]);
    assert.equal(out[0].evil, undefined);
    assert.equal(Object.getPrototypeOf(out[0]), Object.prototype);
  });

  test("an item moved by id keeps its payload (table, then base list)", () => {
    const out = applyDiff(held, { order: ["d", [0, 3]] }, new ItemTable());
    assert.deepEqual(order(out), ["d", "a", "b", "c"]);
  });

  for (const [name, d] of [
    ["unknown id", { order: ["zz"] }],
    ["range past the end", { order: [[2, 3]] }],
    ["negative range", { order: [[-1, 1]] }],
    ["malformed op", { order: [{ x: 1 }] }],
    ["duplicate id", { order: [[0, 2], "a"] }],
  ]) {
    test(`${name} → undefined`, () => assert.equal(applyDiff(held, d, new ItemTable()), undefined));
  }

  test("sameVersion", () => {
    assert.ok(sameVersion(["e", 1], ["e", 1]));
    assert.ok(!sameVersion(["e", 1], ["e", 2]));
    assert.ok(!sameVersion(["e", 1], ["f", 1]));
    assert.ok(!sameVersion(undefined, ["e", 1]));
  });
});

describe("ItemTable", () => {
  test(`keeps the last ${ITEM_TABLE_SIZE} distinct items; a re-received item is young again`, () => {
    const t = new ItemTable();
    for (let i = 0; i < ITEM_TABLE_SIZE; i++) t.put(item(String(i)));
    t.put(item("0", { price: 5 })); // refreshed: now the youngest
    t.put(item("new"));
    assert.equal(t.get("1"), undefined, "the oldest was evicted");
    assert.equal(t.get("0").price, 5);
    assert.ok(t.get("2") && t.get("new"));
  });
});

describe("backoffDelay", () => {
  test("uniform in [0, min(max, min * 2^attempt))", () => {
    const top = (attempt) => backoffDelay(attempt, 500, 30000, () => 1);
    assert.deepEqual([0, 1, 2, 5, 6, 7, 50, 5000].map(top), [500, 1000, 2000, 16000, 30000, 30000, 30000, 30000]);
    assert.equal(backoffDelay(3, 500, 30000, () => 0), 0);
    assert.equal(backoffDelay(3, 500, 30000, () => 0.25), 1000);
    for (let i = 0; i < 1000; i++) {
      const d = backoffDelay(i % 10, 500, 30000);
      assert.ok(d >= 0 && d < Math.min(30000, 500 * 2 ** (i % 10)));
    }
  });
});

describe("close codes", () => {
  test("constants mirror the server", () => {
    assert.deepEqual(CloseCode, {
      SHUTDOWN: 4000,
      SLOW: 4001,
      HEARTBEAT: 4002,
      UNAVAILABLE: 4003,
      SETUP_FAILED: 4004,
      BAD_REQUEST: 4500,
      UNAUTHORIZED: 4501,
      AUTH_TIMEOUT: 4502,
      FORBIDDEN: 4503,
      ERASED: 4504,
      TOO_BIG: 4509,
      PROTOCOL_ERROR: 1002,
      INVALID_DATA: 1007,
    });
  });

  test("closeAction", () => {
    for (const c of [4000, 4001, 4002, 4003, 4004, 4499]) assert.equal(closeAction(c), "reconnect");
    for (const c of [4500, 4501, 4502, 4503, 4504, 4509, 4999, 1002, 1007]) assert.equal(closeAction(c), "terminal");
    for (const c of [1000, 1001, 1005, 1006, 1011]) assert.equal(closeAction(c), "network");
  });
});

describe("jwtExp", () => {
  test("reads exp from the payload, without verifying", () => {
    assert.equal(jwtExp(jwt({ sub: "ü-ß", exp: 1795000000 })), 1795000000);
    assert.equal(jwtExp(jwt({ sub: "x" })), undefined);
    assert.equal(jwtExp("garbage"), undefined);
    assert.equal(jwtExp("a.!!!.c"), undefined);
  });
});
