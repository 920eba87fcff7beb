// Client behaviour over fake transports; every suite runs once per transport.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { diff, item, settle, setup, snapshot, T0, tokenFor } from "./harness.mjs";

const ids = (list) => list.map((i) => i.id);

for (const transport of ["websocket", "sse"]) {
  const isWs = transport === "websocket";

  describe(`${transport}: feeds`, () => {
    test("connects with feeds, then applies a snapshot and diffs", async () => {
      const h = setup(transport, { feeds: ["home", "similar"] });
      await h.hello();
      assert.equal(h.client.state, "open");
      assert.equal(h.query().get("feeds"), "home,similar");
      assert.equal(h.query().get("have"), null);
      if (isWs) {
        assert.ok(h.conn.url.startsWith("wss://push.test/v1/ws?"));
        assert.equal(h.conn.protocols, "pushrec.v1.json");
        assert.equal(h.query().get("token"), null, "the token goes in the auth message");
        assert.deepEqual(h.conn.sent[0], { type: "auth", token: tokenFor("u1") });
      } else {
        assert.ok(h.conn.url.startsWith("https://push.test/v1/sse?"));
        assert.equal(h.query().get("token"), tokenFor("u1"));
      }

      h.send(snapshot("home", ["e", 1], [item("a", { image: "/a.svg" }), item("b"), item("c")]));
      h.send(
        diff("home", ["e", 1], ["e", 2], ["d", [0, 2]], {
          items: { d: item("d") },
          patch: { a: { price: 2, image: null } },
          result: ["d", "a", "b"],
        }),
      );
      assert.deepEqual(ids(h.client.items("home")), ["d", "a", "b"]);
      assert.deepEqual(h.client.items("home")[1], { id: "a", title: "Item a", category: "c", price: 2 });
      h.send(diff("home", ["e", 2], ["e", 3], [[1, 2], [0, 1]], { result: ["a", "b", "d"] }));
      assert.deepEqual(ids(h.client.items("home")), ["a", "b", "d"]);
      assert.deepEqual(h.client.version("home"), ["e", 3]);

      const feeds = h.events.feed;
      assert.equal(feeds.length, 3);
      assert.equal(feeds[0].diff, undefined, "a snapshot has no diff");
      assert.equal(feeds[2].diff.version[1], 3);
      assert.equal(feeds[2].items[1], feeds[1].items[2], "unchanged items keep their object");
      assert.deepEqual(h.events.error, []);
      h.client.close();
    });

    test("client.transport and the open event are set on hello", async () => {
      const h = setup(transport);
      const seen = [];
      h.client.on("open", (e) => seen.push([e, h.client.transport, h.client.state]));
      assert.equal(h.client.transport, null);
      await settle();
      assert.equal(h.client.transport, null, "not before hello");
      await h.hello({ user: "u1" });
      assert.equal(h.client.transport, transport);
      assert.deepEqual(seen, [[{ transport, user: "u1" }, transport, "connecting"]], "before state open");
      await h.close(4000);
      assert.equal(h.client.transport, transport, "kept while reconnecting");
      await h.timers.advance(250);
      await h.hello({ user: "u1" });
      assert.equal(h.events.open.length, 2, "once per connection");
      h.client.close();
      assert.equal(h.client.transport, transport);
    });

    test("an id without payload comes from the item table", async () => {
      const h = setup(transport);
      await h.hello();
      h.send(snapshot("home", ["e", 1], [item("a"), item("b")]));
      h.send(diff("home", ["e", 1], ["e", 2], ["x"], { items: { x: item("x") }, result: ["x"] }));
      // a and b left the list; the server knows this connection holds their payloads
      h.send(
        diff("home", ["e", 2], ["e", 3], ["b", [0, 1], "a"], {
          patch: { a: { price: 7 } },
          result: ["b", "x", "a"],
        }),
      );
      assert.deepEqual(h.client.items("home"), [item("b"), item("x"), item("a", { price: 7 })]);
      // the patched payload is the latest one: it is what a later bare id means
      h.send(diff("home", ["e", 3], ["e", 4], ["x"], { result: ["x"] }));
      h.send(diff("home", ["e", 4], ["e", 5], ["a"], { result: ["a"] }));
      assert.deepEqual(h.client.items("home"), [item("a", { price: 7 })]);
      assert.deepEqual(h.events.error, []);
      h.client.close();
    });

    test("the item table is reset on a new connection", async () => {
      const h = setup(transport);
      await h.hello();
      h.send(snapshot("home", ["e", 1], [item("a")]));
      h.send(diff("home", ["e", 1], ["e", 2], ["x"], { items: { x: item("x") }, result: ["x"] }));
      await h.close(4000);
      await h.timers.advance(1000);
      await h.hello();
      h.send(diff("home", ["e", 2], ["e", 3], ["a"], { result: ["a"] }));
      assert.equal(h.events.error.at(-1).code, "resync");
      assert.deepEqual(h.sent("resync"), [{ type: "resync", feed: "home" }]);
      h.client.close();
    });

    for (const [name, bad] of [
      [
        "checksum mismatch",
        (h) => h.send({ ...diff("home", ["e", 1], ["e", 2], [[0, 1]], { result: ["a"] }), sum: "00000000" }),
      ],
      ["base mismatch", (h) => h.send(diff("home", ["e", 0], ["e", 2], [[0, 1]], { result: ["a"] }))],
      ["other epoch", (h) => h.send(diff("home", ["f", 1], ["f", 2], [[0, 1]], { result: ["a"] }))],
      ["id without payload", (h) => h.send(diff("home", ["e", 1], ["e", 2], ["zz"], { result: ["zz"] }))],
      ["range outside the list", (h) => h.send(diff("home", ["e", 1], ["e", 2], [[1, 5]], { result: ["b"] }))],
    ]) {
      test(`${name} → resync, diffs ignored until a snapshot`, async () => {
        const h = setup(transport);
        await h.hello();
        h.send(snapshot("home", ["e", 1], [item("a"), item("b")]));
        bad(h);
        await settle();
        assert.deepEqual(h.sent("resync"), [{ type: "resync", feed: "home" }]);
        if (!isWs) {
          const [post] = h.posts("/v1/sse/");
          assert.equal(post.url, "https://push.test/v1/sse/c1");
          assert.equal(post.headers.Authorization, `Bearer ${tokenFor("u1")}`);
        }
        assert.deepEqual(ids(h.client.items("home")), ["a", "b"], "the last good list stays");
        assert.equal(h.client.version("home"), undefined);
        assert.equal(h.events.error.at(-1).code, "resync");
        assert.equal(h.events.error.at(-1).terminal, false);
        // a diff that would fit the old list is ignored now
        h.send(diff("home", ["e", 1], ["e", 2], [[0, 1]], { result: ["a"] }));
        assert.deepEqual(ids(h.client.items("home")), ["a", "b"]);
        h.send(snapshot("home", ["e", 9], [item("c")]));
        h.send(diff("home", ["e", 9], ["e", 10], ["d", [0, 1]], { items: { d: item("d") }, result: ["d", "c"] }));
        assert.deepEqual(ids(h.client.items("home")), ["d", "c"]);
        assert.equal(h.count, 1, "no reconnect");
        h.client.close();
      });
    }
  });

  describe(`${transport}: reconnect`, () => {
    test("resume sends the held versions", async () => {
      const h = setup(transport, { feeds: ["home", "cart"] });
      await h.hello();
      h.send(snapshot("home", ["Xy3_aQ", 41], [item("a")]));
      h.send(snapshot("cart", ["k", 2], []));
      await h.close(4001, "slow");
      assert.equal(h.client.state, "reconnecting");
      await h.timers.advance(250);
      assert.equal(h.count, 2);
      assert.equal(h.query().get("have"), "home:Xy3_aQ:41,cart:k:2");
      assert.ok(h.conn.url.includes("have=home%3AXy3_aQ%3A41%2Ccart%3Ak%3A2"));
      await h.hello();
      // resumed: a diff from the held version applies directly
      h.send(diff("home", ["Xy3_aQ", 41], ["Xy3_aQ", 42], ["b", [0, 1]], { items: { b: item("b") }, result: ["b", "a"] }));
      assert.deepEqual(ids(h.client.items("home")), ["b", "a"]);
      h.client.close();
    });

    test("backoff is full jitter: random(0, min(max, min * 2^attempt)), reset by hello", async () => {
      let r = 0.5;
      const h = setup(transport, { random: () => r, minDelay: 100, maxDelay: 1000 });
      await h.hello();
      await h.close(4000);
      assert.deepEqual(h.timers.pending(), [50]); // 0.5 * 100
      const seen = [];
      for (const x of [0.5, 0.5, 0.5, 0.999, 0]) {
        r = x;
        await h.timers.advance(h.timers.pending()[0]);
        await h.fail(); // the reconnect fails before hello
        seen.push(h.timers.pending()[0]);
      }
      // attempts 1..5: windows 200, 400, 800, 1000 (capped), 1000
      assert.deepEqual(seen, [100, 200, 400, 999, 0]);
      await h.timers.advance(0);
      await h.hello();
      r = 1 - 1e-9;
      await h.close(4003);
      assert.ok(h.timers.pending()[0] < 100, "hello resets the attempt count");
      h.client.close();
    });

    for (const code of [4000, 4001, 4002, 4003, 4499, 1000, 1001, 1006, 1011]) {
      test(`close ${code} → reconnect`, async () => {
        const h = setup(transport);
        await h.hello();
        await h.close(code);
        assert.equal(h.client.state, "reconnecting");
        assert.deepEqual(h.events.error, []);
        await h.timers.advance(500);
        assert.equal(h.count, 2);
        h.client.close();
      });
    }

    for (const code of [4500, 4502, 4503, 4509, 4999, 1002, 1007]) {
      test(`close ${code} → terminal`, async () => {
        const h = setup(transport);
        await h.hello();
        await h.close(code, "why");
        assert.equal(h.client.state, "closed");
        assert.deepEqual(h.events.error, [{ code, message: "why", terminal: true }]);
        await h.timers.advance(120000);
        assert.equal(h.count, 1);
      });
    }

    test("4501 without getToken → terminal", async () => {
      const h = setup(transport);
      await h.hello();
      await h.close(4501, "token expired");
      assert.equal(h.client.state, "closed");
      assert.deepEqual(h.events.error, [{ code: 4501, message: "token expired", terminal: true }]);
    });

    test("4501 with getToken → one fresh token and retry; refused again → terminal", async () => {
      const asked = [];
      const h = setup(transport, {
        token: undefined,
        getToken: (ctx) => (asked.push(ctx), tokenFor("u1", 3600 + asked.length)),
      });
      await h.hello();
      assert.equal(asked.length, 1);
      await h.close(4501, "token expired");
      assert.equal(asked.length, 2);
      assert.equal(h.count, 2, "reconnects at once");
      assert.equal(h.client.state, "reconnecting");
      if (isWs) h.conn.accept();
      assert.equal(h.token(), tokenFor("u1", 3602));
      await h.close(4501, "invalid token");
      assert.equal(h.client.state, "closed");
      assert.equal(h.events.error.at(-1).terminal, true);
      assert.equal(h.count, 2);
    });

    test("heartbeat: ping after one silent interval, reconnect after two", async () => {
      const h = setup(transport);
      await h.hello({ heartbeat: 10 });
      if (isWs) {
        h.send({ type: "ping" });
        assert.deepEqual(h.sent("pong"), [{ type: "pong" }]);
      }
      await h.timers.advance(9000);
      h.send({ type: "snapshot", feed: "home", version: ["e", 1], items: [], sum: "00000000" });
      await h.timers.advance(11000); // 11 s silent at the watchdog's next check: probe
      assert.equal(h.sent("ping").length, 1);
      await h.timers.advance(13999);
      assert.equal(h.client.state, "open");
      await h.timers.advance(1); // 25 s silent = 2 * 10 + 5 margin
      assert.equal(h.client.state, "reconnecting");
      assert.ok(isWs ? h.conn.closedWith : h.conn.closed, "the dead connection is closed");
      await h.timers.advance(500);
      assert.equal(h.count, 2);
      assert.equal(h.query().get("have"), "home:e:1");
      h.client.close();
    });

    test("no hello within connectTimeout → retry", async () => {
      const h = setup(transport);
      await settle();
      await h.timers.advance(5000);
      assert.equal(h.client.state, "reconnecting");
      await h.timers.advance(250);
      assert.equal(h.count, 2);
      h.client.close();
    });
  });

  describe(`${transport}: token`, () => {
    test("refresh sends auth over the open connection and waits for the ack", async () => {
      let n = 0;
      const h = setup(transport, { token: undefined, getToken: () => tokenFor("u1", 1000 * ++n) });
      await h.hello({ exp: Math.floor(T0 / 1000) + 1000, heartbeat: 5000 });
      h.send(snapshot("home", ["e", 3], [item("a")]));
      assert.equal(n, 1);
      await h.timers.advance(799000); // 80 % of 1000 s
      assert.equal(n, 1);
      await h.timers.advance(1000);
      assert.equal(n, 2);
      const auth = h.sent("auth").at(-1);
      assert.deepEqual(auth, { type: "auth", token: tokenFor("u1", 2000), id: auth.id });
      if (!isWs) {
        const post = h.posts("/v1/sse/").at(-1);
        assert.equal(post.url, "https://push.test/v1/sse/c1");
        assert.equal(post.headers.Authorization, `Bearer ${tokenFor("u1", 1000)}`, "the stream's token");
      }
      assert.ok(!h.timers.pending().includes(1760000), "the next renewal waits for the ack");
      h.send({ type: "ack", ref: auth.id, of: "auth", exp: Math.floor(T0 / 1000) + 3000 });
      await settle();
      assert.equal(h.count, 1, "no reconnect");
      assert.equal(h.client.state, "open");
      assert.deepEqual(h.events.error, []);
      // next renewal at 80 % of what is left of the new token (2200 s left → 1760 s)
      assert.ok(h.timers.pending().includes(1760000));
      // later messages and reconnects use the new token
      h.send(diff("home", ["e", 9], ["e", 10], [[0, 1]], { result: ["a"] }));
      await settle();
      if (!isWs) assert.equal(h.posts("/v1/sse/").at(-1).headers.Authorization, `Bearer ${tokenFor("u1", 2000)}`);
      h.send(snapshot("home", ["e", 11], [item("a")]));
      await h.close(4000);
      await h.timers.advance(250);
      await h.hello();
      assert.equal(h.token(), tokenFor("u1", 2000));
      assert.equal(h.query().get("have"), "home:e:11");
      assert.equal(n, 2);
      h.client.close();
    });

    test("a 5 s token renews after 4 s, not on connect; reconnects reuse it until it expires", async () => {
      let n = 0;
      let r = 0;
      let h;
      h = setup(transport, {
        token: undefined,
        random: () => r,
        minDelay: 20000,
        getToken: () => (++n, tokenFor("u1", 5, h ? h.timers.now() : T0)),
      });
      const s = Math.floor(T0 / 1000);
      await h.hello({ exp: s + 5 });
      assert.equal(n, 1);
      assert.ok(h.timers.pending().includes(4000), "80 % of 5 s");
      await h.timers.advance(3999);
      assert.equal(n, 1, "not at once");
      await h.timers.advance(1);
      assert.equal(n, 2);
      const auth = h.sent("auth").at(-1);
      assert.equal(auth.token, tokenFor("u1", 9));
      h.send({ type: "ack", ref: auth.id, of: "auth", exp: s + 9 });
      await settle();
      assert.ok(h.timers.pending().includes(4000), "again at 80 % of the new token");
      // a reconnect while the token is still good does not ask for another one
      await h.close(4000);
      await h.timers.advance(0);
      await h.hello({ exp: s + 9 });
      assert.equal(h.count, 2);
      assert.equal(h.token(), tokenFor("u1", 9));
      assert.equal(n, 2);
      assert.ok(h.timers.pending().includes(4000));
      // ... one after it expired does (the reconnect waits 10 s here)
      r = 0.5;
      await h.close(4000);
      await h.timers.advance(10000);
      await h.hello();
      assert.equal(n, 3);
      assert.equal(h.token(), tokenFor("u1", 5, T0 + 14000));
      assert.deepEqual(h.events.error, []);
      h.client.close();
    });

    for (const [lifetime, delay] of [
      [30 * 86400, 30 * 86400 * 800], // 80 %
      [3600, 2880000], // 80 %
      [200, 140000], // 60 s before exp (earlier than 80 %)
      [120, 60000],
      [100, 80000], // under two minutes: 80 %
      [5, 4000],
      [2, 1600],
      [1, 0], // expires within 1 s: at once
      [-30, 0], // expired
    ]) {
      test(`a token with ${lifetime} s left at hello renews after ${delay / 1000} s`, async () => {
        let n = 0;
        const h = setup(transport, { getToken: () => (++n, tokenFor("u1", 3600)) });
        await h.hello({ exp: Math.floor(T0 / 1000) + lifetime, heartbeat: 1e7 }); // no heartbeat timeout
        assert.equal(n, 0, "the given token is used first");
        if (delay) assert.ok(h.timers.pending().includes(delay), `${h.timers.pending()}`);
        await h.timers.advance(Math.max(delay - 1, 0));
        assert.equal(n, delay ? 0 : 1);
        await h.timers.advance(1);
        assert.equal(n, 1);
        h.client.close();
      });
    }

    test("anonymous token from POST /v1/anonymous, kept in storage", async () => {
      const store = new Map();
      const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => void store.set(k, v) };
      const h = setup(transport, { token: undefined, storage });
      await h.hello();
      const [anon] = h.posts("/v1/anonymous");
      assert.equal(anon.headers.Authorization, undefined);
      const saved = JSON.parse(store.get("pushrec.anon"));
      assert.ok(saved.user_id.startsWith("anon:"));
      assert.equal(h.token(), saved.token);
      h.client.close();

      // next page load: same visitor, no request
      const h2 = setup(transport, { token: undefined, storage });
      await h2.hello();
      assert.equal(h2.posts("/v1/anonymous").length, 0);
      assert.equal(h2.token(), saved.token);
      // refused (4501): renewed with the stored token as Bearer
      await h2.close(4501);
      const [renew] = h2.posts("/v1/anonymous");
      assert.equal(renew.headers.Authorization, `Bearer ${saved.token}`);
      assert.equal(JSON.parse(store.get("pushrec.anon")).user_id, "anon:same");
      h2.client.close();
    });
  });

  describe(`${transport}: identify`, () => {
    const anonSetup = (extra) => {
      const asked = [];
      const h = setup(transport, {
        token: undefined,
        getToken: ({ userId }) => (asked.push(userId), userId ? tokenFor(userId) : null),
        ...extra,
      });
      h.asked = asked;
      return h;
    };

    test("identify sends identify, waits for the ack, then uses the user's token", async () => {
      const h = anonSetup();
      await h.hello({ user: "anon:1" });
      const anonToken = h.token();
      h.send(snapshot("home", ["a", 1], [item("x")]));
      assert.deepEqual(h.asked, [undefined], "null from getToken: anonymous");
      const done = h.client.identify("alice");
      let resolved = false;
      void done.then(() => (resolved = true));
      await settle();
      assert.deepEqual(h.asked, [undefined, "alice"]);
      const [msg] = h.sent("identify");
      assert.deepEqual(msg, { type: "identify", token: tokenFor("alice"), id: msg.id });
      if (!isWs) {
        const [post] = h.posts("/v1/sse/");
        assert.equal(post.url, "https://push.test/v1/sse/c1");
        assert.equal(post.headers.Authorization, `Bearer ${anonToken}`, "the stream's (anonymous) token");
      }
      assert.equal(resolved, false, "waits for the ack");
      assert.equal(h.client.user, "anon:1");
      h.send({ type: "ack", ref: msg.id, of: "identify", user: "alice" });
      await done;
      assert.equal(h.client.user, "alice");
      assert.equal(h.count, 1, "same connection: the anonymous profile is merged");
      // the server sends the user's snapshots
      h.send(snapshot("home", ["b", 7], [item("y")]));
      assert.deepEqual(h.client.version("home"), ["b", 7]);
      // later client messages and reconnects use the user's token
      h.send(diff("home", ["b", 1], ["b", 8], [[0, 1]], { result: ["y"] }));
      await settle();
      if (!isWs) assert.equal(h.posts("/v1/sse/").at(-1).headers.Authorization, `Bearer ${tokenFor("alice")}`);
      h.send(snapshot("home", ["b", 8], [item("y")]));
      await h.close(4000);
      await h.timers.advance(500);
      await h.hello({ user: "alice", exp: Math.floor(T0 / 1000) + 3600, heartbeat: 1e7 });
      assert.equal(h.token(), tokenFor("alice"));
      assert.equal(h.query().get("have"), "home:b:8");
      assert.deepEqual(h.asked, [undefined, "alice"]);
      // renewals ask for the user's token (80 % of the 3599.5 s left)
      assert.ok(h.timers.pending().includes(2879600));
      await h.timers.advance(2879600);
      assert.deepEqual(h.asked, [undefined, "alice", "alice"]);
      assert.equal(h.sent("auth").at(-1).token, tokenFor("alice"));
      h.client.close();
    });

    test("identify before hello is sent after hello", async () => {
      const h = anonSetup();
      await settle();
      const done = h.client.identify("bob");
      await settle();
      assert.equal(h.sent("identify").length, 0);
      await h.hello({ user: "anon:1" });
      const [msg] = h.sent("identify");
      assert.equal(msg.token, tokenFor("bob"));
      h.send({ type: "ack", ref: msg.id, of: "identify", user: "bob" });
      await done;
      assert.equal(h.client.user, "bob");
      assert.equal(h.count, 1);
      h.client.close();
    });

    test("identify refused as forbidden (not anonymous) reconnects as the user, without have", async () => {
      const h = setup(transport, { getToken: ({ userId }) => tokenFor(userId || "u1") });
      await h.hello();
      h.send(snapshot("home", ["e", 1], [item("a")]));
      const done = h.client.identify("carol");
      await settle();
      const [msg] = h.sent("identify");
      h.send({ type: "error", code: "forbidden", message: "not anonymous", ref: msg.id });
      await done;
      await settle();
      assert.equal(h.count, 2);
      await h.hello({ user: "carol" });
      assert.equal(h.token(), tokenFor("carol"));
      assert.equal(h.query().get("have"), null);
      h.client.close();
    });

    test("identify with a token the server refuses rejects; the connection keeps its user", async () => {
      const h = anonSetup();
      await h.hello({ user: "anon:1" });
      const done = h.client.identify("mallory", "not-a-jwt");
      await settle();
      const [msg] = h.sent("identify");
      assert.equal(msg.token, "not-a-jwt");
      h.send({ type: "error", code: "unauthorized", message: "bad token", ref: msg.id });
      await assert.rejects(done, { code: "unauthorized" });
      assert.equal(h.client.user, "anon:1");
      assert.equal(h.count, 1);
      await h.close(4000);
      await h.timers.advance(500);
      await h.hello({ user: "anon:1" });
      assert.notEqual(h.token(), "not-a-jwt");
      h.client.close();
    });

    test("a connection lost before the ack identifies again after the reconnect", async () => {
      const h = anonSetup();
      await h.hello({ user: "anon:1" });
      const done = h.client.identify("dave");
      await settle();
      await h.close(4000);
      await h.timers.advance(500);
      await h.hello({ user: "anon:1" });
      const msgs = h.sent("identify");
      assert.equal(msgs.length, 2);
      h.send({ type: "ack", ref: msgs[1].id, of: "identify", user: "dave" });
      await done;
      assert.equal(h.client.user, "dave");
      h.client.close();
    });
  });

  describe(`${transport}: track`, () => {
    test(isWs ? "batches go over the open socket" : "batches go to POST /v1/events", async () => {
      const h = setup(transport);
      await h.hello();
      const id = h.client.track("view", { item_id: "123", slot: 2 });
      h.client.track("search", { query: "tv" });
      h.client.track("click", "9");
      await h.timers.advance(999);
      assert.equal(h.sent("track").length + h.posts("/v1/events").length, 0, "waits ~1 s");
      await h.timers.advance(1);
      const events = isWs ? h.sent("track")[0].events : h.posts("/v1/events")[0].body;
      assert.deepEqual(events, [
        { event_id: id, type: "view", item_id: "123", ts: T0, props: { slot: 2 } },
        { event_id: events[1].event_id, type: "search", ts: T0, props: { query: "tv" } },
        { event_id: events[2].event_id, type: "click", item_id: "9", ts: T0 },
      ]);
      assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      if (isWs) assert.equal(h.posts("/v1/events").length, 0);
      else assert.equal(h.posts("/v1/events")[0].headers.Authorization, `Bearer ${tokenFor("u1")}`);
      // 20 events flush at once
      for (let i = 0; i < 20; i++) h.client.track("impression", String(i));
      await settle();
      const second = isWs ? h.sent("track")[1].events : h.posts("/v1/events")[1].body;
      assert.equal(second.length, 20);
      h.client.close();
    });

    test("before the connection is open, events go over HTTP", async () => {
      const h = setup(transport);
      h.client.track("view", "1");
      await h.timers.advance(1000);
      const [post] = h.posts("/v1/events");
      assert.deepEqual(post.body.map((e) => e.item_id), ["1"]);
      h.client.close();
    });

    test("HTTP 503 and network errors keep the batch for a retry", async () => {
      let fail = 2;
      const h = setup(transport, {
        handler: (c) =>
          c.url.endsWith("/v1/events") && fail-- > 0 ? (fail ? new Error("offline") : { status: 503, body: {} }) : undefined,
      });
      const id = h.client.track("view", "1");
      await h.timers.advance(1000);
      await h.timers.advance(5000);
      await h.timers.advance(5000);
      const posts = h.posts("/v1/events");
      assert.equal(posts.length, 3);
      assert.deepEqual(posts.map((p) => p.body[0].event_id), [id, id, id]);
      h.client.close();
    });
  });

  describe(`${transport}: experiments (rec)`, () => {
    const R1 = "e.1~exp1:r1:b";
    const R2 = "e.2~exp1:r1:b";
    const R3 = "e.3~exp1:r1:b,exp2:r4:a";
    const tracked = async (h) => {
      h.client.flush();
      await settle();
      return isWs ? h.sent("track").flatMap((m) => m.events) : h.posts("/v1/events").flatMap((p) => p.body);
    };

    test("rec is held from a snapshot, replaced by a diff, cleared by a list without one", async () => {
      const h = setup(transport);
      await h.hello();
      assert.equal(h.client.rec("home"), undefined, "before the first snapshot");
      h.send({ ...snapshot("home", ["e", 1], [item("a"), item("b")]), rec: R1 });
      assert.equal(h.client.rec("home"), R1);
      h.send({ ...diff("home", ["e", 1], ["e", 2], [[1, 1], [0, 1]], { result: ["b", "a"] }), rec: R2 });
      assert.equal(h.client.rec("home"), R2);
      h.send(diff("home", ["e", 2], ["e", 3], [[0, 1]], { result: ["b"] }));
      assert.equal(h.client.rec("home"), undefined, "a diff without rec: not an experiment's list");
      h.send({ ...diff("home", ["e", 3], ["e", 4], [[0, 1], "a"], { result: ["b", "a"] }), rec: R3 });
      assert.equal(h.client.rec("home"), R3);
      h.send(snapshot("home", ["e", 9], [item("c")]));
      assert.equal(h.client.rec("home"), undefined, "a snapshot without rec clears it");
      assert.deepEqual(
        h.events.feed.map((e) => e.rec),
        [R1, R2, undefined, R3, undefined],
      );
      assert.equal("rec" in h.events.feed[2], false, "no rec key when the list has none");
      assert.equal(h.events.feed[1].diff.rec, R2);
      assert.deepEqual(h.events.error, []);
      h.client.close();
    });

    test("a broken list keeps its rec until the snapshot replaces it", async () => {
      const h = setup(transport);
      await h.hello();
      h.send({ ...snapshot("home", ["e", 1], [item("a")]), rec: R1 });
      h.send({ ...diff("home", ["e", 0], ["e", 2], [[0, 1]], { result: ["a"] }), rec: R2 }); // wrong base
      await settle();
      assert.equal(h.events.error.at(-1).code, "resync");
      assert.equal(h.client.rec("home"), R1, "the list still shown is the R1 list");
      h.send({ ...snapshot("home", ["e", 2], [item("a")]), rec: R2 });
      assert.equal(h.client.rec("home"), R2);
      h.client.close();
    });

    test("replayed diffs of a resume carry the rec of the list they produce", async () => {
      const h = setup(transport);
      await h.hello();
      h.send({ ...snapshot("home", ["e", 1], [item("a")]), rec: R1 });
      await h.close(4001, "slow");
      await h.timers.advance(250);
      assert.equal(h.query().get("have"), "home:e:1");
      assert.equal(h.client.rec("home"), R1, "kept while reconnecting");
      await h.hello();
      h.send({ ...diff("home", ["e", 1], ["e", 2], ["b", [0, 1]], { items: { b: item("b") }, result: ["b", "a"] }), rec: R2 });
      h.send({ ...diff("home", ["e", 2], ["e", 3], [[1, 1]], { result: ["a"] }), rec: R3 });
      assert.deepEqual(ids(h.client.items("home")), ["a"]);
      assert.equal(h.client.rec("home"), R3);
      assert.deepEqual(h.events.feed.map((e) => e.rec), [R1, R2, R3]);
      h.client.close();
    });

    test("impression and click quote the held list's rec", async () => {
      const h = setup(transport);
      await h.hello();
      h.send({ ...snapshot("home", ["e", 1], [item("a"), item("b")]), rec: R1 });
      const imp = h.client.impression("home");
      const c1 = h.client.click("home", "b");
      const c2 = h.client.click("home", "a", { slot: 1 });
      assert.deepEqual(await tracked(h), [
        { event_id: imp, type: "impression", ts: T0, props: { rec: R1 } },
        { event_id: c1, type: "click", item_id: "b", ts: T0, props: { rec: R1 } },
        { event_id: c2, type: "click", item_id: "a", ts: T0, props: { slot: 1, rec: R1 } },
      ]);
      h.client.close();
    });

    test("consent sends the visitor's decision as a consent event", async () => {
      const h = setup(transport);
      await h.hello();
      const no = h.client.consent(false);
      const yes = h.client.consent(true);
      assert.deepEqual(await tracked(h), [
        { event_id: no, type: "consent", ts: T0, props: { personalization: false } },
        { event_id: yes, type: "consent", ts: T0, props: { personalization: true } },
      ]);
      h.client.close();
    });

    test("without a rec: impression sends nothing, click is sent without one", async () => {
      const h = setup(transport);
      await h.hello();
      assert.equal(h.client.impression("home"), undefined, "no list yet");
      h.send(snapshot("home", ["e", 1], [item("a")]));
      assert.equal(h.client.impression("home"), undefined, "a list made outside any experiment");
      const c = h.client.click("home", "a");
      const c2 = h.client.click("other", "z", { slot: 3 });
      assert.deepEqual(await tracked(h), [
        { event_id: c, type: "click", item_id: "a", ts: T0 },
        { event_id: c2, type: "click", item_id: "z", ts: T0, props: { slot: 3 } },
      ]);
      h.client.close();
    });
  });
}

