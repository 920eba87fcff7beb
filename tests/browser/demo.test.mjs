// The demo shop in a real headless Chromium (Debian's), against the real `pushrec demo` server:
// a click on a product changes the "Recommended for you" strip in place, without a reload.
// Screenshots go to $PUSHREC_SCREENSHOTS (when set) and always to ./artifacts on failure.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const python = process.env.PUSHREC_PYTHON || join(root, '.venv', 'bin', 'python');
const scale = Number(process.env.PUSHREC_TEST_TIMEOUT_SCALE || '1');
const artifacts = join(here, 'artifacts');
const shots = process.env.PUSHREC_SCREENSHOTS ? resolve(process.env.PUSHREC_SCREENSHOTS) : null;

let server;
let browser;
let base;
let serverLog = '';

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function waitReady(url, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) throw new Error(`server exited (${server.exitCode}):\n${serverLog}`);
    try {
      const r = await fetch(`${url}/readyz`);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server not ready in ${ms} ms:\n${serverLog}`);
}

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(python, ['-m', 'push.cli', 'demo', '--port', String(port)], {
    cwd: root,
    env: { ...process.env, PUSHREC_LOG_FORMAT: 'json', PUSHREC_LOG_LEVEL: 'warning' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stdout.on('data', (d) => { serverLog += d; });
  server.stderr.on('data', (d) => { serverLog += d; });
  await waitReady(base, 60_000 * scale);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
});

const recIds = (page) => page.$$eval('#recs .rec', (els) => els.map((e) => e.dataset.id));

test('a click on a product changes the strip in place', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  try {
    await page.goto(base);
    await page.waitForSelector('#status[data-state="live"]', { timeout: 15_000 * scale });
    await page.waitForSelector('#grid .product', { timeout: 15_000 * scale });
    await page.waitForSelector('#version[data-n]', { timeout: 15_000 * scale });
    await page.evaluate(() => { window.__noReload = true; });
    const before = await recIds(page);
    const n0 = Number(await page.getAttribute('#version', 'data-n'));
    if (shots) await page.screenshot({ path: join(shots, 'demo-before.png') });

    // Click the first product that is not already recommended, on the card itself (a view).
    const target = await page.$$eval('#grid .product', (cards, recs) =>
      cards.map((c) => c.dataset.id).find((id) => !recs.includes(id)), before);
    assert.ok(target, 'a product outside the strip');
    await page.click(`#grid .product[data-id="${target}"]`, { position: { x: 20, y: 20 } });

    await page.waitForFunction((n) => Number(document.querySelector('#version').dataset.n) > n,
      n0, { timeout: 10_000 * scale });
    const afterIds = await recIds(page);
    assert.notDeepEqual(afterIds, before, 'the strip changed');
    assert.ok(afterIds.length > 0 && afterIds.length <= 12);
    assert.equal(new Set(afterIds).size, afterIds.length, 'no item twice');
    assert.ok(!afterIds.includes(target), 'the viewed item is not recommended to itself');
    assert.equal(await page.evaluate(() => window.__noReload), true, 'no page reload');
    // The page's list equals the server's stored version (pull API), item for item.
    const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem('pushrec.demo.session') || 'null'));
    if (token?.user_id) {
      const r = await fetch(`${base}/v1/users/${token.user_id}/feeds/home`,
        { headers: { Authorization: `Bearer ${token.token}` } });
      const feed = await r.json();
      const shown = await page.getAttribute('#version', 'data-n');
      if (String(feed.version[1]) === shown) assert.deepEqual(feed.items.map((i) => i.id), afterIds);
    }
    if (shots) {
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.waitForTimeout(600); // let the "new item" highlight settle into the picture
      await page.screenshot({ path: join(shots, 'demo-after.png') });
    }
  } catch (err) {
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'demo-failure.png'), fullPage: true });
    throw err;
  } finally {
    await page.close();
  }
});
