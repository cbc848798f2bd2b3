// Cart page (/cart): lines table with quantity edits and removal, per-line
// reservation countdowns, and the checkout form with an idempotent retry key.
// Live (live.js): the cart re-renders on every change from any tab, expired reservations
// are announced, and a placed order's status follows the server.
import { getJSON, sendJSON, errorMessage, refusalMessage, newIdempotencyKey } from './api.js';
import { formatMoney, attributesText, formatCountdown } from './format.js';
import { el, setStatus, setBusy, isBusy } from './dom.js';
import { connectLive, onLive, onReconnect } from './live.js';

const byId = (id) => document.getElementById(id);
const heading = byId('cart-heading');
const status = byId('status');
const emptyView = byId('cart-empty');
const cartView = byId('cart-view');
const linesBody = byId('cart-lines');
const totalCell = byId('cart-total');
const checkoutTotal = byId('checkout-total');
const checkoutForm = byId('checkout-form');
const emailInput = byId('email');
const placeOrder = byId('place-order');
const confirmation = byId('confirmation');

const state = {
  cart: null,
  checkoutKey: null, // reused when a checkout attempt is retried after a network/5xx failure
  expiredSeen: new Set(), // "sku:expires_at_ms" already refetched once
  refetching: false,
  liveExpiryAt: 0, // when the server last told us a reservation expired
  orderId: null, // the order placed on this page, whose status follows live messages
};

const itemUrl = (sku) => `/api/cart/items/${encodeURIComponent(sku)}`;
const isCart = (data) => Boolean(data && Array.isArray(data.lines));
const findLine = (sku) => (state.cart ? state.cart.lines.find((l) => l.sku === sku) : null);

/* ---------- rendering ---------- */

function productCell(line) {
  const attrs = attributesText(line.attributes);
  return el('th', { scope: 'row', class: 'cart-product' },
    el('a', { href: `/products/${encodeURIComponent(line.product_slug)}`, text: line.product_name }),
    attrs ? el('span', { class: 'cart-attrs', text: attrs }) : null,
  );
}

function quantityCell(line, index) {
  const id = `qty-${index}`;
  const attrs = attributesText(line.attributes);
  return el('td', { class: 'cart-qty' },
    el('label', { for: id, class: 'visually-hidden', text: `Quantity of ${line.product_name}${attrs ? ` (${attrs})` : ''}` }),
    el('input', {
      id, type: 'number', class: 'qty-input', min: '1', step: '1', inputmode: 'numeric',
      value: String(line.quantity), 'data-role': 'qty', 'data-sku': line.sku,
    }),
  );
}

function lineRow(line, index) {
  return el('tr', { 'data-sku': line.sku },
    productCell(line),
    el('td', { class: 'num', text: formatMoney(line.unit_price_minor, line.currency) }),
    quantityCell(line, index),
    el('td', { class: 'num line-total', text: formatMoney(line.line_total_minor, line.currency) }),
    el('td', { class: 'countdown', 'data-expires-at': String(line.expires_at_ms) }),
    el('td', { class: 'cart-actions' },
      el('button', {
        type: 'button', class: 'button-secondary remove', 'data-role': 'remove', 'data-sku': line.sku,
        'aria-label': `Remove ${line.product_name}`, text: 'Remove',
      }),
    ),
  );
}

/** Where focus was inside the table (and a quantity being typed), so a re-render can put it back. */
function rememberFocus() {
  const active = document.activeElement;
  if (!active || !linesBody.contains(active)) return null;
  const spot = { sku: active.dataset.sku, role: active.dataset.role, value: null };
  if (spot.role === 'qty') {
    const line = findLine(spot.sku);
    if (line && active.value !== String(line.quantity)) spot.value = active.value;
  }
  return spot;
}

function restoreFocus(spot) {
  if (!spot) return;
  const target = [...linesBody.querySelectorAll(`[data-role="${spot.role}"]`)]
    .find((node) => node.dataset.sku === spot.sku);
  if (target && spot.value !== null) target.value = spot.value; // an edit not yet committed
  (target || heading).focus();
}

