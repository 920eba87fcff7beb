// The demo shop (examples/shop, on the pushrec SDK's browser bundle) in a real headless Chromium
// (Debian's), against one real `pushrec demo` server: a click changes the strip in place, a
// blocked WebSocket falls back to SSE, short-lived tokens are renewed without losing updates, two
// tabs of one visitor stay identical, the context strips ("More like this", "Goes with your cart")
// follow the product looked at and the cart. The server's tokens have no expiry leeway here, so a
// 5 s token really expires after 5 s. Screenshots of the README go to $PUSHREC_SCREENSHOTS when
// set; a failed test screenshots its pages to ./failures.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  DemoServer, clickNewProduct, launchBrowser, pageTest, scale, shots, shown, shownContext,
  waitContextShown, waitContextSynced, waitLive, waitSynced, waitVersionChange,
} from './harness.mjs';

let server;
let browser;

before(async () => {
  server = await new DemoServer({ PUSHREC_TOKEN_LEEWAY_S: '0' }).start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const demo = (page) => page.evaluate(() => {
  const d = window.pushrecDemo;
  return { user: d.user, transport: d.transport, opened: d.opened, reconnects: d.reconnects,
    closes: d.closes, tokens: d.tokens, errors: d.errors };
});

pageTest('a click on a product changes the strip in place', () => browser, async ({ newPage }) => {
  const page = await newPage('/', server.base);
  await waitLive(page, 'websocket');
  await page.evaluate(() => { window.__noReload = true; });
  const start = await waitSynced(page, server);
  // Keep hold of the strip's nodes: an update must reuse them (in place), not rebuild the strip.
  await page.evaluate(() => {
    window.__cards = new Map(Array.from(document.querySelectorAll('#recs .rec'), (e) => [e.dataset.id, e]));
  });
  if (shots) await page.screenshot({ path: join(shots, 'demo-before.png') });

  const target = await clickNewProduct(page);
  const next = await waitVersionChange(page, start.version);
  assert.equal(next.version[0], start.version[0], 'same epoch');
  assert.ok(next.version[1] > start.version[1], 'the version advanced');
  assert.notDeepEqual(next.ids, start.ids, 'the strip changed');
  assert.ok(next.ids.length > 0 && next.ids.length <= 12);
  assert.equal(new Set(next.ids).size, next.ids.length, 'no item twice');
  assert.ok(!next.ids.includes(target), 'the viewed item is not recommended to itself');
  assert.equal(await page.evaluate(() => window.__noReload), true, 'no page reload');
  const kept = await page.evaluate(() => Array.from(document.querySelectorAll('#recs .rec'))
    .filter((e) => window.__cards.get(e.dataset.id) === e).map((e) => e.dataset.id));
  assert.deepEqual(kept, next.ids.filter((id) => start.ids.includes(id)),
    'items that stayed kept their node');
  // The page's list equals the server's stored feed, item for item.
  await waitSynced(page, server);
  const d = await demo(page);
  assert.deepEqual(d.opened, ['websocket']);
  assert.equal(d.reconnects, 0);

  if (shots) {
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.waitForTimeout(600); // let the "new item" highlight settle into the picture
    await page.screenshot({ path: join(shots, 'demo-after.png') });
  }
});

pageTest('a blocked WebSocket falls back to SSE', () => browser, async ({ newPage }) => {
  const page = await newPage();
  // Every WebSocket to /v1/ws is closed by "the network" before the server could answer.
  let blocked = 0;
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    blocked += 1;
    ws.close();
  });
  await page.goto(server.base);
  await waitLive(page, 'sse');
  assert.equal(await page.textContent('#status'), 'live via sse');
  assert.ok(blocked >= 1, 'the page tried the WebSocket first');
  const start = await waitSynced(page, server);

  await clickNewProduct(page);
  const next = await waitVersionChange(page, start.version);
  assert.ok(next.version[1] > start.version[1]);
  await waitSynced(page, server);
  const d = await demo(page);
  assert.deepEqual(d.opened, ['sse'], 'one connection, over SSE');
  assert.ok(d.closes.some((c) => c.transport === 'websocket'), 'the blocked socket was seen');
});

pageTest('?transports=sse uses SSE only', () => browser, async ({ newPage }) => {
  const page = await newPage('/?transports=sse', server.base);
  await waitLive(page, 'sse');
  const start = await waitSynced(page, server);
  await clickNewProduct(page);
  await waitVersionChange(page, start.version);
  await waitSynced(page, server);
  const d = await demo(page);
  assert.deepEqual(d.opened, ['sse']);
  assert.deepEqual(d.closes, [], 'no WebSocket was tried');
});

