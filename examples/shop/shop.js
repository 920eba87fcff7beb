/*
 * pushrec demo shop: a product grid that sends events, and recommendation strips kept live by
 * the pushrec SDK (client-sdk-js, browser bundle served at /sdk/ in demo mode; `make sdk` builds
 * it): "Recommended for you" (feed `home`), "More like this" (`similar`: neighbours of the item
 * looked at last, shown once the visitor has looked at one) and "Goes with your cart" (`cart`:
 * complements of the cart, shown while it has any). Plain script, no build step: needs
 * /sdk/pushrec.min.js (global `Pushrec`) and /sdk/pushrec-dom.min.js (global `PushrecDom`) loaded
 * first. Everything from the server is rendered with DOM APIs and textContent.
 *
 * Query parameters (for trying things out, and for tests/browser):
 *   ?ttl=5            demo tokens live 5 s (5 … 86400), to watch the SDK renew them
 *   ?transports=sse   transports to try, in order (default websocket,sse)
 *
 * For tests and curious visitors, `window.pushrecDemo` exposes the client and what happened to
 * the connection (states, transports opened, close codes seen, tokens minted).
 */
(function () {
  'use strict';

  const USER_KEY = 'pushrec.demo.user'; // the visitor id, shared by the tabs of this browser
  const PAGE_SIZE = 48;
  const STRIP_FEED = 'home'; // "Recommended for you": the feed #version shows
  const SIMILAR_FEED = 'similar'; // "More like this"
  const CART_FEED = 'cart'; // "Goes with your cart"
  const LOOKED_KEY = 'pushrec.demo.looked'; // the item the visitor looked at last (see lookedAt)
  const LOOK_WAIT_MS = 3000; // how long "More like this" waits for its list to follow a new look
  const FLASH_MS = 1200;

  const $ = (id) => document.getElementById(id);
  const el = {
    visitor: $('visitor'),
    status: $('status'),
    version: $('version'),
    recs: $('recs'),
    recsEmpty: $('recs-empty'),
    similarStrip: $('similar-strip'),
    similarOf: $('similar-of'),
    similarRecs: $('similar-recs'),
    cartStrip: $('cart-strip'),
    cartRecs: $('cart-recs'),
    grid: $('grid'),
    more: $('more'),
    category: $('category'),
    count: $('count'),
    notice: $('notice'),
  };

  // ---------------------------------------------------------------- helpers

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

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
  }

  // ---------------------------------------------------------------- page options

  const query = new URLSearchParams(location.search);
  const ttl = Number(query.get('ttl'));
  const TOKEN_TTL_S = Number.isFinite(ttl) && ttl > 0 ? ttl : undefined; // server default: 1 day
  const TRANSPORTS = (query.get('transports') || '')
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t === 'websocket' || t === 'sse');

  // ---------------------------------------------------------------- what tests can read

  const debug = {
    client: null,
    user: null,
    transport: null, // the transport of the open connection
    states: [], // every SDK state change, in order
    opened: [], // transport of every connection that reached "open"
    reconnects: 0, // times the state became "reconnecting"
    closes: [], // {transport, code} of every connection close the page saw
    tokens: 0, // demo tokens minted by getToken
    errors: [], // SDK `error` events
  };
  window.pushrecDemo = debug;

  // ---------------------------------------------------------------- the visitor's token

  function storedUser() {
    try {
      return localStorage.getItem(USER_KEY) || undefined;
    } catch (_) {
      return undefined; // storage disabled: every page load is a new visitor
    }
  }

  function setVisitor(user) {
    debug.user = user;
    el.visitor.textContent = `visitor ${user}`;
    try {
      localStorage.setItem(USER_KEY, user);
    } catch (_) {
      /* the page still works */
    }
  }

  /**
   * The SDK's getToken. POST /v1/demo/session stands in for the shop backend that, in production,
   * signs a token for its logged-in (or cookie-identified) visitor. The visitor id lives in
   * localStorage, so every tab of this browser is the same visitor.
   */
  async function getToken({ userId }) {
    const body = {};
    const user = userId || storedUser();
    if (user) body.user_id = user;
    if (TOKEN_TTL_S) body.ttl_s = TOKEN_TTL_S;
    const r = await fetch('/v1/demo/session', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`demo session: HTTP ${r.status}`);
    const answer = await r.json();
    if (typeof answer.user_id !== 'string' || typeof answer.token !== 'string') {
      throw new Error('demo session: unexpected answer');
    }
    debug.tokens += 1;
    setVisitor(answer.user_id);
    return answer.token;
  }

  // ---------------------------------------------------------------- closes, observed

  // The SDK says which transport it uses (`client.transport`); for `debug.closes` the page hands
  // it constructors that note how each connection closed (the SDK reconnects without telling).

  class ObservedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener('close', (e) => debug.closes.push({ transport: 'websocket', code: e.code }));
    }
  }

  class ObservedEventSource extends EventSource {
    constructor(url, init) {
      super(url, init);
      this.addEventListener('close', (e) => {
        let code = null;
        try {
          code = JSON.parse(e.data).code;
        } catch (_) {
          /* not ours */
        }
        debug.closes.push({ transport: 'sse', code });
      });
    }
  }

  // ---------------------------------------------------------------- product grid

  function track(type, id, card) {
    if (card) flash(card, 'clicked');
    if (!client) return;
    client.track(type, { item_id: id });
    client.flush(); // a click is worth sending now rather than batched
    notice(`${type} ${id}: tracked`, 'ok');
    lookedAt(id, card && card.querySelector('.title').textContent);
  }

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

  /** The category filter, from GET /v1/categories, or else from the products loaded so far. */
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
    const q = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(grid.offset), sort: 'trending' });
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

  const SHOWN_FIELDS = ['title', 'price', 'category', 'image', 'in_stock'];
  const shownPayload = new WeakMap(); // strip card -> payload it shows
  // Per strip: `filled` once it has shown a list (no "new item" animation for the first one).
  const strips = {
    [STRIP_FEED]: { filled: false },
    [SIMILAR_FEED]: { filled: false },
    [CART_FEED]: { filled: false },
  };

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

  function newRecCard() {
    const card = node('div', 'rec');
    card.tabIndex = 0;
    card.setAttribute('role', 'button');
    const img = node('img', 'thumb');
    img.alt = '';
    card.append(img, node('div', 'title'), node('div', 'category'), node('div', 'price'));
    // A click on a card is tracked by renderStrip (see onRecClick); the keyboard clicks too.
    card.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        card.click();
      }
    });
    return card;
  }

  /**
   * renderStrip tracks a click on a strip card as a `click` of that item, quoting the list's
   * `rec` when an A/B experiment made it (it also sends an `impression` of every such list).
   * This listener is added after renderStrip's, so it runs once the click is queued: it shows the
   * click and sends it now.
   */
  function onRecClick(e) {
    const card = e.target instanceof Element ? e.target.closest('.rec') : null;
    if (!card) return;
    flash(card, 'clicked');
    client.flush();
    notice(`click ${card.dataset.id}: tracked`, 'ok');
    lookedAt(card.dataset.id, card.querySelector('.title').textContent); // a click is a look too
  }

  /**
   * renderItem of PushrecDom.renderStrip: it reuses the card of an id (so the strip changes in
   * place) and calls this only for new items and for items whose payload changed. A payload that
   * is equal where it shows (e.g. after the snapshot of a reconnect) does not flash.
   */
  function recRenderer(strip) {
    return function renderRec(item, card) {
      if (!card) {
        card = newRecCard();
        card.dataset.id = String(item.id);
        fillRec(card, item);
        if (strip.filled) flash(card, 'rec-new');
        return card;
      }
      const before = shownPayload.get(card);
      fillRec(card, item);
      if (!before || SHOWN_FIELDS.some((f) => before[f] !== item[f])) flash(card, 'rec-changed');
      return card;
    };
  }

  function showVersion(feed, version) {
    el.version.textContent = `${feed} @ ${version[0]}:${version[1]}`;
    el.version.dataset.epoch = String(version[0]);
    el.version.dataset.n = String(version[1]);
  }

  // ---------------------------------------------------------------- context strips

  /*
   * The server's `similar` list is about the item the visitor touched last (viewed, carted,
   * bought, or clicked in a strip); before any, it is only what is trending, so "More like this"
   * shows once the page knows of such an item. The page keeps it in localStorage ({user, id,
   * title}), so a reload and the visitor's other tabs know it too, and names it in the heading
   * once the list has followed it (the list's update arrives a moment after the event).
   * "Goes with your cart" shows while its list is not empty (the server's is empty with the cart).
   */
  let looked = readLooked(); // the item the shown `similar` list is about
  let nextLooked = null; // a newer look whose `similar` update has not arrived yet
  let lookTimer = 0;

  function currentUser() {
    return debug.user || storedUser();
  }

  function readLooked() {
    try {
      const v = JSON.parse(localStorage.getItem(LOOKED_KEY) || 'null');
      return v && typeof v.id === 'string' ? v : null;
    } catch (_) {
      return null;
    }
  }

  function expectLook(entry) {
    nextLooked = entry;
    clearTimeout(lookTimer);
    lookTimer = setTimeout(settleLook, LOOK_WAIT_MS); // in case the list did not change at all
  }

  /** The `similar` list changed (or waited long enough): it is about the latest look now. */
  function settleLook() {
    clearTimeout(lookTimer);
    if (nextLooked) looked = nextLooked;
    nextLooked = null;
    showContext();
  }

  function lookedAt(id, title) {
    const entry = { user: currentUser(), id: String(id), title: title || '' };
    try {
      localStorage.setItem(LOOKED_KEY, JSON.stringify(entry));
    } catch (_) {
      /* this tab still knows */
    }
    expectLook(entry);
  }

  function showContext() {
    if (!client) return;
    const about = looked && looked.user === currentUser() ? looked : null;
    el.similarStrip.hidden = !about || client.items(SIMILAR_FEED).length === 0;
    if (about) {
      el.similarStrip.dataset.item = about.id;
      el.similarOf.textContent = `like ${about.title || 'item'} #${about.id}`;
    } else {
      delete el.similarStrip.dataset.item;
      el.similarOf.textContent = '';
    }
    el.cartStrip.hidden = client.items(CART_FEED).length === 0;
  }

  /** A context strip's feed changed (renderStrip has drawn it): show or hide its section. */
  function onContextFeed(feed, items, version) {
    const section = feed === SIMILAR_FEED ? el.similarStrip : el.cartStrip;
    if (feed === SIMILAR_FEED) settleLook();
    else showContext();
    section.dataset.epoch = String(version[0]); // for tests and the curious, as #version
    section.dataset.n = String(version[1]);
    strips[feed].filled = strips[feed].filled || (!section.hidden && items.length > 0);
  }

  // ---------------------------------------------------------------- the client

  let client = null;

  function onFeed({ feed, items, version, diff }) {
    if (diff && diff.patch && typeof diff.patch === 'object') {
      for (const id of Object.keys(diff.patch)) updateProduct(id, diff.patch[id] || {});
    }
    if (feed === SIMILAR_FEED || feed === CART_FEED) onContextFeed(feed, items, version);
    if (feed !== STRIP_FEED) return; // #version shows the home feed's version only
    // renderStrip (subscribed before this listener) has already drawn `items`.
    strips[STRIP_FEED].filled = strips[STRIP_FEED].filled || items.length > 0;
    el.recsEmpty.hidden = items.length > 0;
    showVersion(feed, version);
  }

  function onState(state) {
    debug.states.push(state);
    if (state === 'open') {
      const transport = client.transport; // set by the connection's hello
      debug.transport = transport;
      debug.opened.push(transport);
      el.status.dataset.transport = transport;
      setStatus('live', `live via ${transport}`);
      if (client.user) setVisitor(client.user);
      if (!el.grid.children.length && !grid.loading) {
        loadItems(true); // the server was not up when the page loaded
        if (!categoriesListed) loadCategories();
      }
    } else if (state === 'reconnecting') {
      debug.reconnects += 1;
      setStatus('reconnecting', 'reconnecting…');
    } else if (state === 'paused') {
      setStatus('paused', navigator.onLine === false ? 'offline' : 'paused (hidden)');
    } else if (state === 'closed') {
      setStatus('stopped', 'stopped');
    } else {
      setStatus(state, `${state}…`);
    }
  }

  function onError(err) {
    debug.errors.push(err);
    if (err.terminal) notice(`connection closed for good: ${err.code} ${err.message}`, 'error');
    else if (err.code === 'token') notice(`no token yet (${err.message}), retrying`, 'error');
    else if (err.code !== 'resync') notice(`${err.code}: ${err.message}`, 'error');
  }

  function start() {
    if (!window.Pushrec || !window.PushrecDom) {
      setStatus('stopped', 'SDK missing');
      notice('the SDK bundle is missing: run `make sdk`, then reload', 'error');
      return;
    }
    const user = storedUser();
    if (user) el.visitor.textContent = `visitor ${user}`;
    client = new Pushrec.Client({
      url: location.origin,
      getToken,
      feeds: [STRIP_FEED, SIMILAR_FEED, CART_FEED],
      transports: TRANSPORTS.length ? TRANSPORTS : undefined,
      maxDelay: 10000, // a demo server restarts quickly: do not wait 30 s for it
      WebSocket: ObservedWebSocket,
      EventSource: ObservedEventSource,
    });
    debug.client = client;
    client.on('state', onState);
    client.on('error', onError);
    const shown = [[STRIP_FEED, el.recs], [SIMILAR_FEED, el.similarRecs], [CART_FEED, el.cartRecs]];
    for (const [feed, element] of shown) {
      PushrecDom.renderStrip(element, client, feed, recRenderer(strips[feed]));
      element.addEventListener('click', onRecClick);
    }
    client.on('feed', onFeed);
  }

  // ---------------------------------------------------------------- start

  el.more.addEventListener('click', () => loadItems(false));
  // Another tab of this visitor looked at an item: the `similar` update is on its way here too.
  window.addEventListener('storage', (e) => {
    if (e.key !== LOOKED_KEY) return;
    const entry = readLooked();
    if (entry) expectLook(entry);
  });
  el.category.addEventListener('change', () => {
    grid.category = el.category.value;
    loadItems(true);
  });

  loadCategories();
  loadItems(true);
  start();
})();
