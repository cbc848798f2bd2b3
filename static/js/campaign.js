// Campaign page (/campaigns/{id}): a flash sale's countdown, sale prices, live stock,
// waiting room and buy buttons.
//
// The countdown runs on the server's clock: each GET /api/campaigns/{id} gives
// server_time_ms, and the offset from the request's round-trip midpoint (the sample with
// the shortest round trip wins) corrects this machine's clock. Buying opens at the start
// without a reload: on the server's `campaign` message, or when the corrected clock
// reaches the start, whichever comes first. With a waiting room it opens only once the
// session is admitted (a `queue` message, or a poll while the socket is down), until its
// turn lapses. Every refusal is said in plain words (api.js refusalMessage).
import { getJSON, sendJSON, errorCode, errorMessage, refusalMessage } from './api.js';
import { formatMoney, attributesText, formatCountdown, stockLabel, stockLevel } from './format.js';
import { el, setStatus, setBusy, isBusy } from './dom.js';
import { connectLive, subscribeStock, latestStock, onLive, onReconnect, isLive } from './live.js';

const byId = (id) => document.getElementById(id);
const title = byId('campaign-name');
const clock = byId('campaign-clock');
const stateLine = byId('campaign-state');
const countdown = byId('countdown');
const limitLine = byId('campaign-limit');
const queueView = byId('queue');
const queuePosition = byId('queue-position');
const queueAnnounce = byId('queue-announce');
const queueTime = byId('queue-time');
const joinButton = byId('join-queue');
const skusView = byId('skus-view');
const skusBody = byId('skus');
const buyHint = byId('buy-hint');
const status = byId('status');

const TICK_MS = 250; // fine enough that the start is seen within a quarter second
const POLL_MS = 5000; // ask for the standing when the socket is down, or silent this long during the sale
const ANNOUNCE_MS = 15000; // a moving place is announced at most this often
const MAX_QUANTITY = 10;

const state = {
  id: null,
  campaign: null,
  offset: 0, // server clock minus this clock, ms
  bestRtt: Infinity,
  startedByServer: false, // a `campaign` message said it is live
  items: new Map(), // sku → {sku, name, currency, price_minor, sale_price_minor, available, row}
  inCart: new Map(), // sku → quantity in this session's cart
  queue: null, // {joined, position, admitted, expires_at_ms, waiting} when the campaign has one
  lapsed: false,
  bought: false, // this page added a line during the sale
  shown: '', // the last announced state text, so it is set only when it changes
  lastPoll: 0,
  lastQueueNews: 0, // when a queue message or standing last arrived
  pollMs: POLL_MS * (1 + Math.random() * 0.5),
  announced: { text: '', at: 0, kind: '' }, // the queue's last announcement
};

const serverNow = () => Date.now() + state.offset;

