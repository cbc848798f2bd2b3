// Live updates over one WebSocket per page (GET /ws, see docs/PROTOCOL.md): stock of
// the SKUs on screen, the session's cart, reservation expiries, orders and campaigns.
//
// One connection per page (a module singleton). It reconnects with exponential backoff,
// shows an honest "paused" notice while it is down, resubscribes on every (re)connect
// and then asks the page to refetch what it shows, because messages sent while it was
// away are not replayed. Malformed messages are ignored; nothing here throws.
//
// The socket's limits (frame size, message rate, subscriptions, what a SKU looks like)
// come from the server's `welcome` message, the first on every socket: nothing is sent
// before it arrives, and nothing here copies the server's numbers.
//
//   connectLive()                          open the socket (idempotent)
//   subscribeStock(skus, cb) → unsubscribe  cb({sku, available, seq}) for every newer value
//   unsubscribeStock(skus[, cb])            drop one callback, or the SKUs altogether
//   latestStock(sku)                        {available, seq} received on the current
//                                           connection, or null (offline / not yet known)
//   onLive(type, cb) → off                  type: 'cart' | 'reservation_expired' | 'order' |
//                                           'campaign' | 'queue' | 'campaign_report' | 'error'
//                                           (cb gets the message) or 'online' | 'offline'
//                                           (cb gets {type})
//   monitorCampaign(id, token) → stop       ask for 'campaign_report' of a campaign on every
//                                           (re)connect; the token goes in the frame only
//   onReconnect(cb) → off                   cb() after every reconnect: refetch the page
//   isLive()                                whether the socket is open

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const JITTER = 0.2; // ±20 %
const NOTICE_DELAY_MS = 1000; // a blip shorter than this shows nothing
const NOTICE_TEXT = 'Live updates paused — reconnecting…';
const FLUSH_DELAY_MS = 50; // gather subscription changes into one message
const RATE_SHARE = 0.5; // send at most half the server's rate and burst
const MESSAGE_TYPES = ['cart', 'reservation_expired', 'order', 'campaign', 'queue', 'campaign_report', 'error', 'online', 'offline'];

const live = {
  started: false,
  suspended: false, // page in the back/forward cache
  socket: null,
  open: false,
  opens: 0, // successful opens so far
  failed: false, // some attempt failed or a socket dropped since the page loaded
  delay: BACKOFF_MIN_MS,
  retryTimer: 0,
  probing: false,
  noticeTimer: 0,
  flushTimer: 0,
  limits: null, // from the current socket's welcome: {maxSubscriptions, maxFrame, rate, burst, sku}
  warnedLimit: false,
  warnedSkus: false,
  tokens: 0,
  tokensAt: 0,
  wanted: new Map(), // sku → Set of callbacks, in subscription order
  sent: new Set(), // SKUs subscribed on the current socket
  latest: new Map(), // sku → {available, seq, fresh}; fresh = received on this socket
  listeners: new Map(MESSAGE_TYPES.map((type) => [type, new Set()])),
  reconnectCallbacks: new Set(),
  monitor: null, // {campaign_id, token}: resent after every welcome
};

/* ---------- helpers ---------- */

function socketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/** Report a callback's error without breaking the dispatch to the others. */
function safeCall(callback, value) {
  try {
    callback(value);
  } catch (error) {
    console.error('live: a callback failed', error);
  }
}

function emit(type, value) {
  const set = live.listeners.get(type);
  if (!set) return;
  for (const callback of [...set]) safeCall(callback, value);
}

/** A list (or one string) of SKUs → distinct non-empty strings (the server's SKU rule
 * is applied when subscribing, once its welcome has said what it is). */
function normaliseSkus(skus) {
  let list = [];
  if (typeof skus === 'string') list = [skus];
  else if (skus && typeof skus[Symbol.iterator] === 'function') list = [...skus];
  return [...new Set(list.filter((s) => typeof s === 'string' && s.length > 0))];
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);
const isCount = (value) => Number.isInteger(value) && value > 0;

/** The limits a welcome message states, or null when it does not state them all. */
function welcomeLimits(message) {
  const { max_subscriptions: maxSubscriptions, max_frame: maxFrame, rate, burst } = message;
  if (![maxSubscriptions, maxFrame, rate, burst].every(isCount)) return null;
  if (typeof message.sku_pattern !== 'string') return null;
  let sku;
  try {
    sku = new RegExp(message.sku_pattern);
  } catch {
    return null;
  }
  return {
    maxSubscriptions,
    maxFrame,
    rate: Math.max(rate * RATE_SHARE, 1),
    burst: Math.max(Math.floor(burst * RATE_SHARE), 1),
    sku,
  };
}