pageTest('an expired token is renewed without losing updates', () => browser, async ({ newPage }) => {
  const page = await newPage('/?ttl=5', server.base);
  await waitLive(page, 'websocket');
  const start = await waitSynced(page, server);
  await clickNewProduct(page);
  const first = await waitVersionChange(page, start.version);
  await waitSynced(page, server);

  // Past the first token's expiry (5 s, no leeway on this server; the server's expiry sweep runs
  // about once a second): without renewal the server would close the socket with 4501 now.
  await page.waitForTimeout(7_000);
  await clickNewProduct(page);
  await waitVersionChange(page, first.version);
  await waitSynced(page, server);

  const d = await demo(page);
  // The first token expired at 5 s; the socket outlived it on a renewed one (the SDK renews at
  // 80 % of a token's remaining life, so about every 4 s here).
  assert.ok(d.tokens >= 2, `tokens were renewed (${d.tokens} minted)`);
  assert.deepEqual(d.closes, [], 'the connection was never closed (no 4501)');
  assert.equal(d.reconnects, 0, 'no reconnect: renewed over the open socket');
  assert.deepEqual(d.opened, ['websocket']);
  assert.deepEqual(d.errors, []);
}, { timeout: 60_000 });

pageTest('two tabs of one visitor stay identical', () => browser, async ({ newPage }) => {
  const a = await newPage('/', server.base);
  await waitLive(a);
  // Same browser context, so the same localStorage: the second tab is the same visitor.
  const b = await newPage('/', server.base);
  await waitLive(b);
  const user = (await demo(a)).user;
  assert.ok(user);
  assert.equal((await demo(b)).user, user, 'one visitor');

  let v = (await waitSynced(a, server)).version;
  for (const [clicked, other] of [[a, b], [b, a], [a, b]]) {
    await clickNewProduct(clicked);
    const mine = await waitVersionChange(clicked, v);
    await waitSynced(clicked, server);
    const theirs = await waitSynced(other, server);
    const again = await shown(clicked);
    assert.deepEqual(theirs.ids, again.ids, 'both strips show the same items');
    assert.deepEqual(theirs.version, again.version, 'both at the same version');
    assert.ok(again.version[1] > v[1] && mine.version[1] > v[1]);
    v = again.version;
  }
});

pageTest('"More like this" follows the product looked at, "Goes with your cart" the cart',
  () => browser, async ({ newPage }) => {
    const page = await newPage('/', server.base);
    await waitLive(page, 'websocket');
    // A fresh visitor: both context feeds arrive (similar: only what is trending; cart: empty),
    // and neither strip shows.
    for (const feed of ['similar', 'cart']) {
      await page.waitForSelector(`#${feed}-strip[data-n]`, { state: 'attached', timeout: 20_000 * scale });
    }
    const similar0 = await shownContext(page, 'similar');
    const cart0 = await shownContext(page, 'cart');
    assert.equal(similar0.hidden, true, 'no "More like this" before a product was looked at');
    assert.equal(cart0.hidden, true, 'no "Goes with your cart" for an empty cart');
    assert.deepEqual(cart0.ids, []);
    const home0 = await waitSynced(page, server);

    // View A: the grid's first product, the most popular of the warm-up traffic (so it has
    // co-viewed neighbours; the server falls back to trending anyway, so the list is never empty).
    const a = await page.$eval('#grid .product', (c) => c.dataset.id);
    await page.click(`#grid .product[data-id="${a}"]`, { position: { x: 20, y: 20 } });
    const similar1 = await waitContextShown(page, 'similar', similar0.version);
    assert.equal(similar1.item, a, 'the strip says which product it is like');
    assert.ok(similar1.ids.length <= 12);
    assert.equal(new Set(similar1.ids).size, similar1.ids.length, 'no item twice');
    assert.ok(!similar1.ids.includes(a), 'the product looked at is not "like itself"');
    assert.notDeepEqual(similar1.ids, similar0.ids, 'its neighbours, not just what is trending');
    await waitContextSynced(page, server, 'similar');
    assert.equal((await shownContext(page, 'cart')).hidden, true, 'a view fills no cart');

    // Add B (another popular product) to the cart with its card's button.
    const b = await page.$$eval('#grid .product', (cards, a) => cards
      .find((c) => c.dataset.id !== a && !c.querySelector('button.add').disabled)?.dataset.id, a);
    assert.ok(b, 'a product to add to the cart');
    await page.click(`#grid .product[data-id="${b}"] button.add`);
    const cart1 = await waitContextShown(page, 'cart', cart0.version);
    assert.ok(cart1.ids.length <= 12);
    assert.equal(new Set(cart1.ids).size, cart1.ids.length, 'no item twice');
    assert.ok(!cart1.ids.includes(b), 'nothing already in the cart');
    await waitContextSynced(page, server, 'cart');
    // The cart item is the latest one looked at: "More like this" follows it.
    const similar2 = await waitContextShown(page, 'similar', similar1.version);
    assert.equal(similar2.item, b);
    assert.ok(!similar2.ids.includes(b));
    await waitContextSynced(page, server, 'similar');

    // The home strip and #version are the home feed's, as before: both events advanced it.
    const home = await waitSynced(page, server);
    assert.equal(home.version[0], home0.version[0], 'same epoch');
    assert.ok(home.version[1] > home0.version[1], 'the home feed advanced');
    assert.match(await page.textContent('#version'), /^home @ /);
    assert.deepEqual((await demo(page)).errors, []);
  });