function idFromPath(pathname) {
  const match = pathname.match(/^\/campaigns\/([^/]+)\/?$/);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

const campaignUrl = () => `/api/campaigns/${encodeURIComponent(state.id)}`;
const queueUrl = () => `${campaignUrl()}/queue`;
const itemUrl = (sku) => `/api/cart/items/${encodeURIComponent(sku)}`;
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
const timeOfDay = (ms) => new Date(ms - state.offset)
  .toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/* ---------- the campaign and its clock ---------- */

/** 'scheduled' | 'live' | 'ended' now, by the corrected clock (or the server's word). */
function phase() {
  const c = state.campaign;
  if (!c) return 'scheduled';
  const now = serverNow();
  if (now >= c.ends_at_ms || c.state === 'ended') return 'ended';
  if (now >= c.starts_at_ms || state.startedByServer || c.state === 'live') return 'live';
  return 'scheduled';
}

function soldOut() {
  return state.items.size > 0 && [...state.items.values()].every((item) => item.available <= 0);
}

/** Fetch the campaign; keeps the clock offset of the quickest round trip. */
async function fetchCampaign() {
  const sent = Date.now();
  const result = await getJSON(campaignUrl());
  const received = Date.now();
  if (result.ok && result.data && Number.isFinite(result.data.server_time_ms)) {
    const rtt = received - sent;
    if (rtt <= state.bestRtt) {
      state.bestRtt = rtt;
      state.offset = result.data.server_time_ms - (sent + received) / 2;
    }
  }
  return result;
}

/** Names, attributes and currency of the campaign's SKUs, from its product when it has one. */
async function fetchProduct(slug) {
  if (!slug) return null;
  const result = await getJSON(`/api/products/${encodeURIComponent(slug)}`);
  return result.ok && result.data && Array.isArray(result.data.variants) ? result.data : null;
}

function showNotFound() {
  document.title = 'Sale not found — Surge';
  title.textContent = 'Sale not found';
  setStatus(status, 'We could not find that sale. It may have been removed.', 'error');
  status.append(' ', el('a', { href: '/', text: 'Browse all products' }));
}

/* ---------- rendering ---------- */

function priceCell(item) {
  const cell = el('td', { class: 'num campaign-price' });
  if (item.sale_price_minor != null && item.sale_price_minor !== item.price_minor) {
    cell.append(
      el('del', { class: 'price-regular' },
        el('span', { class: 'visually-hidden', text: 'Regular price ' }),
        formatMoney(item.price_minor, item.currency)),
      ' ',
      el('ins', { class: 'price-sale' },
        el('span', { class: 'visually-hidden', text: 'Sale price ' }),
        formatMoney(item.sale_price_minor, item.currency)),
    );
  } else {
    cell.append(el('span', { class: 'price', text: formatMoney(item.price_minor, item.currency) }));
  }
  return cell;
}

function itemRow(item, index) {
  const qtyId = `qty-${index}`;
  const qty = el('input', {
    id: qtyId, type: 'number', class: 'qty-input', min: '1', max: String(maxQuantity()),
    step: '1', value: '1', inputmode: 'numeric', 'data-role': 'qty',
  });
  const buy = el('button', {
    type: 'button', class: 'buy', 'data-role': 'buy', 'data-sku': item.sku, disabled: true,
    'aria-label': `Buy ${item.name}`, text: 'Buy',
  });
  const stock = el('span', { class: 'stock', 'data-role': 'stock' });
  const row = el('tr', { 'data-sku': item.sku },
    el('th', { scope: 'row', class: 'cart-product' },
      item.name,
      item.attrs ? el('span', { class: 'cart-attrs', text: item.attrs }) : null,
    ),
    priceCell(item),
    el('td', {}, stock),
    el('td', { class: 'cart-qty' },
      el('label', { for: qtyId, class: 'visually-hidden', text: `Quantity of ${item.name}` }),
      qty,
    ),
    el('td', { class: 'cart-actions' }, buy),
  );
  item.row = { row, qty, buy, stock };
  return row;
}

function maxQuantity() {
  const limit = state.campaign && state.campaign.per_customer_limit;
  return Number.isInteger(limit) && limit > 0 ? Math.min(limit, MAX_QUANTITY) : MAX_QUANTITY;
}

/** Build the table once; later changes update its cells in place, so focus stays put. */
function renderItems() {
  const rows = [...state.items.values()].map(itemRow);
  skusBody.replaceChildren(...rows);
  skusView.hidden = rows.length === 0;
}

function queueAllows() {
  if (!state.queue) return true;
  return state.queue.admitted && !state.lapsed;
}

/** Why the buy buttons are off, or '' when they are on (for sold-out rows the badge says it). */
function buyBlocker(current) {
  if (current === 'ended') return 'This sale has ended.';
  if (current === 'scheduled') {
    return state.queue ? 'Buying opens at the start, in waiting-room order.' : 'Buying opens at the start.';
  }
  if (soldOut()) return '';
  if (state.queue) {
    if (state.lapsed) return 'Your turn has passed.';
    if (!state.queue.joined) return 'Join the queue to buy.';
    if (!state.queue.admitted) return 'Buying opens when your turn comes.';
  }
  return '';
}

function updateItems(current) {
  const blocker = buyBlocker(current);
  for (const item of state.items.values()) {
    const { stock, buy, row } = item.row || {};
    if (!row) continue;
    const available = Math.max(0, Number(item.available) || 0);
    const label = available <= 0 ? 'Sold out' : stockLabel(available);
    if (stock.textContent !== label) stock.textContent = label;
    stock.className = `stock stock--${stockLevel(available)}`;
    row.dataset.available = String(available);
    row.classList.toggle('sold-out', available <= 0);
    const on = !blocker && current === 'live' && available > 0;
    if (buy.disabled === on) buy.disabled = !on;
  }
  if (buyHint.textContent !== blocker) buyHint.textContent = blocker;
}

function announce(text, kind) {
  if (state.shown === text) return;
  state.shown = text;
  stateLine.textContent = text;
  clock.dataset.state = kind;
}

function renderClock(current) {
  const c = state.campaign;
  const now = serverNow();
  let time = '';
  if (current === 'scheduled') {
    announce(`Not started yet. The sale starts at ${timeOfDay(c.starts_at_ms)}.`, 'scheduled');
    time = `Starts in ${formatCountdown(c.starts_at_ms - now)}`;
  } else if (current === 'live' && soldOut()) {
    announce('Sold out: every unit in this sale has been sold.', 'sold-out');
  } else if (current === 'live') {
    announce('The sale is live.', 'live');
    time = `Ends in ${formatCountdown(c.ends_at_ms - now)}`;
  } else {
    announce('The sale has ended.', 'ended');
  }
  if (countdown.textContent !== time) countdown.textContent = time;
}

function renderQueue(current) {
  const q = state.queue;
  if (!q) {
    queueView.hidden = true;
    return;
  }
  queueView.hidden = false;
  joinButton.hidden = q.joined || current === 'ended';
  let text = '';
  let time = '';
  const now = serverNow();
  if (!q.joined) {
    text = current === 'ended' ? 'The waiting room is closed.' : 'You have not joined the queue yet.';
  } else if (q.admitted && (state.lapsed || now >= q.expires_at_ms)) {
    state.lapsed = true;
    text = state.bought ? 'Your turn to buy has ended.' : 'Your turn has passed without a purchase.';
  } else if (q.admitted) {
    text = `It is your turn: you can buy until ${timeOfDay(q.expires_at_ms)}.`;
    time = `${formatCountdown(q.expires_at_ms - now)} left to buy`;
  } else if (q.position === 0) {
    text = current === 'scheduled'
      ? 'You are first in the queue. Your turn comes at the start.'
      : 'You are next in the queue.';
  } else {
    text = `You are in the queue: ${plural(q.position, 'person', 'people')} ahead of you.`;
  }
  announceQueue(text, !q.joined ? 'out' : q.admitted ? (state.lapsed ? 'lapsed' : 'turn') : 'waiting');
  queuePosition.dataset.position = q.joined ? String(q.position) : '';
  queuePosition.dataset.admitted = String(Boolean(q.joined && q.admitted && !state.lapsed));
  if (queuePosition.textContent !== text) queuePosition.textContent = text;
  if (queueTime.textContent !== time) queueTime.textContent = time;
}

/** Tell screen readers about the queue: a new kind of news at once, a moving place
 * at most every ANNOUNCE_MS, so a fast queue does not talk over everything else. */
function announceQueue(text, kind) {
  const last = state.announced;
  if (text === last.text) return;
  const now = Date.now();
  if (kind === last.kind && kind === 'waiting' && now - last.at < ANNOUNCE_MS) return;
  state.announced = { text, at: now, kind };
  queueAnnounce.textContent = text;
}

function render() {
  if (!state.campaign) return;
  const current = phase();
  renderClock(current);
  renderQueue(current);
  updateItems(current);
}

/* ---------- the waiting room ---------- */

/** Apply {position, admitted, expires_at_ms, waiting} from the server. */
function applyStanding(body) {
  if (!state.queue || !body || !Number.isInteger(body.position)) return;
  state.lastQueueNews = Date.now();
  Object.assign(state.queue, {
    joined: true,
    position: body.position,
    admitted: Boolean(body.admitted),
    expires_at_ms: Number.isFinite(body.expires_at_ms) ? body.expires_at_ms : state.queue.expires_at_ms,
  });
  render();
}

async function fetchStanding() {
  if (!state.queue) return;
  state.lastPoll = Date.now();
  const result = await getJSON(queueUrl());
  if (result.ok) applyStanding(result.data);
}

async function joinQueue() {
  if (isBusy(joinButton)) return;
  setBusy(joinButton, true);
  setStatus(status, 'Joining the queue…');
  const result = await sendJSON('POST', queueUrl());
  setBusy(joinButton, false);
  if (!result.ok) {
    setStatus(status, refusalMessage(result), 'error');
    return;
  }
  applyStanding(result.data);
  setStatus(status, 'You joined the queue. Keep this page open: it shows your place as it moves.', 'success');
  queuePosition.focus();
}

function onQueueMessage(message) {
  if (!state.queue || message.campaign_id !== state.id) return;
  const wasAdmitted = state.queue.admitted;
  state.lastQueueNews = Date.now();
  state.queue.joined = true;
  state.queue.position = message.position;
  state.queue.admitted = message.admitted;
  render();
  if (message.admitted && !wasAdmitted) {
    setStatus(status, ''); // the queue's own region announces the turn
    fetchStanding(); // the message has no expiry: ask for it once, when the turn comes
  }
}

/* ---------- buying ---------- */

async function buy(sku, button) {
  const item = state.items.get(sku);
  if (!item || isBusy(button)) return;
  const qty = Number(item.row.qty.value);
  if (!Number.isInteger(qty) || qty < 1) {
    setStatus(status, 'Enter a whole number, 1 or more.', 'error');
    item.row.qty.focus();
    return;
  }
  setBusy(button, true);
  setStatus(status, `Adding ${item.name} to your cart…`);
  const quantity = (state.inCart.get(sku) || 0) + qty;
  const result = await sendJSON('PUT', itemUrl(sku), { quantity });
  setBusy(button, false);
  if (result.ok && result.data && Array.isArray(result.data.lines)) {
    applyCart(result.data);
    state.bought = true;
    const line = result.data.lines.find((l) => l.sku === sku);
    const price = line ? ` at ${formatMoney(line.unit_price_minor, line.currency)} each` : '';
    setStatus(status, `Added ${qty} × ${item.name} to your cart${price}. `, 'success');
    status.append(el('a', { href: '/cart', id: 'go-to-cart', text: 'Go to your cart and check out' }));
    return;
  }
  setStatus(status, refusalMessage(result, 'cart'), 'error');
  onRefusal(result, item);
}

/** What a refusal tells us about the page's own state. */
function onRefusal(result, item) {
  const error = (result.data && result.data.error) || {};
  switch (errorCode(result)) {
    case 'queued':
      if (state.queue && Number.isInteger(error.position)) {
        state.queue.joined = true;
        state.queue.admitted = false;
        state.queue.position = error.position;
      }
      break;
    case 'queue_lapsed':
      state.lapsed = true;
      break;
    case 'insufficient_stock':
      if (error.available === 0) item.available = 0; // the stock message may still be on its way
      break;
    case 'campaign_ended':
    case 'campaign_not_started':
      refresh();
      break;
    default:
      break;
  }
  render();
}

function applyCart(cart) {
  state.inCart.clear();
  for (const line of cart.lines) state.inCart.set(line.sku, Number(line.quantity) || 0);
}

async function fetchCart() {
  const result = await getJSON('/api/cart');
  if (result.ok && result.data && Array.isArray(result.data.lines)) applyCart(result.data);
  return result;
}

/* ---------- live ---------- */

function onStock({ sku, available }) {
  const item = state.items.get(sku);
  if (!item) return;
  item.available = available;
  render();
}

function onCampaignMessage({ campaign }) {
  if (!campaign || campaign.id !== state.id) return;
  if (campaign.state === 'live') state.startedByServer = true;
  if (state.campaign) state.campaign.state = campaign.state;
  render();
}

/** Refetch what the page shows (after a reconnect, or a refusal that says it is stale). */
async function refresh() {
  const result = await fetchCampaign();
  if (result.ok && result.data) applyCampaign(result.data);
  await fetchStanding();
  await fetchCart();
  render();
}

/** Campaign body → state; the table is built on the first call only. */
function applyCampaign(data, product = null) {
  const first = !state.campaign;
  state.campaign = data;
  if (data.state === 'live') state.startedByServer = true;
  if (data.queue && !state.queue) {
    state.queue = { joined: false, position: 0, admitted: false, expires_at_ms: 0, waiting: 0 };
  }
  const variants = new Map((product ? product.variants : []).map((v) => [v.sku, v]));
  for (const s of Array.isArray(data.skus) ? data.skus : []) {
    const known = state.items.get(s.sku);
    const live = latestStock(s.sku);
    const available = live ? live.available : Number(s.available) || 0;
    if (known) {
      known.available = available;
      continue;
    }
    const variant = variants.get(s.sku);
    state.items.set(s.sku, {
      sku: s.sku,
      name: s.name || (product ? product.name : s.sku),
      attrs: variant ? attributesText(variant.attributes) : '',
      currency: s.currency || (variant ? variant.currency : (product && product.currency) || ''),
      price_minor: s.price_minor,
      sale_price_minor: s.sale_price_minor,
      available,
    });
  }
  if (!first) return;
  document.title = `${data.name} — Surge`;
  title.textContent = data.name;
  clock.hidden = false;
  if (Number.isInteger(data.per_customer_limit)) {
    limitLine.hidden = false;
    limitLine.textContent = `Limit: ${plural(data.per_customer_limit, 'unit', 'units')} per customer across this sale.`;
  }
  renderItems();
}

function tick() {
  render();
  // The waiting room's moves arrive by asking while the socket is down, or when it has
  // been silent during the sale (the socket may be on a node that did not see the join).
  const q = state.queue;
  if (!q || !q.joined || state.lapsed || phase() === 'ended') return;
  // Silence is counted from the start at the earliest, and each page waits a little
  // differently, so the waiters of a big sale do not all ask in the same instant.
  const now = Date.now();
  const since = Math.max(state.lastQueueNews, state.campaign.starts_at_ms - state.offset);
  const silent = phase() === 'live' && !q.admitted && now - since >= state.pollMs;
  if ((!isLive() || silent) && now - state.lastPoll >= state.pollMs) fetchStanding();
}

async function init() {
  state.id = idFromPath(location.pathname);
  if (!state.id) return showNotFound();
  const result = await fetchCampaign();
  if (result.status === 404) return showNotFound();
  if (!result.ok || !result.data || !Array.isArray(result.data.skus)) {
    title.textContent = 'Sale unavailable';
    setStatus(status, errorMessage(result), 'error');
    return;
  }
  const product = await fetchProduct(result.data.product_slug);
  applyCampaign(result.data, product);

  skusBody.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-role="buy"]');
    if (button && !button.disabled) buy(button.dataset.sku, button);
  });
  joinButton.addEventListener('click', joinQueue);
  onLive('campaign', onCampaignMessage);
  onLive('queue', onQueueMessage);
  onLive('cart', ({ cart }) => { if (cart && Array.isArray(cart.lines)) applyCart(cart); });
  onReconnect(refresh);
  subscribeStock([...state.items.keys()], onStock);

  // The cart request gives a new visitor a session cookie before the socket opens, so
  // the socket is the same session that joins the queue and buys.
  await fetchCart();
  if (state.queue) await fetchStanding(); // a returning visitor keeps their place
  connectLive();
  render();
  setInterval(tick, TICK_MS);
}

init();