describe("websocket: track acks", () => {
  test("unacked batches are re-sent after a reconnect, acked ones are not", async () => {
    const h = setup("websocket");
    await h.hello();
    h.client.track("view", "1");
    await h.timers.advance(1000);
    h.client.track("view", "2");
    await h.timers.advance(1000);
    const [first, second] = h.sent("track");
    h.send({ type: "ack", ref: first.id, of: "track", accepted: 1, rejected: [] });
    await h.close(4000);
    await h.timers.advance(500);
    await h.hello();
    const resent = h.conn.sent.filter((m) => m.type === "track");
    assert.equal(resent.length, 1);
    assert.notEqual(resent[0].id, second.id);
    assert.deepEqual(resent[0].events, second.events, "same event_ids: the server dedups");
    assert.equal(h.posts("/v1/events").length, 0);
    h.client.close();
  });

  test("rejected events are reported; rate_limited batches retried", async () => {
    const h = setup("websocket");
    await h.hello();
    h.client.track("view", "1");
    await h.timers.advance(1000);
    const [m] = h.sent("track");
    h.send({ type: "error", code: "rate_limited", message: "slow down", ref: m.id });
    assert.deepEqual(h.events.error, [{ code: "rate_limited", message: "slow down", terminal: false }]);
    await h.timers.advance(5000);
    const again = h.sent("track")[1];
    assert.deepEqual(again.events, m.events);
    h.send({
      type: "ack",
      ref: again.id,
      of: "track",
      accepted: 0,
      rejected: [{ index: 0, reason: "bad_item_id", message: "no such item" }],
    });
    assert.deepEqual(h.events.error.at(-1), { code: "bad_item_id", message: "no such item", terminal: false });
    h.client.close();
  });

  test("close() sends queued and unacked events over HTTP", async () => {
    const h = setup("websocket");
    await h.hello();
    h.client.track("view", "1");
    await h.timers.advance(1000);
    h.client.track("view", "2");
    h.client.close();
    await settle();
    const [post] = h.posts("/v1/events");
    assert.deepEqual(post.body.map((e) => e.item_id), ["1", "2"]);
  });

  test("a batch over the message size limit goes over HTTP", async () => {
    const h = setup("websocket");
    await h.hello();
    for (let i = 0; i < 5; i++) h.client.track("search", { query: "x".repeat(4000) });
    await h.timers.advance(1000);
    assert.equal(h.sent("track").length, 0);
    assert.equal(h.posts("/v1/events")[0].body.length, 5);
    h.client.close();
  });
});

