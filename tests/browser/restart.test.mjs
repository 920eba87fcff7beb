// The demo shop survives its server being SIGKILLed and started again mid-session (same port,
// same PUSHREC_SECRET, same PUSHREC_DATA_DIR so the embedded Redis reloads its append-only file):
// the page reconnects on its own, resumes, shows no stale strip, and a new click still updates it.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DemoServer, clickNewProduct, launchBrowser, pageTest, scale, shown, waitLive, waitSynced,
  waitVersionChange,
} from './harness.mjs';

let server;
let browser;
let dataDir;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'pushrec-browser-'));
  server = await new DemoServer({ PUSHREC_DATA_DIR: dataDir }).start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

pageTest('a killed and restarted server: the page reconnects and resumes', () => browser,
  async ({ newPage }) => {
    const page = await newPage('/', server.base);
    await waitLive(page, 'websocket');
    const start = await waitSynced(page, server);
    const firstClick = await clickNewProduct(page);
    const before = await waitVersionChange(page, start.version);
    await waitSynced(page, server);

    await server.kill();
    await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: 10_000 * scale });
    assert.deepEqual(await shown(page), before, 'the strip stays while the server is down');

    await server.start(); // same port, secret and data directory
    await page.waitForFunction(() => window.pushrecDemo.opened.length >= 2, null,
      { timeout: 30_000 * scale, polling: 100 });
    await waitLive(page, 'websocket');
    // Resumed: the server kept the feed (Redis AOF), so the page's version is still current.
    const resumed = await waitSynced(page, server);
    assert.deepEqual(resumed.version, before.version, 'the stored feed survived the restart');

    // A click after the restart updates the strip; page and server agree.
    await clickNewProduct(page, [firstClick]);
    const after = await waitVersionChange(page, resumed.version);
    assert.equal(after.version[0], before.version[0], 'same epoch: the chain continued');
    assert.ok(after.version[1] > before.version[1]);
    await waitSynced(page, server);

    const d = await page.evaluate(() => {
      const { reconnects, closes, errors } = window.pushrecDemo;
      return { reconnects, closes, errors };
    });
    assert.ok(d.reconnects >= 1);
    assert.ok(d.closes.some((c) => c.code === 1006), 'the killed server closed nothing cleanly');
    assert.ok(!d.closes.some((c) => c.code >= 4500), 'no terminal close');
    assert.deepEqual(d.errors.filter((e) => e.terminal), []);
  }, { timeout: 90_000 });