function renderCart(cart) {
  const hasLines = cart.lines.length > 0;
  const spot = rememberFocus();
  emptyView.hidden = hasLines;
  cartView.hidden = !hasLines;
  linesBody.replaceChildren(...cart.lines.map(lineRow));
  totalCell.textContent = formatMoney(cart.total_minor, cart.currency);
  checkoutTotal.textContent = totalCell.textContent;
  restoreFocus(spot);
  tick();
}

/** Apply a cart from the server; mutation responses older than what we show are ignored. */
function applyCart(cart, { force = false } = {}) {
  const current = state.cart && state.cart.version;
  if (!force && typeof current === 'number' && typeof cart.version === 'number' && cart.version < current) return;
  state.cart = cart;
  renderCart(cart);
}

function showUnavailable(result) {
  state.cart = null;
  emptyView.hidden = true;
  cartView.hidden = true;
  setStatus(status, `The cart is not available right now: ${errorMessage(result)}`, 'error');
}

async function loadCart() {
  const result = await getJSON('/api/cart');
  if (!result.ok || !isCart(result.data)) {
    showUnavailable(result);
    return false;
  }
  applyCart(result.data, { force: true });
  return true;
}

/* ---------- reservation countdowns ---------- */

function onExpired(cell) {
  const key = `${cell.closest('tr').dataset.sku}:${cell.dataset.expiresAt}`;
  if (state.expiredSeen.has(key) || state.refetching) return;
  state.expiredSeen.add(key);
  state.refetching = true;
  // The server's own notice (live) names the item; don't replace it with a vaguer one.
  const announced = () => Date.now() - state.liveExpiryAt < 5000;
  if (!announced()) setStatus(status, 'A reservation expired. Refreshing your cart…');
  loadCart().then((ok) => {
    state.refetching = false;
    if (ok && !announced()) setStatus(status, 'A reservation expired, so your cart was refreshed.');
  });
}

/** Runs every second: "Reserved for m:ss", or "Reservation expired" + one refetch. */
function tick() {
  const now = Date.now();
  for (const cell of linesBody.querySelectorAll('.countdown')) {
    const left = Number(cell.dataset.expiresAt) - now;
    if (!Number.isFinite(left)) {
      cell.textContent = '';
    } else if (left > 0) {
      cell.textContent = `Reserved for ${formatCountdown(left)}`;
      cell.classList.toggle('countdown--soon', left <= 60_000);
    } else {
      cell.textContent = 'Reservation expired';
      cell.classList.add('countdown--expired');
      onExpired(cell);
    }
  }
}

/* ---------- line edits ---------- */

async function removeLine(sku) {
  const line = findLine(sku);
  const name = line ? line.product_name : 'item';
  setStatus(status, `Removing ${name}…`);
  const result = await sendJSON('DELETE', itemUrl(sku));
  if (!result.ok || !isCart(result.data)) {
    setStatus(status, errorMessage(result), 'error');
    return;
  }
  state.checkoutKey = null;
  applyCart(result.data);
  setStatus(status, `Removed ${name} from your cart.`, 'success');
}

async function changeQuantity(input) {
  const sku = input.dataset.sku;
  const line = findLine(sku);
  if (!line) return;
  const quantity = Number(input.value);
  if (input.value === '' || !Number.isInteger(quantity) || quantity < 0) {
    input.value = String(line.quantity);
    setStatus(status, 'Enter a whole number, 1 or more.', 'error');
    return;
  }
  if (quantity === line.quantity) return;
  if (quantity === 0) return removeLine(sku);
  setStatus(status, `Updating ${line.product_name}…`);
  const result = await sendJSON('PUT', itemUrl(sku), { quantity });
  if (!result.ok || !isCart(result.data)) {
    input.value = String(line.quantity);
    setStatus(status, refusalMessage(result, 'cart'), 'error');
    return;
  }
  state.checkoutKey = null;
  applyCart(result.data);
  setStatus(status, `${line.product_name}: quantity is now ${quantity}.`, 'success');
}

function onTableChange(event) {
  if (event.target.matches('input[data-role="qty"]')) changeQuantity(event.target);
}

function onTableClick(event) {
  const button = event.target.closest('button[data-role="remove"]');
  if (button) removeLine(button.dataset.sku);
}

/* ---------- checkout ---------- */