describe("sse only", () => {
  for (const [how, answer] of [
    ["404 no_stream (another node)", { status: 404, body: { error: "no_stream" } }],
    ["401", { status: 401, body: { error: "unauthorized" } }],
    ["a network error", new Error("offline")],
  ]) {
    test(`a refresh POST answered with ${how} → reconnect with the new token and have`, async () => {
      let n = 0;
      let refuse = false;
      const h = setup("sse", {
        token: undefined,
        getToken: () => tokenFor("u1", 1000 * ++n),
        handler: (c) => (refuse && c.url.includes("/v1/sse/") ? answer : undefined),
      });
      await h.hello({ exp: Math.floor(T0 / 1000) + 1000, heartbeat: 5000 });
      h.send(snapshot("home", ["e", 3], [item("a")]));
      refuse = true;
      await h.timers.advance(800000);
      assert.equal(h.sent("auth").length, 1);
      assert.equal(h.count, 2, "reconnects at once");
      assert.ok(h.streams[0].closed);
      assert.equal(h.token(), tokenFor("u1", 2000));
      assert.equal(h.query().get("have"), "home:e:3");
      assert.equal(n, 2, "no other token");
      assert.deepEqual(h.events.error, []);
      h.client.close();
    });
  }

  test("identify POST answered 404 no_stream → reconnect as the user, without have", async () => {
    let refuse = false;
    const noStream = { status: 404, body: { error: "no_stream" } };
    const h = setup("sse", {
      token: undefined,
      getToken: ({ userId }) => (userId ? tokenFor(userId) : null),
      handler: (c) => (refuse && c.url.includes("/v1/sse/") ? noStream : undefined),
    });
    await h.hello({ user: "anon:1" });
    h.send(snapshot("home", ["a", 1], [item("x")]));
    refuse = true;
    await h.client.identify("alice");
    await settle();
    assert.equal(h.sent("identify").length, 1);
    assert.equal(h.count, 2);
    assert.ok(h.streams[0].closed);
    assert.equal(h.token(), tokenFor("alice"));
    assert.equal(h.query().get("have"), null, "the anonymous versions are not resumed");
    assert.deepEqual(h.client.items("home").map((i) => i.id), ["x"], "the list stays until the snapshot");
    h.client.close();
  });

  test("an ack that arrives before the POST's answer settles the request", async () => {
    let h;
    h = setup("sse", {
      token: undefined,
      getToken: ({ userId }) => (userId ? tokenFor(userId) : null),
      handler: (c) => {
        if (c.body?.type === "identify") h.send({ type: "ack", ref: c.body.id, of: "identify", user: "erin" });
      },
    });
    await h.hello({ user: "anon:1" });
    await h.client.identify("erin");
    assert.equal(h.client.user, "erin");
    assert.equal(h.count, 1);
    h.client.close();
  });

  test("a resync POST that fails → reconnect without that feed's have", async () => {
    const h = setup("sse", {
      feeds: ["home", "similar"],
      handler: (c) => (c.url.includes("/v1/sse/") ? { status: 404, body: { error: "no_stream" } } : undefined),
    });
    await h.hello();
    h.send(snapshot("home", ["e", 1], [item("a")]));
    h.send(snapshot("similar", ["s", 5], [item("b")]));
    h.send(diff("home", ["e", 7], ["e", 8], [[0, 1]], { result: ["a"] }));
    await settle();
    assert.equal(h.count, 2);
    assert.equal(h.query().get("have"), "similar:s:5");
    assert.ok(h.streams[0].closed);
    h.client.close();
  });

  test("a stream refused with 401 before hello counts as close 4501", async () => {
    let n = 0;
    const h = setup("sse", {
      token: undefined,
      getToken: () => tokenFor("u1", 100 * ++n),
      handler: (c) => (c.method === "GET" ? { status: 401, body: { error: "unauthorized" } } : undefined),
    });
    await settle();
    await h.fail();
    assert.equal(n, 2, "a fresh token");
    assert.equal(h.count, 2);
    await h.fail();
    assert.equal(h.client.state, "closed");
    assert.equal(h.events.error.at(-1).code, 4501);
  });

  test("server error events are not transport errors", async () => {
    const h = setup("sse");
    await h.hello();
    h.send({ type: "error", code: "unknown_feed", message: "no feed named 'x'" });
    assert.equal(h.client.state, "open");
    assert.deepEqual(h.events.error, [{ code: "unknown_feed", message: "no feed named 'x'", terminal: false }]);
    h.client.close();
  });
});

