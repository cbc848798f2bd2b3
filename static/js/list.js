// Product list page (/): search form, grid of product cards, "Load more" paging.
// Each card's stock badge updates live (live.js) while the card is on or near the screen.
import { getJSON, errorMessage } from './api.js';
import { formatPriceRange, stockLabel, stockLevel } from './format.js';
import { el, setStatus, initial, colourSlot } from './dom.js';
import { connectLive, subscribeStock, unsubscribeStock, latestStock, onReconnect } from './live.js';

const PAGE_SIZE = 24;

const form = document.getElementById('search');
const input = document.getElementById('q');
const grid = document.getElementById('products');
const status = document.getElementById('status');
const loadMore = document.getElementById('load-more');

const state = { q: '', cursor: null, request: 0, count: 0 };

function productsUrl(q, cursor, limit = PAGE_SIZE) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (q) params.set('q', q);
  if (cursor) params.set('cursor', cursor);
  return `/api/products?${params}`;
}

function stockBadge(available) {
  return el('span', {
    class: `stock stock--${stockLevel(available)}`,
    'data-available': String(Number(available) || 0),
    text: stockLabel(available),
  });
}

function setBadge(badge, available) {
  const n = Math.max(0, Number(available) || 0);
  badge.className = `stock stock--${stockLevel(n)}`;
  badge.dataset.available = String(n);
  badge.textContent = stockLabel(n);
}

function productCard(product) {
  const href = `/products/${encodeURIComponent(product.slug)}`;
  const card = el('li', { class: 'card', 'data-slug': product.slug },
    el('div', { class: `thumb thumb--${colourSlot(product.slug)}`, 'aria-hidden': 'true', text: initial(product.name) }),
    el('h2', { class: 'card__title' }, el('a', { href, class: 'card__link', text: product.name })),
    el('p', { class: 'price', text: formatPriceRange(product.price_min_minor, product.price_max_minor, product.currency) }),
    stockBadge(product.available),
  );
  track(card, product);
  return card;
}

/* ---------- live stock ---------- */
// A card's badge is the sum of its variants' latest values. Cards subscribe while they
// are on or near the screen (the server allows a limited number of subscriptions per
// socket, and "Load more" can show hundreds of SKUs); the server answers a subscription
// at once with the current value, so a card scrolled into view is brought up to date.

const cards = new Map(); // card element → {badge, variants: Map(sku → available), following}
const cardBySku = new Map(); // sku → card element
const observer = typeof IntersectionObserver === 'function'
  ? new IntersectionObserver(onVisibility, { rootMargin: '300px 0px' })
  : null;

function variantsOf(product) {
  const variants = new Map();
  for (const v of Array.isArray(product.variants) ? product.variants : []) {
    if (!v || typeof v.sku !== 'string') continue;
    const live = latestStock(v.sku);
    variants.set(v.sku, live ? live.available : Math.max(0, Number(v.available) || 0));
  }
  return variants;
}

function showTotal(entry) {
  if (!entry.variants.size) return; // no variant list: keep the product's own figure
  let total = 0;
  for (const n of entry.variants.values()) total += n;
  setBadge(entry.badge, total);
}

function track(card, product) {
  const entry = { badge: card.querySelector('.stock'), variants: variantsOf(product), following: false };
  cards.set(card, entry);
  for (const sku of entry.variants.keys()) cardBySku.set(sku, card);
  showTotal(entry);
  if (observer) observer.observe(card);
  else follow(card, true);
}

function follow(card, on) {
  const entry = cards.get(card);
  if (!entry || entry.following === on) return;
  entry.following = on;
  const skus = [...entry.variants.keys()];
  if (on) subscribeStock(skus, onStock);
  else unsubscribeStock(skus, onStock);
}

function onVisibility(records) {
  for (const record of records) follow(record.target, record.isIntersecting);
}

/** Forget the cards about to be replaced by a new search, and their subscriptions. */
function untrackAll() {
  for (const card of cards.keys()) {
    follow(card, false);
    if (observer) observer.unobserve(card);
  }
  cards.clear();
  cardBySku.clear();
}

