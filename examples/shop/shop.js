/*
 * pushrec demo shop: a product grid that sends events, and a "Recommended for you" strip kept
 * live over WebSocket (falling back to SSE). Plain script, no dependencies, no build step; needs
 * feed.js loaded first. Everything from the server is rendered with DOM APIs and textContent.
 */
(function () {
  'use strict';

  const Feed = window.PushrecFeed;
  const SESSION_KEY = 'pushrec.demo.session';
  const PAGE_SIZE = 48;
  const STRIP_FEED = 'home';
  const STRIP_MAX = 12;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  // Close codes (docs/PROTOCOL.md): 4000-4499 reconnect with backoff, 4500-4999 terminal.
  const TERMINAL_CLOSE = 4500;
  const CLOSE_UNAUTHORIZED = 4501; // terminal for these credentials: get a new token first
  const FLASH_MS = 1200;

  const $ = (id) => document.getElementById(id);
  const el = {
    visitor: $('visitor'),
    status: $('status'),
    version: $('version'),
    recs: $('recs'),
    recsEmpty: $('recs-empty'),
    grid: $('grid'),
    more: $('more'),
    category: $('category'),
    count: $('count'),
    notice: $('notice'),
  };

  let session = null; // {user_id, token}

  // ---------------------------------------------------------------- helpers

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    // crypto.randomUUID needs a secure context (https or localhost); getRandomValues does not.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function formatPrice(price) {
    const p = typeof price === 'number' ? price : NaN;
    return Number.isFinite(p) ? p.toFixed(2) : '';
  }

  function safeImage(src) {
    return typeof src === 'string' && /^(\/(?!\/)|https?:\/\/)/.test(src) ? src : '';
  }

  function flash(target, cls) {
    target.classList.remove(cls);
    void target.offsetWidth; // restart the CSS animation if the class was just there
    target.classList.add(cls);
    setTimeout(() => target.classList.remove(cls), FLASH_MS);
  }

  function notice(text, kind) {
    el.notice.textContent = text;
    el.notice.dataset.kind = kind || 'info';
  }

  function parseFrame(data) {
    try {
      const frame = JSON.parse(data);
      return frame && typeof frame === 'object' ? frame : null;
    } catch (_) {
      return null;
    }
  }

  // ---------------------------------------------------------------- session

  function storedSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
      if (s && typeof s.user_id === 'string' && typeof s.token === 'string') return s;
    } catch (_) {
      /* storage disabled or garbage: ask again */
    }
    return null;
  }

  async function newSession() {
    const r = await fetch('/v1/demo/session', { method: 'POST' });
    if (!r.ok) throw new Error(`demo session: HTTP ${r.status}`);
    const body = await r.json();
    if (typeof body.user_id !== 'string' || typeof body.token !== 'string') {
      throw new Error('demo session: unexpected answer');
    }
    const s = { user_id: body.user_id, token: body.token };
    try {
      sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
    } catch (_) {
      /* a reload will make a new visitor; the page still works */
    }
    return s;
  }

  function setSession(s) {
    session = s;
    el.visitor.textContent = `visitor ${s.user_id}`;
  }

  // ---------------------------------------------------------------- events

  async function postEvent(body) {
    return fetch('/v1/events', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${session.token}` },
      body: JSON.stringify(body),
    });
  }

  async function track(type, itemId, card) {
    if (card) flash(card, 'clicked');
    if (!session) return;
    const body = { event_id: uuid(), type, item_id: itemId };
    try {
      let r = await postEvent(body);
      if (r.status === 401) {
        // The demo token expired or the server restarted with a new key: become a new visitor.
        setSession(await newSession());
        stream.restart('new session');
        r = await postEvent(body);
      }
      let answer = null;
      try {
        answer = await r.json();
      } catch (_) {
        /* not JSON */
      }
      if (r.status === 202 && answer && answer.accepted === 1) {
        notice(`${type} ${itemId}: sent`, 'ok');
      } else {
        const first = answer && Array.isArray(answer.rejected) ? answer.rejected[0] : null;
        const why = first
          ? `${first.reason}: ${first.message}`
          : answer && answer.error
            ? `${answer.error}: ${answer.message}`
            : `HTTP ${r.status}`;
        notice(`${type} ${itemId}: rejected (${why})`, 'error');
      }
    } catch (err) {
      notice(`${type} ${itemId}: not sent (${err.message})`, 'error');
    }
  }

  // ---------------------------------------------------------------- product grid

  const grid = { offset: 0, total: 0, category: '', loading: false, generation: 0 };
  const knownCategories = new Set();

  function productCard(item) {
    const id = String(item.item_id);
    const card = node('article', 'product');
    card.dataset.id = id;
    card.tabIndex = 0;
    card.setAttribute('role', 'button');

    const img = node('img', 'thumb');
    img.alt = '';
    img.loading = 'lazy';
    const src = safeImage(item.image);
    if (src) img.src = src;
    card.append(img, node('h3', 'title', item.title || `Item ${id}`), node('span', 'sku', `#${id}`));

    const meta = node('div', 'meta');
    meta.append(node('span', 'category', item.category || ''), node('span', 'price', formatPrice(item.price)));
    card.append(meta);

    const actions = node('div', 'actions');
    const add = node('button', 'add', 'Add to cart');
    const buy = node('button', 'buy', 'Buy');
    add.type = buy.type = 'button';
    if (item.in_stock === false) {
      card.classList.add('out-of-stock');
      add.disabled = buy.disabled = true;
    }
    add.addEventListener('click', (e) => {
      e.stopPropagation();
      track('add_to_cart', id, card);
    });
    buy.addEventListener('click', (e) => {
      e.stopPropagation();
      track('purchase', id, card);
    });
    actions.append(add, buy);
    card.append(actions);

    card.addEventListener('click', () => track('view', id, card));
    card.addEventListener('keydown', (e) => {
      if (e.target === card && (e.key === 'Enter' || e.key === ' ')) {
        e.preventDefault();
        track('view', id, card);
      }
    });
    return card;
  }

  /** Reflect changed fields pushed for an item (price, stock) on its grid card, if shown. */
  function updateProduct(id, changes) {
    const card = el.grid.querySelector(`.product[data-id="${CSS.escape(id)}"]`);
    if (!card) return;
    if ('price' in changes) card.querySelector('.price').textContent = formatPrice(changes.price);
    if (typeof changes.title === 'string') card.querySelector('.title').textContent = changes.title;
    if ('in_stock' in changes) {
      const out = changes.in_stock === false;
      card.classList.toggle('out-of-stock', out);
      for (const b of card.querySelectorAll('button')) b.disabled = out;
    }
  }

  function addCategories(names) {
    let added = false;
    for (const c of names) {
      if (typeof c === 'string' && c && !knownCategories.has(c)) {
        knownCategories.add(c);
        added = true;
      }
    }
    if (!added) return;
    const selected = el.category.value;
    while (el.category.options.length > 1) el.category.remove(1);
    for (const c of Array.from(knownCategories).sort()) {
      const opt = node('option', null, c);
      opt.value = c;
      el.category.append(opt);
    }
    el.category.value = selected;
  }

  /**
   * Fill the filter from GET /v1/categories ({"categories": [{"category", "count"}]}) when the
   * server has it; otherwise the filter offers the categories of the products loaded so far.
   */
  let categoriesListed = false;
  async function loadCategories() {
    try {
      const r = await fetch('/v1/categories');
      if (!r.ok) return;
      const body = await r.json();
      if (!body || !Array.isArray(body.categories)) return;
      categoriesListed = true;
      addCategories(body.categories.map((c) => (typeof c === 'string' ? c : c && c.category)));
    } catch (_) {
      /* optional endpoint */
    }
  }

  async function loadItems(reset) {
    if (reset) {
      grid.generation += 1;
      grid.offset = 0;
      grid.total = 0;
      el.grid.replaceChildren();
    } else if (grid.loading) {
      return;
    }
    const generation = grid.generation;
    grid.loading = true;
    el.more.disabled = true;
    const q = new URLSearchParams({
      limit: String(PAGE_SIZE),
      offset: String(grid.offset),
      sort: 'trending',
    });
    if (grid.category) q.set('category', grid.category);
    try {
      const r = await fetch(`/v1/items?${q}`);
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const body = await r.json();
      if (generation !== grid.generation) return; // the filter changed meanwhile
      const items = Array.isArray(body.items) ? body.items : [];
      grid.offset += items.length;
      grid.total = Number.isInteger(body.total) ? body.total : grid.offset;
      el.grid.append(...items.map(productCard));
      if (!categoriesListed) addCategories(items.map((it) => it.category));
      el.count.textContent = `${grid.offset} of ${grid.total}`;
      el.more.hidden = grid.offset >= grid.total || items.length === 0;
    } catch (err) {
      if (generation === grid.generation) notice(`could not load products (${err.message})`, 'error');
    } finally {
      if (generation === grid.generation) {
        grid.loading = false;
        el.more.disabled = false;
      }
    }
  }

  // ---------------------------------------------------------------- recommendation strip

  const feeds = new Map(); // feed name -> {version: [epoch, n], items: [payload]}
  const shownPayload = new WeakMap(); // strip card -> payload it shows

  function fillRec(card, item) {
    const img = card.querySelector('img');
    const src = safeImage(item.image);
    if (src) img.src = src;
    else img.removeAttribute('src');
    card.querySelector('.title').textContent = item.title || `Item ${item.id}`;
    card.querySelector('.price').textContent = formatPrice(item.price);
    card.querySelector('.category').textContent = item.category || '';
    card.classList.toggle('out-of-stock', item.in_stock === false);
    shownPayload.set(card, item);
  }

  function recCard(item) {
    const card = node('div', 'rec');
    card.dataset.id = String(item.id);
    card.tabIndex = 0;
    card.setAttribute('role', 'button');
    const img = node('img', 'thumb');
    img.alt = '';
    card.append(img, node('div', 'title'), node('div', 'category'), node('div', 'price'));
    card.addEventListener('click', () => track('view', card.dataset.id, card));
    card.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        track('view', card.dataset.id, card);
      }
    });
    fillRec(card, item);
    return card;
  }

  const SHOWN_FIELDS = ['title', 'price', 'category', 'image', 'in_stock'];
  const differs = (a, b) => !a || SHOWN_FIELDS.some((f) => a[f] !== b[f]);

  /** Update #recs in place: keep cards whose id stays, add/flash new ones, drop the rest. */
  function renderStrip(items) {
    const animate = el.recs.children.length > 0;
    const existing = new Map();
    for (const card of el.recs.children) existing.set(card.dataset.id, card);
    const shown = items.slice(0, STRIP_MAX);
    shown.forEach((item, index) => {
      const id = String(item.id);
      let card = existing.get(id);
      if (!card) {
        card = recCard(item);
        if (animate) flash(card, 'rec-new');
      } else {
        existing.delete(id);
        if (differs(shownPayload.get(card), item)) {
          fillRec(card, item);
          flash(card, 'rec-changed');
        }
      }
      const at = el.recs.children[index];
      if (at !== card) el.recs.insertBefore(card, at || null);
    });
    for (const card of existing.values()) card.remove();
    el.recsEmpty.hidden = shown.length > 0;
  }

  function showVersion(feed, version) {
    el.version.textContent = `${feed} @ ${version[0]}:${version[1]}`;
    el.version.dataset.epoch = String(version[0]);
    el.version.dataset.n = String(version[1]);
  }

  function onSnapshot(frame) {
    if (typeof frame.feed !== 'string' || !Array.isArray(frame.items)) return;
    const items = frame.items.filter((x) => x && typeof x === 'object' && x.id !== undefined);
    feeds.set(frame.feed, { version: frame.version, items });
    stream.healthy();
    if (frame.feed === STRIP_FEED) {
      renderStrip(items);
      showVersion(frame.feed, frame.version);
    }
  }

  function onDiff(frame) {
    const held = feeds.get(frame.feed);
    if (!held || !Feed.sameVersion(held.version, frame.base)) {
      stream.desync(`diff for ${frame.feed} does not apply to the version held`);
      return;
    }
    let items;
    try {
      items = Feed.applyDiff(held.items, frame);
    } catch (err) {
      stream.desync(err.message);
      return;
    }
    if (typeof frame.sum === 'string' && Feed.checksum(items) !== frame.sum) {
      stream.desync(`checksum mismatch after diff to ${frame.version}`);
      return;
    }
    feeds.set(frame.feed, { version: frame.version, items });
    stream.applied();
    if (frame.patch && typeof frame.patch === 'object') {
      for (const id of Object.keys(frame.patch)) updateProduct(id, frame.patch[id] || {});
    }
    if (frame.feed === STRIP_FEED) {
      renderStrip(items);
      showVersion(frame.feed, frame.version);
    }
  }

  function onFrame(frame, transport) {
    if (!frame) return;
    switch (frame.type) {
      case 'hello':
        if (session && frame.user !== session.user_id) {
          notice(`server says user ${frame.user}, expected ${session.user_id}`, 'error');
        }
        break;
      case 'snapshot':
        onSnapshot(frame);
        break;
      case 'diff':
        onDiff(frame);
        break;
      case 'error': // a refused client message; the connection stays open
        notice(`server: ${frame.code || 'error'}: ${frame.message || ''}`, 'error');
        break;
      case 'ping':
        if (transport === 'websocket') stream.send({ type: 'pong' });
        break;
      default:
        break; // newer protocol frames are ignored
    }
  }

  // ---------------------------------------------------------------- connection

  const stream = (() => {
    let ws = null;
    let es = null;
    let timer = null;
    let attempt = 0; // reconnects since the last snapshot
    let desyncs = 0; // desyncs since the last diff that applied
    let renewals = 0; // sessions renewed since the last snapshot
    let generation = 0; // bumped by teardown, so a late async step knows it was superseded
    let stopped = false;

    function setStatus(state, text) {
      el.status.dataset.state = state;
      el.status.textContent = text;
    }

    function teardown() {
      generation += 1;
      clearTimeout(timer);
      timer = null;
      const oldWs = ws;
      const oldEs = es;
      ws = es = null; // handlers check identity, so the old ones go quiet
      if (oldWs) oldWs.close(1000);
      if (oldEs) oldEs.close();
    }

    function schedule(reason) {
      teardown();
      if (stopped) return;
      const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt + desyncs, 10));
      const delay = Math.random() * cap; // full jitter
      attempt += 1;
      setStatus('reconnecting', `reconnecting in ${(delay / 1000).toFixed(1)}s (${reason})`);
      timer = setTimeout(connect, delay);
    }

    function openSse() {
      const source = new EventSource(`/v1/sse?token=${encodeURIComponent(session.token)}`);
      es = source;
      const handle = (e) => {
        if (es === source) onFrame(parseFrame(e.data), 'sse');
      };
      let opened = false;
      source.onopen = () => {
        if (es !== source) return;
        opened = true;
        setStatus('live', 'live via sse');
      };
      for (const name of ['hello', 'snapshot', 'diff', 'ping']) source.addEventListener(name, handle);
      source.onmessage = handle; // unnamed events carry a frame with its own "type"
      source.addEventListener('error', (e) => {
        if (es !== source) return;
        // "error" is both a frame the server names and EventSource's own connection error;
        // only the server's carries data.
        if (typeof e.data === 'string') {
          handle(e);
          return;
        }
        if (opened) {
          schedule('sse connection lost'); // take over from EventSource's own retry for backoff
          return;
        }
        // Neither transport opened. EventSource hides the HTTP status, so ask once more with
        // fetch: a rejected token (expired, or the server changed its key) needs a new session,
        // anything else (server down) is retried with backoff.
        source.close();
        checkToken();
      });
    }

    /** The token was refused: become a new visitor (the demo has no backend to refresh it). */
    async function renewSession() {
      const mine = generation;
      try {
        const s = await newSession();
        if (generation !== mine) return;
        setSession(s);
        notice('session expired: you are a new visitor', 'info');
        feeds.clear();
        attempt = renewals; // quick the first time; backs off if new tokens fail too
        renewals += 1;
        schedule('new session');
      } catch (err) {
        if (generation === mine) schedule(`no new session (${err.message})`);
      }
    }

    async function checkToken() {
      const mine = generation;
      let status = 0;
      const abort = new AbortController();
      try {
        const r = await fetch(`/v1/sse?token=${encodeURIComponent(session.token)}`, {
          signal: abort.signal,
          headers: { Accept: 'text/event-stream' },
        });
        status = r.status;
      } catch (_) {
        /* server unreachable */
      } finally {
        abort.abort();
      }
      if (generation !== mine) return; // something else took over meanwhile
      if (status === 401) renewSession();
      else schedule(status ? `stream refused: HTTP ${status}` : 'server unreachable');
    }

    function connect() {
      teardown();
      if (stopped || !session) return;
      setStatus(attempt ? 'reconnecting' : 'connecting', attempt ? 'reconnecting…' : 'connecting…');
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      let socket;
      try {
        socket = new WebSocket(`${scheme}://${location.host}/v1/ws?token=${encodeURIComponent(session.token)}`);
      } catch (_) {
        openSse();
        return;
      }
      ws = socket;
      let opened = false;
      socket.onopen = () => {
        if (ws !== socket) return;
        opened = true;
        setStatus('live', 'live via websocket');
      };
      socket.onmessage = (e) => {
        if (ws === socket && typeof e.data === 'string') onFrame(parseFrame(e.data), 'websocket');
      };
      socket.onclose = (e) => {
        if (ws !== socket) return;
        ws = null;
        if (!opened) {
          openSse(); // WebSocket blocked or refused before opening: try SSE
        } else if (e.code === CLOSE_UNAUTHORIZED) {
          renewSession();
        } else if (e.code >= TERMINAL_CLOSE) {
          stop(`closed by server: ${e.code}${e.reason ? ` ${e.reason}` : ''}`);
        } else {
          schedule(`closed ${e.code}`);
        }
      };
    }

    function stop(text) {
      stopped = true;
      teardown();
      setStatus('stopped', text);
    }

    return {
      start: connect,
      stop,
      send(frame) {
        if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
      },
      healthy() {
        attempt = 0;
        renewals = 0;
      },
      applied() {
        desyncs = 0;
      },
      desync(reason) {
        // Drop what we hold and reconnect: the server answers a new connection with snapshots.
        feeds.clear();
        desyncs += 1;
        schedule(`resync: ${reason}`);
      },
      restart(reason) {
        stopped = false;
        attempt = 0;
        feeds.clear();
        setStatus('reconnecting', `reconnecting (${reason})`);
        connect();
      },
      wake() {
        if (timer && !stopped) connect();
      },
    };
  })();

  // ---------------------------------------------------------------- start

  el.more.addEventListener('click', () => loadItems(false));
  el.category.addEventListener('change', () => {
    grid.category = el.category.value;
    loadItems(true);
  });
  window.addEventListener('online', () => stream.wake());

  async function main() {
    loadItems(true);
    loadCategories();
    let s = storedSession();
    for (let tries = 0; !s; tries += 1) {
      try {
        s = await newSession();
      } catch (err) {
        // Server not up yet: retry with the same full-jitter backoff as the stream.
        const delay = Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** tries);
        el.status.dataset.state = 'reconnecting';
        el.status.textContent = `no session yet (${err.message}), retrying in ${(delay / 1000).toFixed(1)}s`;
        await new Promise((resolve) => setTimeout(resolve, delay));
        if (!el.grid.children.length) loadItems(true);
      }
    }
    if (!categoriesListed) loadCategories();
    setSession(s);
    stream.start();
  }

  main();
})();