describe("transport fallback", () => {
  for (const [how, breakWs] of [
    ["error", (h) => h.sockets[0].error()],
    ["close 1006", (h) => h.sockets[0].drop(1006)],
    ["timeout", (h) => h.timers.advance(5000)],
  ]) {
    test(`websocket ${how} before hello → sse, then sse sticks`, async () => {
      const h = setup("sse", { transports: ["websocket", "sse"] });
      await settle();
      assert.equal(h.sockets.length, 1);
      assert.equal(h.streams.length, 0);
      await breakWs(h);
      await settle();
      assert.equal(h.streams.length, 1, "sse at once, no backoff");
      assert.equal(h.client.state, "connecting");
      assert.equal(h.client.transport, null);
      await h.hello();
      assert.equal(h.client.transport, "sse");
      assert.deepEqual(h.events.open, [{ transport: "sse", user: "u1" }]);
      await h.close(4000);
      await h.timers.advance(250);
      assert.equal(h.sockets.length, 1, "no websocket again");
      assert.equal(h.streams.length, 2);
      h.client.close();
    });
  }

  test("once the websocket said hello it sticks", async () => {
    const h = setup("websocket", { transports: ["websocket", "sse"] });
    await h.hello();
    await h.close(1006);
    await h.timers.advance(500);
    h.sockets[1].error();
    await h.timers.advance(1000);
    assert.equal(h.streams.length, 0);
    assert.equal(h.sockets.length, 3);
    h.client.close();
  });

  test("a server close code before hello is not a transport failure", async () => {
    const h = setup("websocket", { transports: ["websocket", "sse"] });
    await settle();
    h.sockets[0].accept();
    h.sockets[0].drop(4003);
    await h.timers.advance(250);
    assert.equal(h.streams.length, 0);
    assert.equal(h.sockets.length, 2);
    h.client.close();
  });

  test("both failing → backoff, then websocket first again", async () => {
    const h = setup("sse", { transports: ["websocket", "sse"] });
    await settle();
    h.sockets[0].error();
    await settle();
    await h.fail();
    assert.equal(h.client.state, "reconnecting");
    await h.timers.advance(250);
    assert.equal(h.sockets.length, 2);
    h.client.close();
  });

  test("no transport available → constructor throws", () => {
    assert.throws(() => setup("sse", { EventSource: undefined }), /no WebSocket\/EventSource/);
  });
});