/* ---------- the offline notice ---------- */

/** The notice region exists from the start (empty = invisible), so screen readers announce it. */
function noticeRegion() {
  let node = document.getElementById('live-status');
  if (!node && document.body) {
    node = document.createElement('div');
    node.id = 'live-status';
    node.className = 'live-status';
    node.setAttribute('role', 'status');
    node.setAttribute('aria-live', 'polite');
    document.body.append(node);
  }
  return node;
}

function armNotice() {
  if (live.noticeTimer || live.open) return;
  live.noticeTimer = setTimeout(() => {
    live.noticeTimer = 0;
    const node = noticeRegion();
    if (node && !live.open && node.textContent !== NOTICE_TEXT) node.textContent = NOTICE_TEXT;
  }, NOTICE_DELAY_MS);
}

function clearNotice() {
  clearTimeout(live.noticeTimer);
  live.noticeTimer = 0;
  const node = document.getElementById('live-status');
  if (node) node.textContent = '';
}

/* ---------- sending subscriptions ---------- */

/** Client-side token bucket, so a busy page never trips the server's rate limit. */
function takeToken() {
  const { rate, burst } = live.limits;
  const now = Date.now();
  live.tokens = Math.min(burst, live.tokens + ((now - live.tokensAt) / 1000) * rate);
  live.tokensAt = now;
  if (live.tokens < 1) return false;
  live.tokens -= 1;
  return true;
}

/** Split SKUs so that each message stays under the server's frame limit (the size
 * counted is an upper bound: SKUs are ASCII, and each is counted with a spare byte). */
function chunks(skus) {
  const limit = live.limits.maxFrame;
  const out = [];
  let current = [];
  let size = 40; // {"op":"unsubscribe","skus":[]} and change
  for (const sku of skus) {
    if (current.length && size + sku.length + 3 > limit) {
      out.push(current);
      current = [];
      size = 40;
    }
    current.push(sku);
    size += sku.length + 3;
  }
  if (current.length) out.push(current);
  return out;
}

function send(message) {
  try {
    live.socket.send(JSON.stringify(message));
    return true;
  } catch {
    return false;
  }
}

function scheduleFlush(delay = FLUSH_DELAY_MS) {
  if (!live.flushTimer) live.flushTimer = setTimeout(flush, delay);
}

/** Bring the server's subscriptions in line with what the page wants (at most the limit). */
function flush() {
  live.flushTimer = 0;
  const socket = live.socket;
  const limits = live.limits;
  if (!socket || !live.open || !limits || socket.readyState !== WebSocket.OPEN) return;

  const valid = [...live.wanted.keys()].filter((sku) => limits.sku.test(sku));
  const desired = new Set(valid.slice(0, limits.maxSubscriptions));
  if (valid.length < live.wanted.size && !live.warnedSkus) {
    live.warnedSkus = true;
    console.warn(`live: ${live.wanted.size - valid.length} wanted SKUs are not SKUs to the server; not subscribing to them`);
  }
  if (valid.length > desired.size && !live.warnedLimit) {
    live.warnedLimit = true;
    console.warn(`live: ${valid.length} SKUs wanted, the server allows ${limits.maxSubscriptions}`);
  }
  const drop = [...live.sent].filter((sku) => !desired.has(sku));
  const add = [...desired].filter((sku) => !live.sent.has(sku));

  // Unsubscribe first, so the server never counts more than the limit.
  for (const part of chunks(drop)) {
    if (!takeToken()) return scheduleFlush(1000 / limits.rate);
    if (!send({ op: 'unsubscribe', skus: part })) return;
    for (const sku of part) {
      live.sent.delete(sku);
      const known = live.latest.get(sku);
      if (known) known.fresh = false;
    }
  }
  for (const part of chunks(add)) {
    if (!takeToken()) return scheduleFlush(1000 / limits.rate);
    if (!send({ op: 'subscribe', skus: part })) return;
    for (const sku of part) live.sent.add(sku);
  }
}

/* ---------- incoming messages ---------- */

function onStock(message) {
  const { sku, available, seq } = message;
  if (typeof sku !== 'string') return;
  if (typeof available !== 'number' || !Number.isFinite(available)) return;
  if (typeof seq !== 'number' || !Number.isFinite(seq)) return;
  const callbacks = live.wanted.get(sku);
  if (!callbacks) return; // a late answer for a SKU no longer on screen
  const known = live.latest.get(sku);
  if (known && seq < known.seq) return; // an older value arriving late
  const value = { sku, available: Math.max(0, Math.trunc(available)), seq };
  live.latest.set(sku, { available: value.available, seq, fresh: true });
  for (const callback of [...callbacks]) safeCall(callback, { ...value });
}