function onStock({ sku, available }) {
  const card = cardBySku.get(sku);
  const entry = card && cards.get(card);
  if (!entry || !entry.variants.has(sku) || entry.variants.get(sku) === available) return;
  entry.variants.set(sku, available);
  showTotal(entry);
}

/** After a reconnect: refetch the products shown and update their cards in place. */
async function refreshShown() {
  const request = state.request;
  let cursor = null;
  let seen = 0;
  while (seen < state.count) {
    const result = await getJSON(productsUrl(state.q, cursor, Math.min(100, state.count - seen)));
    if (request !== state.request || !result.ok || !isPage(result.data)) return;
    for (const product of result.data.items) refreshCard(product);
    seen += result.data.items.length;
    cursor = result.data.next_cursor;
    if (!cursor || result.data.items.length === 0) return;
  }
}

function refreshCard(product) {
  const card = [...cards.keys()].find((c) => c.dataset.slug === product.slug);
  const entry = card && cards.get(card);
  if (!entry) return;
  card.querySelector('.price').textContent =
    formatPriceRange(product.price_min_minor, product.price_max_minor, product.currency);
  const fresh = variantsOf(product);
  if (fresh.size === 0) {
    setBadge(entry.badge, product.available);
    return;
  }
  // Same SKUs: take the new figures. Different SKUs: resubscribe to the new set.
  const wasFollowing = entry.following;
  follow(card, false);
  for (const sku of entry.variants.keys()) if (cardBySku.get(sku) === card) cardBySku.delete(sku);
  entry.variants = fresh;
  for (const sku of fresh.keys()) cardBySku.set(sku, card);
  showTotal(entry);
  if (wasFollowing) follow(card, true);
}

function isPage(data) {
  return data && Array.isArray(data.items);
}

function summary(count, hasMore) {
  if (count === 0) return 'No products match';
  const noun = count === 1 ? 'product' : 'products';
  return `Showing ${count} ${noun}${hasMore ? ' — more available' : ''}.`;
}

/** Fetch the first page (append = false) or the next page, ignoring stale responses. */
async function loadPage(append) {
  const request = ++state.request;
  grid.setAttribute('aria-busy', 'true');
  setStatus(status, append ? 'Loading more products…' : 'Loading products…');
  const result = await getJSON(productsUrl(state.q, append ? state.cursor : null));
  if (request !== state.request) return; // a newer search replaced this one
  grid.removeAttribute('aria-busy');

  if (!result.ok || !isPage(result.data)) {
    if (!append) {
      untrackAll();
      grid.replaceChildren();
      state.count = 0;
      loadMore.hidden = true;
    }
    setStatus(status, errorMessage(result), 'error');
    return;
  }

  if (!append) untrackAll();
  const newCards = result.data.items.map(productCard);
  if (append) grid.append(...newCards);
  else grid.replaceChildren(...newCards);
  state.count = (append ? state.count : 0) + newCards.length;
  state.cursor = result.data.next_cursor || null;
  loadMore.hidden = !state.cursor;
  setStatus(status, summary(state.count, Boolean(state.cursor)), state.count ? 'info' : 'empty');
  // Keyboard users continue from the first newly loaded product.
  if (append && newCards.length) newCards[0].querySelector('a').focus();
}

function syncUrl(q) {
  const url = new URL(location.href);
  if (q) url.searchParams.set('q', q);
  else url.searchParams.delete('q');
  history.replaceState(null, '', url);
}

function onSearch(event) {
  event.preventDefault();
  state.q = input.value.trim();
  state.cursor = null;
  syncUrl(state.q);
  loadPage(false);
}

function onLoadMore() {
  if (state.cursor) loadPage(true);
}

function init() {
  state.q = (new URLSearchParams(location.search).get('q') || '').trim();
  input.value = state.q;
  form.addEventListener('submit', onSearch);
  loadMore.addEventListener('click', onLoadMore);
  connectLive();
  // Messages sent while the connection was down are not replayed: refetch.
  onReconnect(refreshShown);
  loadPage(false);
}

init();