describe("page lifecycle (DOM-like globals)", () => {
  const install = () => {
    const listeners = {};
    const target = (name) => ({
      addEventListener: (t, f) => ((listeners[`${name}:${t}`] ||= []).push(f)),
      removeEventListener: (t, f) => listeners[`${name}:${t}`]?.splice(listeners[`${name}:${t}`].indexOf(f), 1),
    });
    const win = target("window");
    const doc = { ...target("document"), visibilityState: "visible" };
    const beacons = [];
    const saved = {};
    for (const k of ["addEventListener", "removeEventListener", "document", "navigator"]) {
      saved[k] = Object.getOwnPropertyDescriptor(globalThis, k);
    }
    const nav = { sendBeacon: (url, blob) => (beacons.push({ url, blob }), true) };
    Object.defineProperty(globalThis, "addEventListener", { value: win.addEventListener, configurable: true });
    Object.defineProperty(globalThis, "removeEventListener", { value: win.removeEventListener, configurable: true });
    Object.defineProperty(globalThis, "document", { value: doc, configurable: true });
    Object.defineProperty(globalThis, "navigator", { value: nav, configurable: true });
    return {
      doc,
      beacons,
      fire: (key) => [...(listeners[key] || [])].forEach((f) => f()),
      count: (key) => (listeners[key] || []).length,
      restore() {
        for (const [k, d] of Object.entries(saved)) {
          if (d) Object.defineProperty(globalThis, k, d);
          else delete globalThis[k];
        }
      },
    };
  };

  for (const transport of ["websocket", "sse"]) {
    test(`${transport}: offline closes and waits, online reconnects at once`, async (t) => {
      const env = install();
      t.after(env.restore);
      const h = setup(transport);
      await h.hello();
      await h.close(4000); // in backoff
      await h.timers.advance(250);
      await h.hello();
      env.fire("window:offline");
      assert.equal(h.client.state, "paused");
      await h.timers.advance(120000);
      assert.equal(h.count, 2, "no reconnect while offline");
      env.fire("window:online");
      await settle();
      assert.equal(h.count, 3);
      h.client.close();
      assert.equal(env.count("window:online"), 0, "listeners removed on close");
    });

    test(`${transport}: hidden longer than hiddenTimeout closes; visible resumes`, async (t) => {
      const env = install();
      t.after(env.restore);
      const h = setup(transport, { hiddenTimeout: 60000 });
      await h.hello({ heartbeat: 1000 });
      h.send(snapshot("home", ["e", 4], [item("a")]));
      h.client.track("view", "a");
      env.doc.visibilityState = "hidden";
      env.fire("document:visibilitychange");
      assert.equal(env.beacons.length, 1, "pending events beaconed when hidden");
      const { url, blob } = env.beacons[0];
      assert.equal(url, `https://push.test/v1/events?token=${encodeURIComponent(tokenFor("u1"))}`);
      assert.equal(blob.type, "text/plain");
      assert.deepEqual(JSON.parse(await blob.text()).map((e) => e.item_id), ["a"]);
      await h.timers.advance(59000);
      h.send({ type: "ping" });
      assert.equal(h.client.state, "open");
      await h.timers.advance(1000);
      assert.equal(h.client.state, "paused");
      env.doc.visibilityState = "visible";
      env.fire("document:visibilitychange");
      await settle();
      assert.equal(h.count, 2);
      assert.equal(h.query().get("have"), "home:e:4");
      h.client.close();
    });
  }

  test("pagehide beacons pending events", async (t) => {
    const env = install();
    t.after(env.restore);
    const h = setup("sse");
    await h.hello();
    h.client.track("purchase", "7");
    env.fire("window:pagehide");
    assert.equal(env.beacons.length, 1);
    assert.equal(h.posts("/v1/events").length, 0);
    h.client.close();
  });
});

describe("listeners", () => {
  test("on() returns an unsubscribe function; states are emitted once per change", async () => {
    const h = setup("websocket");
    const seen = [];
    const off = h.client.on("state", (s) => seen.push(s));
    await h.hello();
    await h.close(4000);
    off();
    await h.timers.advance(500);
    await h.hello();
    assert.deepEqual(seen, ["open", "reconnecting"]);
    assert.deepEqual(h.events.state, ["open", "reconnecting", "open"]);
    h.client.close();
    assert.equal(h.events.state.at(-1), "closed");
  });
});
