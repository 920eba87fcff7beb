// Shared pieces of the browser tests: the real `pushrec demo` server (started from the Python
// venv, killable and restartable on the same port and data), Debian's headless Chromium through
// playwright-core, and a test wrapper that screenshots every page of a failed test.
import { test } from 'node:test';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, '..', '..');
const python = process.env.PUSHREC_PYTHON || join(root, '.venv', 'bin', 'python');
/** Multiplies every timeout (slow CI machines). */
export const scale = Number(process.env.PUSHREC_TEST_TIMEOUT_SCALE || '1');
export const failures = join(here, 'failures');
/** Where `PUSHREC_SCREENSHOTS=docs` puts the README's screenshots (null: not taken). */
export const shots = process.env.PUSHREC_SCREENSHOTS ? resolve(root, process.env.PUSHREC_SCREENSHOTS) : null;

/** Every server started, so that a failed test can show their logs. */
const servers = new Set();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Child processes of `pid` (the embedded redis-server), from /proc. */
function childrenOf(pid) {
  const out = [];
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const list = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim();
      if (list) out.push(...list.split(/\s+/).map(Number));
    }
  } catch {
    // not Linux, or already gone
  }
  return out;
}

/** True while `pid` runs (a zombie waiting for its reaper counts as gone). */
function alive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * A `pushrec demo` server on a fixed port, with fixed credentials, so that it can be killed and
 * started again as "the same server". `env` adds PUSHREC_* settings (e.g. PUSHREC_DATA_DIR).
 */
export class DemoServer {
  constructor(env = {}) {
    this.env = {
      PUSHREC_SECRET: randomBytes(24).toString('hex'),
      PUSHREC_ADMIN_KEY: randomBytes(12).toString('hex'),
      PUSHREC_LOG_FORMAT: 'json',
      PUSHREC_LOG_LEVEL: 'info', // start() waits for the `warmup_done` line
      ...env,
    };
    this.adminKey = this.env.PUSHREC_ADMIN_KEY;
    this.log = '';
    this.proc = null;
    servers.add(this);
  }

  async start() {
    this.port ||= await freePort();
    this.base = `http://127.0.0.1:${this.port}`;
    const proc = spawn(python, ['-m', 'push.cli', 'demo', '--port', String(this.port)], {
      cwd: root,
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    this.exited = new Promise((r) => proc.once('exit', r));
    let warm = false;
    let partial = '';
    proc.stdout.on('data', (d) => { this.log = (this.log + d).slice(-20_000); });
    proc.stderr.on('data', (d) => {
      this.log = (this.log + d).slice(-20_000);
      const lines = (partial + d).split('\n');
      partial = lines.pop();
      if (lines.some((l) => l.includes('"warmup_done"'))) warm = true;
    });
    // Ready, and done replaying the demo's warm-up traffic (17k events through the same bus as
    // the page's clicks: a click during the replay waits behind it on a loaded machine).
    const deadline = Date.now() + 90_000 * scale;
    let ready = false;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}):\n${this.log}`);
      try {
        ready ||= (await fetch(`${this.base}/readyz`)).ok;
      } catch {
        // not listening yet
      }
      if (ready && warm) return this;
      await sleep(100);
    }
    throw new Error(`server not ${ready ? 'warmed up' : 'ready'} in 90 s:\n${this.log}`);
  }

  /** SIGKILL: no graceful close frames, no shutdown. Waits until its Redis is gone too. */
  async kill() {
    const redis = childrenOf(this.proc.pid);
    this.proc.kill('SIGKILL');
    await this.exited;
    // The embedded redis-server gets SIGTERM when its parent dies (PR_SET_PDEATHSIG) and then
    // finishes its append-only file: the next server must not open the data directory before.
    const deadline = Date.now() + 15_000 * scale;
    while (redis.some(alive)) {
      if (Date.now() > deadline) throw new Error(`redis-server ${redis} outlived its server`);
      await sleep(50);
    }
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      await this.exited;
    }
  }

  /** The stored feed of a user (pull API, admin key): `{version, items, sum}`. */
  async feed(user, feed = 'home') {
    const r = await fetch(`${this.base}/v1/users/${encodeURIComponent(user)}/feeds/${feed}`, {
      headers: { 'X-API-Key': this.adminKey },
    });
    if (!r.ok) throw new Error(`GET feed of ${user}: HTTP ${r.status} ${await r.text()}`);
    return r.json();
  }
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * `test(name)` with a fresh browser context (so a fresh visitor: the page keeps its user id in
 * localStorage). The body gets `{context, newPage(path)}`. When it fails, every page it opened is
 * screenshotted to failures/<name>[-n].png and the pages' console output is added to the error.
 */
export function pageTest(name, getBrowser, body, { timeout = 60_000 } = {}) {
  test(name, { timeout: timeout * scale }, async () => {
    const context = await getBrowser().newContext({ viewport: { width: 1280, height: 900 } });
    const pages = [];
    const consoleLog = [];
    const newPage = async (path = '/', base) => {
      const page = await context.newPage();
      const n = pages.push(page);
      page.on('console', (m) => consoleLog.push(`[page ${n}] ${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => consoleLog.push(`[page ${n}] pageerror: ${e.message}`));
      if (base) await page.goto(base + path);
      return page;
    };
    try {
      await body({ context, newPage });
    } catch (err) {
      mkdirSync(failures, { recursive: true });
      const slug = name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase();
      for (const [i, page] of pages.entries()) {
        const file = join(failures, `${slug}${pages.length > 1 ? `-${i + 1}` : ''}.png`);
        try {
          await page.screenshot({ path: file, fullPage: true });
          consoleLog.push(`screenshot: ${file}`);
        } catch {
          // the page is gone
        }
        try {
          const demo = await page.evaluate(() => {
            const d = window.pushrecDemo || {};
            return { user: d.user, transport: d.transport, states: d.states, closes: d.closes,
              tokens: d.tokens, errors: d.errors };
          });
          consoleLog.push(`[page ${i + 1}] pushrecDemo: ${JSON.stringify(demo)}`);
        } catch {
          // the page is gone
        }
      }
      err.message += `\n--- pages ---\n${consoleLog.slice(-60).join('\n')}`;
      for (const s of servers) err.message += `\n--- server ${s.base} (last lines) ---\n${s.log.slice(-3000)}`;
      throw err;
    } finally {
      await context.close();
    }
  });
}