function onMessage(data) {
  if (typeof data !== 'string') return;
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return;
  }
  if (!isObject(message) || typeof message.type !== 'string') return;
  switch (message.type) {
    case 'welcome': {
      const limits = welcomeLimits(message);
      if (!limits) {
        console.warn('live: the server did not state its limits; not subscribing on this socket');
        break;
      }
      live.limits = limits;
      live.tokens = limits.burst;
      live.tokensAt = Date.now();
      // Resubscribe to everything on screen; the server answers with current values.
      clearTimeout(live.flushTimer);
      live.flushTimer = 0;
      flush();
      if (live.monitor) send({ op: 'monitor', ...live.monitor });
      break;
    }
    case 'stock':
      onStock(message);
      break;
    case 'cart':
      if (isObject(message.cart) && Array.isArray(message.cart.lines)) emit('cart', message);
      break;
    case 'reservation_expired':
      if (typeof message.sku === 'string') emit('reservation_expired', message);
      break;
    case 'order':
      if (isObject(message.order) && message.order.id != null) emit('order', message);
      break;
    case 'campaign':
      if (isObject(message.campaign)) emit('campaign', message);
      break;
    case 'queue':
      if (typeof message.campaign_id === 'string' && Number.isInteger(message.position)
        && typeof message.admitted === 'boolean') emit('queue', message);
      break;
    case 'campaign_report':
      if (isObject(message.report)) emit('campaign_report', message);
      break;
    case 'error':
      console.warn('live: the server did not understand a message', message.code, message.message);
      emit('error', message);
      break;
    default:
      break; // newer servers may send more types
  }
}

/* ---------- connection ---------- */

function onOpen() {
  const reconnected = live.opens > 0 || live.failed;
  live.open = true;
  live.opens += 1;
  live.delay = BACKOFF_MIN_MS;
  live.limits = null; // this socket's arrive with its welcome, which starts the subscribing
  live.sent.clear();
  clearNotice();
  clearTimeout(live.flushTimer);
  live.flushTimer = 0;
  emit('online', { type: 'online' });
  if (reconnected) for (const callback of [...live.reconnectCallbacks]) safeCall(callback);
}

function onDown() {
  const wasOpen = live.open;
  live.socket = null;
  live.open = false;
  live.limits = null;
  live.failed = true;
  live.sent.clear();
  for (const known of live.latest.values()) known.fresh = false;
  if (live.suspended) return;
  armNotice();
  if (wasOpen) emit('offline', { type: 'offline' });
  scheduleRetry();
  if (!wasOpen) probeSession();
}

/**
 * A socket that never opened may have been refused for a session cookie the server no
 * longer accepts (its signing key changed). Browsers ignore cookies on a refused
 * handshake, so ask over HTTP, where the server clears such a cookie; then retry at once.
 */