function showConfirmation(order) {
  state.orderId = String(order.id);
  byId('order-id').textContent = order.id;
  byId('order-status').textContent = order.status;
  byId('order-total').textContent = formatMoney(order.total_minor, order.currency);
  byId('order-email').textContent = order.email || '';
  const lines = Array.isArray(order.lines) ? order.lines : [];
  byId('order-lines').replaceChildren(...lines.map((line) => {
    const attrs = attributesText(line.attributes);
    const name = `${line.product_name || line.sku}${attrs ? ` (${attrs})` : ''}`;
    return el('li', { text: `${line.quantity} × ${name}` });
  }));
  confirmation.hidden = false;
  confirmation.focus();
}

async function checkout(event) {
  event.preventDefault();
  if (isBusy(placeOrder)) return;
  state.checkoutKey = state.checkoutKey || newIdempotencyKey();
  setBusy(placeOrder, true);
  setStatus(status, 'Placing your order…');
  const result = await sendJSON('POST', '/api/checkout', { email: emailInput.value.trim() }, {
    'Idempotency-Key': state.checkoutKey,
  });
  setBusy(placeOrder, false);

  if (result.ok && result.data && result.data.id != null) {
    state.checkoutKey = null;
    setStatus(status, 'Order placed.', 'success');
    showConfirmation(result.data);
    await loadCart();
    return;
  }
  if (result.status === 0 || result.status >= 500) {
    // Keep the key: retrying with it cannot create a second order.
    setStatus(status, `${errorMessage(result)} Pressing "Place order" again is safe.`, 'error');
    return;
  }
  state.checkoutKey = null;
  // limit_exceeded says how many the customer may still order; the cart is kept.
  const message = refusalMessage(result, 'checkout');
  if (result.status === 409) await loadCart(); // e.g. a reservation expired: show the current cart
  setStatus(status, message, 'error');
}

/* ---------- live updates ---------- */

function lineName(line, sku) {
  if (!line) return sku;
  const attrs = attributesText(line.attributes);
  return `${line.product_name || sku}${attrs ? ` (${attrs})` : ''}`;
}

/** The cart changed (here, in another tab, or by expiry): show the server's version. */
function onLiveCart({ cart }) {
  if (!isCart(cart)) return;
  applyCart(cart);
}

function onLiveExpired({ sku }) {
  const line = findLine(sku);
  if (line) state.expiredSeen.add(`${sku}:${line.expires_at_ms}`); // the countdown needn't refetch too
  state.liveExpiryAt = Date.now();
  setStatus(status, `Your reservation of ${lineName(line, sku)} expired; the items went back to stock.`, 'error');
  loadCart();
}

function showOrderUpdate(order) {
  if (typeof order.status === 'string') byId('order-status').textContent = order.status;
  if (order.total_minor != null) byId('order-total').textContent = formatMoney(order.total_minor, order.currency);
}

function onLiveOrder({ order }) {
  if (state.orderId !== null && String(order.id) === state.orderId) showOrderUpdate(order);
}

/** Back after a disconnection: messages meanwhile are lost, so refetch what we show. */
async function onLiveReconnect() {
  await loadCart();
  if (state.orderId === null) return;
  const result = await getJSON(`/api/orders/${encodeURIComponent(state.orderId)}`);
  if (result.ok && result.data && String(result.data.id) === state.orderId) showOrderUpdate(result.data);
}

/* ---------- start ---------- */

async function init() {
  linesBody.addEventListener('change', onTableChange);
  linesBody.addEventListener('click', onTableClick);
  checkoutForm.addEventListener('submit', checkout);
  emailInput.addEventListener('input', () => { state.checkoutKey = null; });
  onLive('cart', onLiveCart);
  onLive('reservation_expired', onLiveExpired);
  onLive('order', onLiveOrder);
  onReconnect(onLiveReconnect);
  const ok = await loadCart();
  if (ok && !status.dataset.kind) setStatus(status, '');
  setInterval(tick, 1000);
  // Connect once the cart request has given a new visitor a session cookie, so the
  // socket belongs to the same session; then refetch once to cover the moments between.
  const off = onLive('online', () => {
    off();
    loadCart();
  });
  connectLive();
}

init();