// ------------------------------------------------------------------ the shop page

/** What the page shows: strip ids in order, and the version of #version. */
export function shown(page) {
  return page.evaluate(() => {
    const v = document.querySelector('#version').dataset;
    return {
      ids: Array.from(document.querySelectorAll('#recs .rec'), (e) => e.dataset.id),
      version: v.n === undefined ? null : [v.epoch, Number(v.n)],
    };
  });
}

/** Waits until the page is live (over `transport`, when given), its grid and strip version shown. */
export async function waitLive(page, transport) {
  const t = 20_000 * scale;
  await page.waitForSelector(
    transport ? `#status[data-state="live"][data-transport="${transport}"]` : '#status[data-state="live"]',
    { timeout: t },
  );
  await page.waitForSelector('#grid .product', { timeout: t });
  await page.waitForSelector('#version[data-n]', { timeout: t });
}

/** Clicks (a `view`) the first product card of the grid that is not in the strip; returns its id. */
export async function clickNewProduct(page, exclude = []) {
  const { ids } = await shown(page);
  const skip = [...ids, ...exclude];
  const target = await page.$$eval('#grid .product', (cards, skip) =>
    cards.map((c) => c.dataset.id).find((id) => !skip.includes(id)), skip);
  if (!target) throw new Error('no product outside the strip');
  await page.click(`#grid .product[data-id="${target}"]`, { position: { x: 20, y: 20 } });
  return target;
}

/** Waits until the page shows a version other than `version` (a click's update arrived). */
export async function waitVersionChange(page, version, ms = 15_000) {
  await page.waitForFunction(
    ([e, n]) => {
      const v = document.querySelector('#version').dataset;
      return v.n !== undefined && (v.epoch !== e || Number(v.n) !== n);
    },
    version,
    { timeout: ms * scale, polling: 50 },
  );
  return shown(page);
}

/**
 * Waits until the page's strip and version equal the server's stored feed of the page's visitor
 * (the pull API), and returns them. This is "no stale strip": what the page shows is what the
 * server holds, id for id.
 */
export async function waitSynced(page, server, ms = 15_000) {
  const deadline = Date.now() + ms * scale;
  for (;;) {
    const user = await page.evaluate(() => window.pushrecDemo.user);
    const [mine, stored] = await Promise.all([shown(page), server.feed(user)]);
    const theirs = { ids: stored.items.map((i) => i.id), version: stored.version };
    if (JSON.stringify(mine) === JSON.stringify(theirs)) return { user, ...mine };
    if (Date.now() > deadline) {
      throw new Error(`page never matched the server's feed of ${user}:\n page   ${JSON.stringify(mine)}\n server ${JSON.stringify(theirs)}`);
    }
    await sleep(100);
  }
}

// ------------------------------------------------------------------ the context strips

/**
 * What a context strip ("More like this" = `similar`, "Goes with your cart" = `cart`) shows: its
 * ids in order, its feed's version (data-epoch / data-n of its section), whether the section is
 * hidden, and (similar) the item it says it is like.
 */
export function shownContext(page, feed) {
  return page.evaluate((feed) => {
    const section = document.querySelector(`#${feed}-strip`);
    const v = section.dataset;
    return {
      ids: Array.from(section.querySelectorAll(`#${feed}-recs .rec`), (e) => e.dataset.id),
      version: v.n === undefined ? null : [v.epoch, Number(v.n)],
      hidden: section.hidden,
      item: v.item ?? null,
    };
  }, feed);
}

/**
 * Waits until the context strip of `feed` is shown, not empty, at a version other than `version`
 * (null: any), and returns what it shows.
 */
export async function waitContextShown(page, feed, version, ms = 15_000) {
  await page.waitForFunction(
    ([feed, version]) => {
      const section = document.querySelector(`#${feed}-strip`);
      const v = section.dataset;
      return !section.hidden && v.n !== undefined
        && section.querySelectorAll('.rec').length > 0
        && (!version || v.epoch !== version[0] || Number(v.n) !== version[1]);
    },
    [feed, version],
    { timeout: ms * scale, polling: 50 },
  );
  return shownContext(page, feed);
}

/** As waitSynced, for a context strip: its ids and version equal the server's stored feed. */
export async function waitContextSynced(page, server, feed, ms = 15_000) {
  const deadline = Date.now() + ms * scale;
  for (;;) {
    const user = await page.evaluate(() => window.pushrecDemo.user);
    const [mine, stored] = await Promise.all([shownContext(page, feed), server.feed(user, feed)]);
    const have = { ids: mine.ids, version: mine.version };
    const theirs = { ids: stored.items.map((i) => i.id), version: stored.version };
    if (JSON.stringify(have) === JSON.stringify(theirs)) return mine;
    if (Date.now() > deadline) {
      throw new Error(`page's ${feed} strip never matched the server's feed of ${user}:\n page   ${JSON.stringify(have)}\n server ${JSON.stringify(theirs)}`);
    }
    await sleep(100);
  }
}