async function probeSession() {
  if (live.probing) return;
  live.probing = true;
  try {
    const response = await fetch('/api/cart', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (response.status !== 400) return;
    const body = await response.json().catch(() => null);
    const code = isObject(body) && isObject(body.error) ? body.error.code : null;
    if (code === 'invalid_session' && !live.socket && !live.suspended) {
      live.delay = BACKOFF_MIN_MS;
      openSocket();
    }
  } catch {
    // the server is unreachable: the backoff goes on
  } finally {
    live.probing = false;
  }
}

function scheduleRetry() {
  if (live.retryTimer || live.suspended) return;
  const wait = Math.min(BACKOFF_MAX_MS, live.delay * (1 + (Math.random() * 2 - 1) * JITTER));
  live.delay = Math.min(live.delay * 2, BACKOFF_MAX_MS);
  live.retryTimer = setTimeout(() => {
    live.retryTimer = 0;
    openSocket();
  }, wait);
}

function openSocket() {
  clearTimeout(live.retryTimer);
  live.retryTimer = 0;
  if (live.socket || live.suspended) return;
  let socket;
  try {
    socket = new WebSocket(socketUrl());
  } catch {
    live.failed = true;
    armNotice();
    scheduleRetry();
    return;
  }
  live.socket = socket;
  socket.addEventListener('open', () => {
    if (socket === live.socket) onOpen();
  });
  socket.addEventListener('message', (event) => {
    if (socket === live.socket) onMessage(event.data);
  });
  const down = () => {
    if (socket !== live.socket) return;
    try {
      socket.close();
    } catch {
      // already closing
    }
    onDown();
  };
  socket.addEventListener('close', down);
  socket.addEventListener('error', down);
}

/** Retry at once when the browser says the network is back. */
function onBrowserOnline() {
  if (live.socket || live.suspended) return;
  live.delay = BACKOFF_MIN_MS;
  openSocket();
}

/** Close the socket while the page sits in the back/forward cache; reopen on return. */
function onPageHide(event) {
  if (!event.persisted) return;
  live.suspended = true;
  clearTimeout(live.retryTimer);
  live.retryTimer = 0;
  clearNotice();
  const socket = live.socket;
  if (socket) {
    onDown();
    try {
      socket.close(1000);
    } catch {
      // already closed
    }
  }
}

function onPageShow(event) {
  if (!event.persisted || !live.suspended) return;
  live.suspended = false;
  live.failed = true; // whatever changed meanwhile must be refetched
  live.delay = BACKOFF_MIN_MS;
  armNotice();
  openSocket();
}

/* ---------- public API ---------- */

/** Open the live connection (once per page); safe to call again. */
export function connectLive() {
  if (live.started) return;
  live.started = true;
  if (typeof WebSocket !== 'function') return; // very old browser: the page still works
  noticeRegion();
  window.addEventListener('online', onBrowserOnline);
  window.addEventListener('pagehide', onPageHide);
  window.addEventListener('pageshow', onPageShow);
  armNotice(); // if the first connection takes more than a second, say so
  openSocket();
}

/** Receive {sku, available, seq} for each SKU whenever a newer value arrives. */
export function subscribeStock(skus, callback) {
  const list = normaliseSkus(skus);
  const fn = typeof callback === 'function' ? callback : null;
  for (const sku of list) {
    let callbacks = live.wanted.get(sku);
    if (!callbacks) {
      callbacks = new Set();
      live.wanted.set(sku, callbacks);
    }
    if (fn) callbacks.add(fn);
    // Already subscribed on this socket: the server will not answer again, so hand
    // the new callback the value we have.
    const known = live.latest.get(sku);
    if (fn && known && known.fresh && live.sent.has(sku)) {
      queueMicrotask(() => {
        const now = live.latest.get(sku);
        if (now && now.fresh && live.wanted.get(sku)?.has(fn)) {
          safeCall(fn, { sku, available: now.available, seq: now.seq });
        }
      });
    }
  }
  scheduleFlush();
  return () => unsubscribeStock(list, fn);
}

/** Stop one callback (when given) or every callback for these SKUs. */
export function unsubscribeStock(skus, callback) {
  for (const sku of normaliseSkus(skus)) {
    const callbacks = live.wanted.get(sku);
    if (!callbacks) continue;
    if (typeof callback === 'function') callbacks.delete(callback);
    if (typeof callback !== 'function' || callbacks.size === 0) live.wanted.delete(sku);
  }
  scheduleFlush();
}

/** The value of a SKU received on the current connection, or null. */
export function latestStock(sku) {
  const known = live.latest.get(sku);
  if (!known || !known.fresh || !live.open) return null;
  return { sku, available: known.available, seq: known.seq };
}

/** Listen for 'cart', 'reservation_expired', 'order', 'campaign', 'queue', 'online' or 'offline'. */
export function onLive(type, callback) {
  const set = live.listeners.get(type);
  if (!set || typeof callback !== 'function') return () => {};
  set.add(callback);
  return () => set.delete(callback);
}

/** Run after every reconnect: messages sent while away are lost, so refetch. */
export function onReconnect(callback) {
  if (typeof callback !== 'function') return () => {};
  live.reconnectCallbacks.add(callback);
  return () => live.reconnectCallbacks.delete(callback);
}

/** Whether the live connection is open right now. */
export function isLive() {
  return live.open;
}

/** Receive 'campaign_report' messages of one campaign (the merchant's monitor), asked
 * for again after every reconnect; the admin token travels in the frame, never a URL. */
export function monitorCampaign(campaignId, token) {
  live.monitor = { campaign_id: String(campaignId), token: String(token) };
  if (live.open && live.limits) send({ op: 'monitor', ...live.monitor });
  return () => {
    const was = live.monitor;
    live.monitor = null;
    if (was && live.open && live.limits) send({ op: 'unmonitor', campaign_id: was.campaign_id });
  };
}
